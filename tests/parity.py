"""Helpers for the JAX-vs-PyTorch parity tests: porting torch modules, randomising, comparing."""

from __future__ import annotations

import jax
import numpy as np
import torch

from rvos_jax import porting

# Tolerances of the brief: outputs max|diff| <= OUT_RTOL * max|ref|; losses LOSS_RTOL relative;
# gradients ||g_jax - g_torch|| <= GRAD_RTOL * ||g_torch|| per parameter leaf.
OUT_RTOL = 1e-4
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-3

# Every check below appends (kind, what, measured, tolerance) here before it asserts, so that a
# passing run still shows its figures: tests/conftest.py moves them to the test's report after
# each test and prints the worst per test and kind at the end of the run ("parity figures").
FIGURES: list[tuple[str, str, float, float]] = []


def check(kind: str, what: str, measured: float, tolerance: float) -> float:
  """Records the figure in FIGURES, then asserts it (NaN fails) with the figure in the message.
  kind: 'out' (max|diff| / max|ref|), 'loss' (|diff| / |ref|) or 'grad' (||diff|| / ||ref||)."""
  FIGURES.append((kind, what, float(measured), float(tolerance)))
  label = {'out': 'max|diff| / max|ref|', 'loss': '|diff| / |ref|',
           'grad': '||diff|| / ||ref||'}[kind]
  assert measured <= tolerance, f'{what}: {label} = {measured:.2e} > {tolerance:.0e}'
  return measured


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Random weights everywhere, including norms' affine and BatchNorm statistics (torch's
  defaults leave norms at weight 1 / bias 0 and BN at mean 0 / var 1, which hides bugs)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in module.state_dict().items():
      if not t.is_floating_point():
        continue
      if name.endswith('running_var'):
        t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
      elif name.endswith('running_mean'):
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
      elif t.ndim == 1 and name.endswith('weight'):  # norm scales
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      elif t.ndim <= 1:  # biases (0-d: a scalar bias)
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
      else:  # conv / linear / embedding: keep the variance torch's init gives, re-drawn
        fan_in = t[0].numel()
        t.copy_(torch.randn(t.shape, generator=g) / np.sqrt(fan_in))
  return module.eval()


def state_dict_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def port(torch_module: torch.nn.Module, flax_module, *args, **kwargs):
  """Flax variables for `flax_module` (called with args) holding `torch_module`'s weights."""
  target = jax.eval_shape(lambda: flax_module.init(jax.random.key(0), *args, **kwargs))
  return porting.torch_to_flax(state_dict_numpy(torch_module), target,
                               ignore=porting.ignore_num_batches_tracked)


def max_rel_diff(actual, reference) -> float:
  """max |actual - reference| / max |reference|, the figure the output tolerance bounds."""
  actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
  assert actual.shape == reference.shape, (actual.shape, reference.shape)
  return float(np.abs(actual - reference).max() / np.abs(reference).max())


def assert_outputs_close(actual, reference, what: str, rtol: float = OUT_RTOL) -> float:
  return check('out', what, max_rel_diff(actual, reference), rtol)


def assert_loss_close(actual: float, reference: float, what: str,
                      rtol: float = LOSS_RTOL) -> float:
  rel = abs(float(actual) - float(reference)) / abs(float(reference))
  return check('loss', f'{what} ({float(actual):.6g} vs {float(reference):.6g})', rel, rtol)


def norm_rel_diff(actual, reference) -> float:
  actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
  assert actual.shape == reference.shape, (actual.shape, reference.shape)
  return float(np.linalg.norm(actual - reference) / max(np.linalg.norm(reference), 1e-30))


def assert_grads_close(actual, reference, what: str, rtol: float = GRAD_RTOL) -> float:
  """One gradient leaf, norm-wise."""
  return check('grad', what, norm_rel_diff(actual, reference), rtol)


def nchw(x) -> torch.Tensor:
  """(..., H, W, C) numpy/jax -> torch (..., C, H, W)."""
  x = np.asarray(x)
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))


def nhwc(x: torch.Tensor) -> np.ndarray:
  return np.moveaxis(x.detach().numpy(), -3, -1)
