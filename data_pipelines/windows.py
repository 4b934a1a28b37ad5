"""Evaluation windows: which frames of a video go together into one T-frame model call.

Numpy only (prediction on a single video does not load TensorFlow); clip_ops.eval_windows is
the same inside tf.data.
"""

import numpy as np


def eval_stride(num_frames: int, clip_len: int, stride: int) -> int:
  """The frame stride the evaluation windows of a video use: `stride`, or the largest that
  fits (clip_ops.sample_frame_indices' rule), so a video of at most T frames is one window."""
  fit = max((num_frames - 1) // max(clip_len - 1, 1), 1)
  return max(1, min(stride, fit))


def eval_windows(num_frames: int, clip_len: int, stride: int) -> np.ndarray:
  """Evaluation windows (num_windows, T) int32 of frame indices, -1 on padding.

  Every frame lands in exactly one window. Stride 1: consecutive frames. Stride s: frames
  r, r+s, r+2s, ... for each r < s, cut into windows of T, so the model sees the frame spacing
  it was trained on (training clips are `frame_stride` apart).
  """
  s = eval_stride(num_frames, clip_len, stride)
  rows = []
  for r in range(s):
    idx = np.arange(r, num_frames, s, dtype=np.int32)
    pad = -len(idx) % clip_len
    rows.append(np.concatenate([idx, np.full(pad, -1, np.int32)]).reshape(-1, clip_len))
  return np.concatenate(rows) if rows else np.zeros((0, clip_len), np.int32)
