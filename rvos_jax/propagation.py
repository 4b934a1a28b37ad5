"""Mask propagation at inference (our paper's §3.4, Table 4): the frame where MLRL-SA is most
confident gives the reference mask, which STCN (rvos_jax/models/stcn.py) carries through the
video forwards and backwards.

  config.inference.propagation = 'stcn'            ('none': the network's masks as they are)
  config.inference.stcn_checkpoint = DIR           (python -m rvos_jax.port_stcn, or training)

For each expression: the reference frame r = argmax_t C_t (the confidence head); its mask is
MLRL-SA's (probability > 0.5). From r, frames r+1, r+2, ... and then r-1, r-2, ... are each
segmented from a memory bank, as STCN's inference does: the reference frame is always in the
bank, and every `mem_every`-th frame from r (STCN counts from frame 0 of the video; here the
propagation starts in mid-video, so we count from r) is added, its value encoded from its own
soft mask. The readout uses the top_k affinities. Defaults are STCN's (mem_every 5, top_k 20).

Memory is bounded: the bank has 1 + max_memory_frames slots of (h/16 x w/16) locations, the
reference in slot 0 and the others replaced oldest first; so a long video never needs more
than (1 + max_memory_frames) * h * w / 256 * (C_k + C_v) floats of memory, plus one frame's
features (frames are encoded one at a time, when reached). STCN's own bank grows without
bound; with max_memory_frames >= n / mem_every the two agree.

Frames are resized so that the shorter side is at most `short_side` (STCN's evaluation runs
at 480p), padded to a multiple of 16 (zeros after normalisation: the mean colour, as STCN), and
the propagated probabilities are resized back to the video's own size and thresholded at 0.5.

Edge cases, said here once: an empty reference mask (the most confident frame holds no
object) is not propagated; nothing would follow from it, so the network's own masks are kept,
and this is logged. A one-frame video has nothing to propagate. The reference frame keeps
MLRL-SA's mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from rvos_jax.models import stcn

THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class Settings:
  mem_every: int = 5
  top_k: int = 20
  max_memory_frames: int = 16
  short_side: int = 480

  def __post_init__(self):
    for name in ('mem_every', 'top_k', 'short_side'):
      if getattr(self, name) < 1:
        raise ValueError(f'config.inference.{name} must be >= 1, got {getattr(self, name)}')
    if self.max_memory_frames < 0:
      raise ValueError(f'config.inference.max_memory_frames must be >= 0, got '
                       f'{self.max_memory_frames}')


def working_size(height: int, width: int, short_side: int) -> tuple[int, int]:
  """(h, w) with the shorter side at most short_side, the aspect kept (never enlarged)."""
  scale = min(1.0, short_side / min(height, width))
  return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(n, H, W[, C]) float -> (n, *size[, C]) bilinear (half-pixel; antialiased when shrinking)."""
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  shape = (x.shape[0], *size, *x.shape[3:])
  return np.asarray(jax.image.resize(jnp.asarray(x), shape, method='bilinear'))


