"""Inference (§3.4): windows of T frames, masks = sigmoid(E) > 0.5, back at the video's size.

Two uses, both behind `python main.py --mode predict` (`predict_main`):

  one video      `--video PATH --expression TEXT`: a folder of frames (jpg/png, sorted by name) or
                 a video file (mp4, ... through imageio's ffmpeg plugin). Writes
                 <out>/masks/<frame>.png (0/255), <out>/overlay.gif and, when imageio-ffmpeg is
                 installed, <out>/overlay.mp4 (mask tinted red, outlined in yellow, the
                 expression written above the frames).
  a split        no --video: every (video, expression) of config.data.eval_split:
                 <out>/Annotations/<video>/<exp_id>/<frame>.png (binary 0/255) and
                 <out>/submission.zip in its server's layout (write_submission_zip).

The video is cut into consecutive windows of T = config.data.num_frames frames; the last window is
padded with blank frames whose outputs are dropped, and windows are run
`config.data.eval_batch_size` at a time (the batch padded with blank windows), so the network is
compiled once per (batch, T, H, W) -- the same shape as the evaluation pipeline's batches.
Frames are resized to config.data.height x width the way the tf.data pipeline does it (a box
reduction by the JPEG DCT factor 1/2/4/8 it would decode at, then half-pixel bilinear), and the
probabilities are upsampled back with half-pixel bilinear (torch's align_corners=False) before
the threshold. The optional STCN propagation of §3.4 / Table 4 is not part of this module; the
per-frame confidence scores it starts from are returned and saved (confidence.json).

Checkpoint and vocabulary loading stay with the caller (main.py): every function here takes the
variables, the vocabulary and the model (or its `make_predict_fn`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image, ImageDraw, ImageFont

from data_pipelines import layouts, ytvos_layout
from data_pipelines import vocabulary as vocabulary_lib
from data_pipelines import windows as windows_lib
from rvos_jax import evaluation, precision, propagation
from rvos_jax.progress import ProgressLog

# (variables, frames (B,T,H,W,3) float32 in [0,1], tokens (B,N), token_mask (B,N))
#   -> (mask probabilities sigmoid(E) (B,T,H,W), confidence scores sigmoid(C) (B,T)).
PredictFn = Callable[[Any, Any, Any, Any], tuple[Any, Any]]

THRESHOLD = 0.5  # §3.4: sigmoid > 0.5
FRAME_EXTENSIONS = ('.jpg', '.jpeg', '.png')
_DCT_RATIOS = (1, 2, 4, 8)  # the JPEG decode scales of data_pipelines.clip_ops
OVERLAY_FILL = np.array([255, 0, 0], np.float32)  # red, mixed 50% into the frame
OVERLAY_ALPHA = 0.5
OVERLAY_OUTLINE = np.array([255, 230, 0], np.uint8)  # yellow
DEFAULT_FPS = 10.0
GIF_MAX_SIDE = 480  # the GIF is a preview; the mp4 keeps the full size
# Small frames (refer_shapes' 64x96) are enlarged by a whole factor (nearest: every model
# pixel stays a visible block) until the short side reaches this, so that the outline and the
# caption can be read.
OVERLAY_MIN_SIDE = 240
CAPTION_BACKGROUND = np.array([24, 24, 24], np.uint8)
CAPTION_TEXT = (255, 255, 255)
STRIP_FRAMES, STRIP_GAP = 4, 4  # the still: frames side by side, white pixels between


class PredictError(ValueError):
  """Bad input to inference; the message names the file, video or expression at fault."""


def _data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Accepts the full config (reads its .data) or config.data itself."""
  return config.data if 'data' in config else config


# ------------------------------------------------------------------------------------------------
# The network as a function of a batch of windows.
# ------------------------------------------------------------------------------------------------


def make_predict_fn(model) -> PredictFn:
  """jit'ed (variables, frames, tokens, token_mask) -> (sigmoid(E) (B,T,H,W), sigmoid(C) (B,T)).

  Eval mode (train=False: no dropout, BatchNorm statistics used as stored), in the model's
  compute dtype (rvos_jax.precision). Compiles once per input shape.
  """

  def predict(variables, frames, tokens, token_mask):
    outputs = precision.apply(model, variables, frames, tokens, token_mask, train=False)
    return jax.nn.sigmoid(outputs.mask_logits), jax.nn.sigmoid(outputs.confidence)

  return jax.jit(predict)


# ------------------------------------------------------------------------------------------------
# Resizing (numpy; no compilation per video size).
# ------------------------------------------------------------------------------------------------


