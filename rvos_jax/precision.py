"""Mixed precision: compute in bfloat16 (or float16), keep parameters, optimizer state, BatchNorm
statistics and losses in float32 (`config.model.compute_dtype`).

The policy casts at the boundary instead of threading a dtype through every module: `apply`
casts the floating parameters ('params', not the BatchNorm statistics) and the frames to the
compute dtype, so every Dense, Conv, Embed and attention of the network computes in it (flax
infers each layer's dtype from its inputs and parameters; the model casts its own constants,
the ImageNet mean/std and the position encodings, to the input's dtype, and BatchNorm returns
its input's dtype). LayerNorm and GroupNorm still reduce in float32 inside (flax's default);
softmax runs in the compute dtype. The outputs come back as float32 for the losses, and the
gradient of the float32 parameters flows through the cast, so the AdamW update is float32.
Mutable collections (trained BatchNorm statistics) are cast back to float32.

float32 (the default) is a no-op: the same program as without this module.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def compute_dtype(name: str) -> jnp.dtype:
  if name not in DTYPES:
    raise ValueError(f'model.compute_dtype must be one of {sorted(DTYPES)}, got {name!r}')
  return jnp.dtype(DTYPES[name])


def cast_floating(tree: Any, dtype) -> Any:
  """Floating leaves of tree cast to dtype; integer and boolean leaves as they are."""
  def cast(x):
    return x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x
  return jax.tree.map(cast, tree)


def apply(model, variables, frames, *args, **kwargs):
  """model.apply with the compute dtype of `model.compute_dtype`; outputs in float32.

  Same signature and return value as model.apply(variables, frames, *args, **kwargs)
  (with mutable=...: (outputs, updated collections), the collections in float32).
  """
  dtype = compute_dtype(getattr(model, 'compute_dtype', 'float32'))
  if dtype == jnp.float32:
    return model.apply(variables, frames, *args, **kwargs)
  variables = {**variables, 'params': cast_floating(variables['params'], dtype)}
  out = model.apply(variables, frames.astype(dtype), *args, **kwargs)
  if kwargs.get('mutable'):
    outputs, updates = out
    return cast_floating(outputs, jnp.float32), cast_floating(updates, jnp.float32)
  return cast_floating(out, jnp.float32)
