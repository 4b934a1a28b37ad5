"""The XLA flags rvos-jax sets by default, in one place the user can see and override.

`apply()` runs when `rvos_jax` is imported (rvos_jax/__init__.py), before JAX starts its backend:
XLA reads XLA_FLAGS once, when the first computation creates the backend, so a flag added after
that has no effect (import rvos_jax before running anything with jax). It only *adds*:
  - a flag the user already put in XLA_FLAGS keeps the user's value;
  - RVOS_JAX_XLA_FLAGS=none adds none of them (benchmarks/model_speed.py --stock uses it to
    measure what they buy; benchmarks/RESULTS.md has the figures).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DEFAULTS = {
    # CPU only (GPU and TPU compilers do not read it). XLA's CPU backend hands single
    # convolutions to YNNPACK by default; for the backbone's convolutions and above all their
    # gradients XLA's own (Eigen) convolutions were faster in benchmarks/model_speed.py.
    'xla_cpu_experimental_ynn_fusion_type': '-individual_convolution',
}


def apply(environ: MutableMapping[str, str] | None = None) -> str:
  """Adds DEFAULTS to environ['XLA_FLAGS'] (os.environ by default); returns it."""
  environ = os.environ if environ is None else environ
  current = environ.get('XLA_FLAGS', '')
  if environ.get('RVOS_JAX_XLA_FLAGS', '').lower() == 'none':
    return current
  given = {f.split('=', 1)[0].lstrip('-') for f in current.split()}
  extra = [f'--{k}={v}' for k, v in DEFAULTS.items() if k not in given]
  if extra:
    environ['XLA_FLAGS'] = ' '.join([current, *extra]).strip()
  return environ.get('XLA_FLAGS', '')