def bilinear_weights(out_size: int, in_size: int) -> np.ndarray:
  """(out_size, in_size) matrix of 1-D bilinear interpolation with half-pixel centres and clamped
  edges, no antialiasing: torch F.interpolate(align_corners=False) = jax.image.resize(
  'bilinear', antialias=False) = tf.image.resize('bilinear', antialias=False)."""
  src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
  src = np.clip(src, 0.0, in_size - 1)
  lo = np.floor(src).astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  weights = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(weights, (rows, lo), 1.0 - frac)
  np.add.at(weights, (rows, hi), frac)
  return weights.astype(np.float32)


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(n, h, w) or (n, h, w, C) float -> the same at `size`, separable bilinear (see above)."""
  if x.shape[1:3] == tuple(size):
    return x.astype(np.float32, copy=False)
  wy = bilinear_weights(size[0], x.shape[1])
  wx = bilinear_weights(size[1], x.shape[2])
  x = x.astype(np.float32, copy=False)
  if x.ndim == 3:
    return np.einsum('Hh,nhw,Ww->nHW', wy, x, wx, optimize=True)
  return np.einsum('Hh,nhwc,Ww->nHWc', wy, x, wx, optimize=True)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 (n, H0, W0, 3) -> float32 (n, height, width, 3) in [0, 1], as the input pipeline does:
  the largest factor r in (1, 2, 4, 8) with H0/r >= height and W0/r >= width is taken off by
  averaging r x r blocks (what the pipeline's JPEG decode at scale 1/r does), then bilinear."""
  n, h0, w0, _ = frames.shape
  r = max(r for r in _DCT_RATIOS if r == 1 or (h0 // r >= height and w0 // r >= width))
  x = frames.astype(np.float32) / 255.0
  if r > 1:
    hr, wr = -(-h0 // r), -(-w0 // r)  # the decoder's output size rounds up
    x = np.pad(x, ((0, 0), (0, hr * r - h0), (0, wr * r - w0), (0, 0)), mode='edge')
    x = x.reshape(n, hr, r, wr, r, 3).mean(axis=(2, 4))
  return np.clip(resize_bilinear(x, (height, width)), 0.0, 1.0)


# ------------------------------------------------------------------------------------------------
# One video, one expression.
# ------------------------------------------------------------------------------------------------


def encode_expression(expression: str, vocab: vocabulary_lib.Vocabulary, max_words: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """(tokens (N,) int32, token_mask (N,) bool) with the training tokenizer (lower case, every
  punctuation mark a token); unknown words -> <unk>. Raises PredictError for an expression with
  no word or no word the vocabulary knows; truncates (with a warning) past max_words."""
  words = vocabulary_lib.tokenize(expression)
  if not words:
    raise PredictError(f'the expression {expression!r} is empty: it must name the object to '
                       'segment')
  ids = [vocab.id(w) for w in words]
  unknown = sorted({w for w, i in zip(words, ids, strict=True) if i == vocabulary_lib.UNK_ID})
  if len(unknown) == len(set(words)):
    raise PredictError(f'no word of the expression {expression!r} is in the vocabulary '
                       f'({len(vocab)} tokens, built from the training expressions)')
  if unknown:
    logging.warning('expression %r: %d unknown word(s) read as <unk>: %s', expression,
                    len(unknown), unknown)
  if len(ids) > max_words:
    logging.warning('expression %r has %d words; only the first max_words=%d are used: %r',
                    expression, len(ids), max_words, ' '.join(words[:max_words]))
    ids = ids[:max_words]
  tokens = np.zeros((max_words,), np.int32)
  tokens[:len(ids)] = ids
  return tokens, tokens != vocabulary_lib.PAD_ID


def _check_frames(frames: np.ndarray, where: str) -> None:
  if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
    raise PredictError(f'{where}: frames must be a uint8 array (n, H, W, 3), got '
                       f'{getattr(frames, "shape", type(frames))}')
  if frames.dtype != np.uint8:
    raise PredictError(f'{where}: frames must be uint8, got {frames.dtype}')
  if frames.shape[0] == 0:
    raise PredictError(f'{where}: no frames')


def video_probabilities(predict_fn: PredictFn, variables, frames_uint8: np.ndarray,
                        expression: str, vocab: vocabulary_lib.Vocabulary,
                        data_config: ml_collections.ConfigDict, *, where: str = 'video'
                        ) -> tuple[np.ndarray, np.ndarray]:
  """sigmoid(E) at the model's size (n, height, width) float32 and sigmoid(C) (n,) of a video."""
  data_config = _data_config(data_config)
  _check_frames(frames_uint8, where)
  T, H, W = data_config.num_frames, data_config.height, data_config.width
  B = int(data_config.get('eval_batch_size', 1) or 1)
  n = frames_uint8.shape[0]
  tokens, token_mask = encode_expression(expression, vocab, data_config.max_words)
  # The windows of the evaluation pipeline: every frame once, eval_frame_stride apart.
  windows = windows_lib.eval_windows(n, T, int(data_config.get('eval_frame_stride', 1)))
  num_batches = -(-len(windows) // B)
  progress = ProgressLog(f'segment {where}', len(windows), 'windows')
  windows = np.concatenate([windows, np.full((num_batches * B - len(windows), T), -1, np.int32)])
  probs = np.zeros((n, H, W), np.float32)
  conf = np.zeros((n,), np.float32)
  batch_tokens = np.repeat(tokens[None], B, axis=0)
  batch_mask = np.repeat(token_mask[None], B, axis=0)
  for i in range(num_batches):
    idx = windows[i * B:(i + 1) * B].reshape(B * T)
    valid = idx >= 0
    clip = np.zeros((B * T, H, W, 3), np.float32)  # blank padding frames and windows
    clip[valid] = resize_frames(frames_uint8[idx[valid]], H, W)
    p, c = predict_fn(variables, clip.reshape(B, T, H, W, 3), batch_tokens, batch_mask)
    probs[idx[valid]] = np.asarray(p).reshape(B * T, H, W)[valid]
    conf[idx[valid]] = np.asarray(c).reshape(B * T)[valid]
    progress.update(min((i + 1) * B, progress.total))
  if num_batches > 1:
    progress.finish()
  return probs, conf


def probabilities_to_masks(probabilities: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(n, h, w) probabilities -> (n, *size) bool: bilinear upsampling, then > 0.5 (§3.4)."""
  return resize_bilinear(probabilities, size) > THRESHOLD


def segment_video(predict_fn: PredictFn, variables, frames_uint8: np.ndarray, expression: str,
                  vocab: vocabulary_lib.Vocabulary, data_config: ml_collections.ConfigDict, *,
                  where: str = 'video', propagator=None) -> np.ndarray:
  """Masks (n, H0, W0) bool of the object `expression` refers to, at the video's own size.

  frames_uint8: (n, H0, W0, 3) uint8 RGB. data_config: config.data (or the full config).
  propagator: a rvos_jax.propagation.Propagator (config.inference.propagation='stcn'): the
  most confident frame's mask propagated through the video (§3.4).
  """
  probs, conf = video_probabilities(predict_fn, variables, frames_uint8, expression, vocab,
                                    data_config, where=where)
  size = frames_uint8.shape[1:3]
  T = _data_config(data_config).num_frames
  # One window at a time keeps the full-size float copy small for long, large videos.
  masks = np.concatenate([probabilities_to_masks(probs[s:s + T], size)
                          for s in range(0, len(probs), T)])
  return propagation.refine(propagator, frames_uint8, masks, conf, where=where)


# ------------------------------------------------------------------------------------------------
# Reading a video.
# ------------------------------------------------------------------------------------------------


def read_frame(path: str) -> np.ndarray:
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert('RGB'))
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
    raise PredictError(f'cannot read frame {path}: {err}') from err


@contextlib.contextmanager
def _ffmpeg_subprocess():
  """imageio-ffmpeg runs ffmpeg with subprocess, whose fork JAX warns about; the child execs at
  once (in C, no Python runs in it), so that warning does not apply here."""
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message=r'os\.fork\(\) was called', category=RuntimeWarning)
    yield


def _ffmpeg_available() -> bool:
  try:
    import imageio_ffmpeg  # noqa: F401, PLC0415 -- optional dependency
  except ImportError:
    return False
  return True


def read_video(path: str) -> tuple[np.ndarray, list[str]]:
  """(frames (n, H, W, 3) uint8 RGB, frame names) of a folder of frames or a video file.

  A folder: its .jpg/.jpeg/.png files sorted by name; names are the file names without
  extension. A file: decoded with imageio's ffmpeg plugin (imageio-ffmpeg); names are the frame
  numbers 00000, 00001, ...
  """
  if not os.path.exists(path):
    raise PredictError(f'video not found: {path}')
  if os.path.isdir(path):
    files = sorted(f for f in os.listdir(path)
                   if f.lower().endswith(FRAME_EXTENSIONS) and not f.startswith('.'))
    if not files:
      raise PredictError(f'no frames ({"/".join(FRAME_EXTENSIONS)} files) in folder {path}')
    names = [os.path.splitext(f)[0] for f in files]
    if len(set(names)) != len(names):
      dup = sorted({n for n in names if names.count(n) > 1})
      raise PredictError(f'{path}: several frames share the name(s) {dup[:3]} (different '
                         'extensions); masks are written as <name>.png')
    frames = []
    for f in files:
      frame = read_frame(os.path.join(path, f))
      if frames and frame.shape != frames[0].shape:
        raise PredictError(
            f'frame {os.path.join(path, f)} is {frame.shape[1]}x{frame.shape[0]} (WxH) but '
            f'{os.path.join(path, files[0])} is {frames[0].shape[1]}x{frames[0].shape[0]}: all '
            'frames of a video must have the same size')
      frames.append(frame)
    return np.stack(frames), names

  if not _ffmpeg_available():
    raise PredictError(f'{path} is a file: reading video files needs imageio and imageio-ffmpeg '
                       '(pip install imageio imageio-ffmpeg), or pass a folder of frames')
  import imageio.v3 as iio  # noqa: PLC0415 -- optional dependency

  try:
    with _ffmpeg_subprocess():
      frames = iio.imread(path, plugin='FFMPEG')
  except Exception as err:  # noqa: BLE001 -- ffmpeg fails in many ways; name the file.
    raise PredictError(f'cannot read video file {path}: {str(err).strip()[-300:]}') from err
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[0] == 0:
    raise PredictError(f'no frames decoded from video file {path}')
  if frames.shape[-1] == 4:
    frames = frames[..., :3]
  if frames.shape[-1] != 3:
    raise PredictError(f'video file {path}: expected RGB frames, got shape {frames.shape}')
  return frames.astype(np.uint8, copy=False), [f'{i:05d}' for i in range(frames.shape[0])]


def video_fps(path: str, default: float = DEFAULT_FPS) -> float:
  """Frame rate of a video file (for the overlay), `default` for a folder of frames."""
  if os.path.isdir(path) or not _ffmpeg_available():
    return default
  import imageio.v3 as iio  # noqa: PLC0415 -- optional dependency

  try:
    with _ffmpeg_subprocess():
      fps = float(iio.immeta(path, plugin='FFMPEG').get('fps') or 0.0)
  except Exception:  # noqa: BLE001 -- the rate only paces the preview.
    return default
  return fps if 0 < fps < 1000 else default


# ------------------------------------------------------------------------------------------------
# Writing masks and overlays.
# ------------------------------------------------------------------------------------------------


def write_mask(path: str, mask: np.ndarray) -> None:
  """Binary PNG: 0 background, 255 object (mode L; what the submission server reads)."""
  Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode='L').save(path, format='PNG')


def write_masks(masks: np.ndarray, frame_names: Sequence[str], output_dir: str) -> list[str]:
  """<output_dir>/<frame_name>.png per frame; returns the paths."""
  if len(masks) != len(frame_names):
    raise PredictError(f'{len(masks)} masks but {len(frame_names)} frame names for '
                       f'{output_dir}')
  os.makedirs(output_dir, exist_ok=True)
  paths = []
  for mask, name in zip(masks, frame_names, strict=True):
    paths.append(os.path.join(output_dir, f'{name}.png'))
    write_mask(paths[-1], mask)
  return paths


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
  """Inner boundary of a (H, W) mask, `width` pixels thick (not drawn along the image edge)."""
  inner = mask.copy()
  for _ in range(width):
    p = np.pad(inner, 1, mode='edge')
    inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
  return mask & ~inner


def overlay_frames(frames_uint8: np.ndarray, masks: np.ndarray) -> np.ndarray:
  """Frames with the mask tinted red (50%) and outlined in yellow; uint8 (n, H, W, 3)."""
  if frames_uint8.shape[:3] != masks.shape:
    raise PredictError(f'overlay: frames {frames_uint8.shape} and masks {masks.shape} differ')
  width = max(1, round(min(masks.shape[1:]) / 160))
  out = frames_uint8.astype(np.float32)
  m = masks[..., None]
  out = np.where(m, (1 - OVERLAY_ALPHA) * out + OVERLAY_ALPHA * OVERLAY_FILL, out)
  out = np.round(out).astype(np.uint8)
  for t in range(len(out)):
    out[t][_outline(masks[t], width)] = OVERLAY_OUTLINE
  return out


def write_gif(frames_uint8: np.ndarray, path: str, fps: float = DEFAULT_FPS,
              max_side: int = GIF_MAX_SIDE) -> str:
  """Animated GIF (PIL), looping; downscaled to `max_side` pixels. Pillow merges consecutive
  identical frames into one longer frame (the timing stays right)."""
  images = [Image.fromarray(f) for f in frames_uint8]
  h, w = frames_uint8.shape[1:3]
  scale = min(1.0, max_side / max(h, w))
  if scale < 1.0:
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    images = [im.resize(size, Image.Resampling.BILINEAR) for im in images]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  images[0].save(path, format='GIF', save_all=True, append_images=images[1:],
                 duration=max(20, round(1000 / fps)), loop=0)
  return path


def write_mp4(frames_uint8: np.ndarray, path: str, fps: float = DEFAULT_FPS) -> str:
  """H.264 mp4 through imageio-ffmpeg (odd sizes padded by one pixel: yuv420p needs even)."""
  import imageio.v3 as iio  # noqa: PLC0415 -- optional dependency

  h, w = frames_uint8.shape[1:3]
  frames = np.pad(frames_uint8, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode='edge')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with _ffmpeg_subprocess():
    iio.imwrite(path, frames, plugin='FFMPEG', fps=fps, macro_block_size=1)
  return path


def enlarge(frames_uint8: np.ndarray, masks: np.ndarray, min_side: int = OVERLAY_MIN_SIDE
            ) -> tuple[np.ndarray, np.ndarray]:
  """Frames and masks repeated by the smallest whole factor that makes the short side at
  least `min_side` (1: unchanged)."""
  factor = max(1, -(-min_side // min(masks.shape[1:3])))
  if factor == 1:
    return frames_uint8, masks
  up = lambda x: np.repeat(np.repeat(x, factor, axis=1), factor, axis=2)
  return up(frames_uint8), up(masks)


def _font(size: int):
  try:  # Pillow >= 10.1 with FreeType: a scalable font shipped with Pillow.
    return ImageFont.load_default(size=size)
  except (TypeError, OSError, ImportError):  # older Pillow / no FreeType: the bitmap font.
    return ImageFont.load_default()


def _wrap(text: str, font, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
  lines, line = [], ''
  for word in text.split():
    trial = f'{line} {word}'.strip()
    if line and draw.textlength(trial, font=font) > width:
      lines.append(line)
      line = word
    else:
      line = trial
  return lines + ([line] if line else [])


def caption(text: str, width: int) -> np.ndarray:
  """A (h, width, 3) uint8 banner with `text` in white on dark grey, wrapped to the width."""
  size = max(11, min(28, width // 22))
  font, pad = _font(size), max(3, size // 3)
  probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  lines = _wrap(text, font, width - 2 * pad, probe) or ['']
  line_h = size + size // 4
  height = 2 * pad + line_h * len(lines)
  height += height % 2  # even, so that an even frame stays even for the mp4's yuv420p
  image = Image.new('RGB', (width, height), tuple(CAPTION_BACKGROUND))
  draw = ImageDraw.Draw(image)
  for i, line in enumerate(lines):
    draw.text((pad, pad + i * line_h), line, fill=CAPTION_TEXT, font=font)
  return np.asarray(image)


def render_overlay(frames_uint8: np.ndarray, masks: np.ndarray, expression: str | None = None
                   ) -> np.ndarray:
  """What a person looks at: the frames enlarged if small (`enlarge`), the mask tinted and
  outlined (`overlay_frames`), and with `expression` the sentence as a caption above every
  frame, so which object the words chose is clear at a glance. uint8 (n, h, w, 3)."""
  return _with_caption(overlay_frames(*enlarge(frames_uint8, masks)), expression)


def _with_caption(frames: np.ndarray, expression: str | None) -> np.ndarray:
  if expression is None:
    return frames
  banner = caption(expression, frames.shape[2])
  return np.concatenate([np.broadcast_to(banner, (len(frames), *banner.shape)), frames], axis=1)


def _strip(frames: np.ndarray, expression: str | None, count: int, gap: int) -> np.ndarray:
  picks = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
  h, w = frames.shape[1:3]
  strip = np.full((h, len(picks) * (w + gap) - gap, 3), 255, np.uint8)
  for i, t in enumerate(picks):
    strip[:, i * (w + gap):i * (w + gap) + w] = frames[t]
  return _with_caption(strip[None], expression)[0]


def overlay_strip(frames_uint8: np.ndarray, masks: np.ndarray, expression: str | None = None,
                  count: int = STRIP_FRAMES, gap: int = STRIP_GAP) -> np.ndarray:
  """One still picture of a result: `count` evenly spaced frames of the overlay side by side
  (white gaps), the expression once above them. uint8 (h, w, 3)."""
  return _strip(render_overlay(frames_uint8, masks), expression, count, gap)


def write_overlays(frames_uint8: np.ndarray, masks: np.ndarray, output_dir: str, *,
                   fps: float = DEFAULT_FPS, name: str = 'overlay',
                   expression: str | None = None) -> dict[str, str]:
  """<output_dir>/<name>.gif and, with imageio-ffmpeg, <name>.mp4 (render_overlay: enlarged
  if small, with the expression as a caption when given), and <name>_strip.png (overlay_strip:
  four frames side by side, a still for a page); returns {'gif', 'mp4', 'strip'}."""
  plain = render_overlay(frames_uint8, masks)  # drawn once for the animation and the still
  frames = _with_caption(plain, expression)
  paths = {'gif': write_gif(frames, os.path.join(output_dir, f'{name}.gif'), fps)}
  paths['strip'] = os.path.join(output_dir, f'{name}_strip.png')
  Image.fromarray(_strip(plain, expression, STRIP_FRAMES, STRIP_GAP)).save(paths['strip'])
  if _ffmpeg_available():
    paths['mp4'] = write_mp4(frames, os.path.join(output_dir, f'{name}.mp4'), fps)
  else:
    logging.info('imageio-ffmpeg not installed: no %s.mp4 (the GIF is written)', name)
  return paths


# ------------------------------------------------------------------------------------------------
# A whole split: the submission (Refer-YouTube-VOS or MeViS).
# ------------------------------------------------------------------------------------------------


def _sync(name: str, process_count: int) -> None:
  if process_count > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415 -- multi-host only

    multihost_utils.sync_global_devices(name)


def write_submission_zip(output_dir: str, zip_path: str, layout: str = layouts.YTVOS) -> str:
  """Zips <output_dir>/Annotations in the layout the dataset's evaluation server reads:
  `Annotations/<video>/<exp_id>/<frame>.png` for Refer-YouTube-VOS, `<video>/<exp_id>/<frame>.png`
  at the top for MeViS (its CodaLab server; the authors zip their inference folder's
  contents)."""
  annotations = os.path.join(output_dir, 'Annotations')
  top = annotations if layout == layouts.MEVIS else output_dir
  if not os.path.isdir(annotations):
    raise PredictError(f'nothing to zip: {annotations} does not exist')
  os.makedirs(os.path.dirname(os.path.abspath(zip_path)), exist_ok=True)
  with zipfile.ZipFile(zip_path, 'w', compression=zipfile.ZIP_DEFLATED) as zf:
    for dirpath, dirnames, filenames in os.walk(annotations):
      dirnames.sort()
      for f in sorted(filenames):
        full = os.path.join(dirpath, f)
        zf.write(full, os.path.relpath(full, top).replace(os.sep, '/'))
  return zip_path


def _propagate_written(propagator, data_config, split: str, annotations: str,
                       frame_names: dict[tuple[str, str], dict[int, str]],
                       confidence: dict[str, dict[str, dict[int, float]]],
                       log_every_s: float) -> None:
  """Replaces the written masks of every expression by their propagation (§3.4)."""
  root = os.path.abspath(os.path.expanduser(data_config.root))
  progress = ProgressLog(f'propagate {split}', len(frame_names), 'expressions',
                         every_s=log_every_s)
  frames, frames_of = None, None
  for i, ((video, exp_id), names) in enumerate(sorted(frame_names.items())):
    order = [names[t] for t in sorted(names)]
    if frames_of != video:  # expressions of one video are consecutive: read its frames once
      frames = np.stack([read_frame(os.path.join(root, split, 'JPEGImages', video, n + '.jpg'))
                         for n in order])
      frames_of = video
    exp_dir = os.path.join(annotations, video, exp_id)
    masks = np.stack([evaluation.read_prediction(os.path.join(exp_dir, n + '.png'))
                      for n in order])
    conf = np.asarray([confidence[video][exp_id][t] for t in sorted(names)])
    refined = propagation.refine(propagator, frames, masks, conf,
                                 where=f'video {video!r} expression {exp_id!r}')
    write_masks(refined, order, exp_dir)
    progress.update(i + 1)
  progress.finish()


def predict_split(predict_fn: PredictFn, variables, config: ml_collections.ConfigDict, builder,
                  vocab: vocabulary_lib.Vocabulary, output_dir: str, *, split: str | None = None,
                  zip_path: str | None = None, process_index: int | None = None,
                  process_count: int | None = None, log_every_s: float = 10.0,
                  propagator=None) -> str:
  """Masks of every (video, expression) of `split` (default config.data.eval_split).

  Writes <output_dir>/Annotations/<video>/<exp_id>/<frame>.png (0/255, at the video's original
  size; only real examples and frames), <output_dir>/confidence.json ({video: {exp_id: [sigmoid(C)
  per frame]}}, the reference of the propagation), and with `zip_path` the submission zip. With a
  `propagator` (rvos_jax.propagation), each expression's masks are then replaced by the most
  confident frame's mask propagated through its video (frames read from
  <root>/<split>/JPEGImages).
  An existing <output_dir>/Annotations is replaced. Each host predicts its own share of the
  videos; all must see the same output_dir. Returns output_dir.
  """
  from data_pipelines import pipelines  # noqa: PLC0415 -- tf.data only for whole splits

  data_config = _data_config(config)
  split = split or data_config.eval_split
  if process_index is None or process_count is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  annotations = os.path.join(output_dir, 'Annotations')
  if process_index == 0 and os.path.isdir(annotations):
    logging.info('replacing the earlier predictions in %s', annotations)
    shutil.rmtree(annotations)
  _sync('predict_split:cleared', process_count)
  os.makedirs(annotations, exist_ok=True)

  ds = pipelines.make_eval_dataset(data_config, builder, vocab, split=split,
                                   process_index=process_index, process_count=process_count)
  written: dict[tuple[str, str], list[int]] = {}
  frame_names: dict[tuple[str, str], dict[int, str]] = {}
  confidence: dict[str, dict[str, dict[int, float]]] = {}

  def write_batch(batch, probs, conf):
    probs, conf = np.asarray(probs), np.asarray(conf)
    for b in np.flatnonzero(batch['example_valid']):
      video, exp_id = batch['video'][b].decode(), batch['exp_id'][b].decode()
      valid = np.flatnonzero(batch['frame_valid'][b])
      size = tuple(int(s) for s in batch['orig_size'][b])
      masks = probabilities_to_masks(probs[b, valid], size)
      exp_dir = os.path.join(annotations, video, exp_id)
      names = [batch['frame_name'][b][t].decode() for t in valid]
      write_masks(masks, names, exp_dir)
      indices = [int(batch['frame_index'][b][t]) for t in valid]
      frame_names.setdefault((video, exp_id), {}).update(zip(indices, names, strict=True))
      written.setdefault((video, exp_id), []).extend(indices)
      scores = confidence.setdefault(video, {}).setdefault(exp_id, {})
      scores.update({i: float(conf[b, t]) for i, t in zip(indices, valid, strict=True)})

  from data_pipelines import builders  # noqa: PLC0415

  expected = {(v, e) for v, es in builders.expressions_of(builder, split).items() for e in es}
  # Each host predicts its share of the videos: the total is an estimate there.
  progress = ProgressLog(f'predict {split}' + (f' (host {process_index})' if process_count > 1
                                               else ''),
                         -(-len(expected) // process_count), 'expressions', every_s=log_every_s)
  # predict_fn dispatches asynchronously: the host writes batch i while the device runs i+1.
  pending = None
  for batch in pipelines.as_numpy(ds):
    out = predict_fn(variables, batch['frames'], batch['tokens'], batch['token_mask'])
    if pending is not None:
      write_batch(*pending)
      progress.update(len(written))
    pending = (batch, *out)
  if pending is not None:
    write_batch(*pending)
  progress.update(len(written))
  progress.finish()

  for (video, exp_id), indices in written.items():
    if sorted(indices) != list(range(len(indices))):
      raise PredictError(f'{split}: video {video!r} expression {exp_id!r} got frames '
                         f'{sorted(indices)} from the pipeline; expected each of 0..n-1 once')
  if process_count == 1:
    if set(written) != expected:
      missing = sorted(expected - set(written))
      raise PredictError(f'{split}: {len(missing)} expressions got no prediction, e.g. '
                         f'{missing[:3]}')
  if propagator is not None:
    _propagate_written(propagator, data_config, split, annotations, frame_names, confidence,
                       log_every_s)
  conf_name = 'confidence.json' if process_count == 1 else f'confidence.{process_index}.json'
  with open(os.path.join(output_dir, conf_name), 'w', encoding='utf-8') as f:
    json.dump({v: {e: [s[i] for i in sorted(s)] for e, s in es.items()}
               for v, es in confidence.items()}, f)
  logging.info('predict %s: %d expressions, %d frames written to %s', split, len(written),
               sum(len(i) for i in written.values()), annotations)
  _sync('predict_split:written', process_count)
  if zip_path and process_index == 0:
    write_submission_zip(output_dir, zip_path,
                         layouts.layout_of(data_config.get('name', 'refer_shapes')))
    logging.info('submission zip: %s', zip_path)
  return output_dir


# ------------------------------------------------------------------------------------------------
# --mode predict.
# ------------------------------------------------------------------------------------------------


def predict_video(predict_fn: PredictFn, variables, config: ml_collections.ConfigDict,
                  vocab: vocabulary_lib.Vocabulary, video: str, expression: str,
                  output_dir: str, *, fps: float | None = None,
                  propagator=None) -> dict[str, Any]:
  """Segments one video file or frame folder; writes <output_dir>/masks/<frame>.png and the
  overlays. Returns {'masks': [png paths], 'gif': path, 'mp4': path (with imageio-ffmpeg),
  'strip': a still of four frames,
  'num_frames': n}."""
  frames, names = read_video(video)
  masks = segment_video(predict_fn, variables, frames, expression, vocab, config, where=video,
                        propagator=propagator)
  paths = write_masks(masks, names, os.path.join(output_dir, 'masks'))
  overlays = write_overlays(frames, masks, output_dir, fps=fps if fps else video_fps(video),
                            expression=expression)
  with open(os.path.join(output_dir, 'expression.txt'), 'w', encoding='utf-8') as f:
    f.write(expression + '\n')
  return {'masks': paths, **overlays, 'num_frames': len(names)}


def predict_main(config: ml_collections.ConfigDict, workdir: str, *, variables,
                 vocab: vocabulary_lib.Vocabulary, model=None,
                 predict_fn: PredictFn | None = None, video: str | None = None,
                 expression: str | None = None, output_dir: str | None = None,
                 builder=None, zip_submission: bool = True,
                 propagator=None) -> dict[str, Any]:
  """`main.py --mode predict`. The caller loads the checkpoint and the vocabulary.

  With `video` and `expression`: predict_video into `output_dir` (default
  <workdir>/predictions/<video name>). Without: predict_split of config.data.eval_split into
  `output_dir` (default <workdir>/predictions/<split>) plus <output_dir>/submission.zip.
  Pass `model` (a predict_fn is made) or a ready `predict_fn`. Returns what was written.
  """
  if predict_fn is None:
    if model is None:
      raise ValueError('predict_main needs the model or a predict_fn')
    predict_fn = make_predict_fn(model)
  if (video is None) != (expression is None):
    raise PredictError('--video and --expression go together: give both to segment one video, '
                       'or neither to predict the evaluation split')
  if video is not None:
    name = os.path.splitext(os.path.basename(os.path.normpath(video)))[0] or 'video'
    output_dir = output_dir or os.path.join(workdir, 'predictions', name)
    result = predict_video(predict_fn, variables, config, vocab, video, expression, output_dir,
                           propagator=propagator)
    logging.info('segmented %d frames of %s: %s', result['num_frames'], video, output_dir)
    return {'output_dir': output_dir, **result}

  from data_pipelines import builders  # noqa: PLC0415 -- TFDS only for whole splits

  data_config = _data_config(config)
  split = data_config.eval_split
  output_dir = output_dir or os.path.join(workdir, 'predictions', split)
  builder = builder or builders.prepare(data_config)
  zip_path = os.path.join(output_dir, 'submission.zip') if zip_submission else None
  predict_split(predict_fn, variables, data_config, builder, vocab, output_dir, split=split,
                zip_path=zip_path, propagator=propagator)
  result = {'output_dir': output_dir, 'annotations': os.path.join(output_dir, 'Annotations')}
  if zip_path:
    result['zip'] = zip_path
  return result


# Kinds whose clips hold a look-alike twin told apart only by the words (refer_shapes).
LOOK_ALIKE_KINDS = ('motion',)


def write_example_overlays(predict_fn, variables, config, vocab, output_dir: str,
                           per_kind: int = 1) -> list[str]:
  """Overlays a person can look at: the first expressions of the eval split (for
  refer_shapes, `per_kind` of each expression kind), segmented from the frames on disk.

  For a motion expression (LOOK_ALIKE_KINDS) its look-alike twin's expression in the same clip
  is segmented too, and `<kind>_<video>_pair.png` stacks the two stills: the same frames, two
  sentences that differ only in the motion, and (when motion is learned) two different
  objects."""
  root = os.path.abspath(os.path.expanduser(config.data.root))
  split = config.data.eval_split
  layout = layouts.layout_of(config.data.name)
  meta_path = layouts.meta_expressions_path(root, split, layout)
  meta = layouts.read_expressions(root, split, layout)
  kinds = ytvos_layout.read_expression_kinds(meta_path) or {}
  chosen, counts, pairs = [], {}, []
  for video in sorted(meta):
    for exp_id, exp in sorted(meta[video]['expressions'].items()):
      kind = kinds.get(video, {}).get(exp_id, 'all')
      if counts.get(kind, 0) < per_kind:
        counts[kind] = counts.get(kind, 0) + 1
        chosen.append((video, exp_id, exp['exp'], kind))
        twins = [(e, x['exp']) for e, x in sorted(meta[video]['expressions'].items())
                 if e != exp_id and kinds.get(video, {}).get(e) == kind]
        if kind in LOOK_ALIKE_KINDS and twins:
          chosen.append((video, twins[0][0], twins[0][1], kind))
          pairs.append((kind, video, exp_id, twins[0][0]))
  written, strips = [], {}
  for video, exp_id, text, kind in chosen:
    out = os.path.join(output_dir, f'{kind}_{video}_{exp_id}')
    paths = predict_video(predict_fn, variables, config, vocab,
                          os.path.join(root, split, 'JPEGImages', video), text, out)
    strips[(video, exp_id)] = paths['strip']
    written.append(out)
  for kind, video, a, b in pairs:
    stills = [np.asarray(Image.open(strips[(video, e)]).convert('RGB')) for e in (a, b)]
    width = max(x.shape[1] for x in stills)
    stills = [np.pad(x, ((0, STRIP_GAP), (0, width - x.shape[1]), (0, 0)),
                     constant_values=255) for x in stills]
    Image.fromarray(np.concatenate(stills)[:-STRIP_GAP]).save(
        os.path.join(output_dir, f'{kind}_{video}_pair.png'))
  logging.info('wrote %d overlays under %s', len(written), output_dir)
  return written