class Propagator:
  """STCN inference over one object, with a fixed-size memory bank (one compile per size)."""

  def __init__(self, model: stcn.STCN, variables, settings: Settings = Settings()):
    self.model, self.variables, self.settings = model, variables, settings
    apply = lambda method: jax.jit(
        lambda v, *a: model.apply(v, *a, method=method))
    self._encode_key = apply(stcn.STCN.encode_key)
    self._encode_value = apply(stcn.STCN.encode_value)
    top_k = settings.top_k

    @jax.jit
    def segment(v, key, query_value, f8, f4, mem_keys, mem_values, valid):
      logits = model.apply(v, key, query_value, f8, f4, mem_keys, mem_values, top_k=top_k,
                           valid=valid, method=stcn.STCN.segment)
      # STCN's soft aggregation over the one object and the background.
      return jax.nn.softmax(stcn.aggregate(jax.nn.sigmoid(logits)), axis=1)[:, 1]

    self._segment = segment

  @property
  def slots(self) -> int:
    return 1 + self.settings.max_memory_frames

  def _frame(self, frames: np.ndarray, t: int):
    return jnp.asarray(frames[t:t + 1])

  def propagate(self, frames: np.ndarray, reference: int, reference_mask: np.ndarray,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """frames (n, H, W, 3) uint8 or float in [0, 1]; reference_mask (H, W) -> probabilities
    (n, H, W) float32 at the frames' size (the reference frame: its mask as given)."""
    n, height, width = frames.shape[:3]
    if reference_mask.shape != (height, width):
      raise ValueError(f'reference mask {reference_mask.shape} does not fit frames '
                       f'{height}x{width}')
    if not 0 <= reference < n:
      raise ValueError(f'reference frame {reference} not in [0, {n})')
    out = np.zeros((n, height, width), np.float32)
    out[reference] = reference_mask
    if n == 1:
      return out
    h, w = working_size(height, width, self.settings.short_side)
    x = np.asarray(frames, np.float32)
    if frames.dtype == np.uint8:
      x = x / 255.0
    x = stcn.pad_to_multiple(np.asarray(stcn.normalize(jnp.asarray(_resize(x, (h, w))))))
    ref_mask = stcn.pad_to_multiple(_resize(reference_mask[None].astype(np.float32), (h, w)),
                                    axes=(1, 2))

    key, _, f16, _, _ = self._encode_key(self.variables, self._frame(x, reference))
    ref_value = self._encode_value(self.variables, self._frame(x, reference), f16,
                                   jnp.asarray(ref_mask[None]))
    hw = key.shape[1] * key.shape[2]
    slots = self.slots
    keys0 = jnp.zeros((1, slots * hw, key.shape[-1]), jnp.float32)
    values0 = jnp.zeros((1, 1, slots * hw, ref_value.shape[-1]), jnp.float32)
    keys0 = keys0.at[:, :hw].set(key.reshape(1, hw, -1))
    values0 = values0.at[:, :, :hw].set(ref_value.reshape(1, 1, hw, -1))
    valid0 = jnp.zeros((1, slots * hw), bool).at[:, :hw].set(True)

    done = 1
    for direction in (range(reference + 1, n), range(reference - 1, -1, -1)):
      keys, values, valid, next_slot = keys0, values0, valid0, 1
      order = list(direction)
      for i, t in enumerate(order):
        frame = self._frame(x, t)
        k, qv, f16, f8, f4 = self._encode_key(self.variables, frame)
        prob = self._segment(self.variables, k, qv, f8, f4, keys, values, valid)  # (1, h, w)
        out_t = stcn.unpad(np.asarray(prob)[0], h, w)
        out[t] = _resize(out_t[None], (height, width))[0]
        is_last = i == len(order) - 1
        if not is_last and (i + 1) % self.settings.mem_every == 0 and slots > 1:
          value = self._encode_value(self.variables, frame, f16, prob[:, None])
          lo = next_slot * hw
          keys = keys.at[:, lo:lo + hw].set(k.reshape(1, hw, -1))
          values = values.at[:, :, lo:lo + hw].set(value.reshape(1, 1, hw, -1))
          valid = valid.at[:, lo:lo + hw].set(True)
          next_slot = next_slot + 1 if next_slot + 1 < slots else 1  # oldest replaced
        done += 1
        if progress is not None:
          progress(done)
    return out


def refine(propagator: Propagator | None, frames: np.ndarray, masks: np.ndarray,
           confidence: np.ndarray, *, where: str = 'video') -> np.ndarray:
  """MLRL-SA masks (n, H, W) bool and confidences (n,) -> the propagated masks (§3.4); the
  masks unchanged without a propagator, for a one-frame video or an empty reference mask."""
  if propagator is None or len(masks) == 1:
    return masks
  reference = int(np.argmax(confidence))
  if not masks[reference].any():
    logging.info('%s: the most confident frame (%d, C=%.3f) has an empty mask: nothing to '
                 'propagate, the network\'s masks are kept', where, reference,
                 float(confidence[reference]))
    return masks
  probs = propagator.propagate(frames, reference, masks[reference])
  out = probs > THRESHOLD
  out[reference] = masks[reference]
  return out


def settings_from_config(config: ml_collections.ConfigDict) -> Settings:
  """Settings from config.inference; fields it lacks keep Settings' defaults (STCN's)."""
  c = config.get('inference', ml_collections.ConfigDict())
  return Settings(**{f.name: int(c[f.name]) for f in dataclasses.fields(Settings)
                     if f.name in c})


def from_config(config: ml_collections.ConfigDict) -> Propagator | None:
  """The Propagator config.inference asks for, or None for propagation='none'."""
  c = config.get('inference', ml_collections.ConfigDict())
  kind = c.get('propagation', 'none')
  if kind == 'none':
    return None
  if kind != 'stcn':
    raise ValueError(f"config.inference.propagation={kind!r}; expected 'none' or 'stcn'")
  if not c.get('stcn_checkpoint'):
    raise ValueError('config.inference.propagation=stcn needs config.inference.stcn_checkpoint '
                     '(the --output_dir of python -m rvos_jax.port_stcn, or of STCN training)')
  from rvos_jax import port_stcn  # noqa: PLC0415

  model, variables = port_stcn.load_stcn(c.stcn_checkpoint)
  return Propagator(model, variables, settings_from_config(config))
