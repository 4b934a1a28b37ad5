"""Training input pipeline throughput at the paper's setting (T=12, 240x432, batch 2).

Generates a refer_shapes dataset (unless --root points at one), builds its TFDS records, then
times the training pipeline of data_pipelines.pipelines (decode, resize, jitter, flip, boundary,
tokenise) and prints clips/s and frames/s with the machine's load average. Source frames can be
made larger than the training size (--source_height/--source_width, e.g. 720x1280 like
YouTube-VOS) to include the cost of decoding big JPEGs.

  python -m benchmarks.input_pipeline [--batches 60] [--source_height 720 --source_width 1280]
"""

import os
import tempfile
import time
from collections.abc import Sequence

import tensorflow as tf
from absl import app, flags

from data_pipelines import builders, pipelines, refer_shapes
from data_pipelines.config import get_data_config

_ROOT = flags.DEFINE_string('root', '', 'Existing refer_shapes root ("" = generate in a temp dir).')
_VIDEOS = flags.DEFINE_integer('videos', 16, 'Videos to generate.')
_FRAMES = flags.DEFINE_integer('video_frames', 36, 'Frames per generated video.')
_SRC_H = flags.DEFINE_integer('source_height', 240, 'Height of the generated JPEG frames.')
_SRC_W = flags.DEFINE_integer('source_width', 432, 'Width of the generated JPEG frames.')
_BATCHES = flags.DEFINE_integer('batches', 60, 'Timed batches (after --warmup).')
_WARMUP = flags.DEFINE_integer('warmup', 10, 'Untimed batches first (fills the buffers).')
_BATCH = flags.DEFINE_integer('batch_size', 2, 'Clips per batch (paper: 2 per device).')
_THREADS = flags.DEFINE_integer('threads', 0, 'tf.data private thread pool (0 = default).')


def run(root: str) -> dict:
  config = get_data_config()  # T=12, 240x432, N=20, flip, photometric jitter: the paper setting
  config.root = root
  config.batch_size = _BATCH.value
  config.shuffle_buffer = 64
  builder = builders.prepare(config)
  vocab = pipelines.build_vocabulary(builder)
  ds = pipelines.make_train_dataset(config, builder, vocab, process_index=0, process_count=1)
  if _THREADS.value:
    options = tf.data.Options()
    options.threading.private_threadpool_size = _THREADS.value
    ds = ds.with_options(options)
  it = pipelines.as_numpy(ds)
  for _ in range(_WARMUP.value):
    next(it)
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    batch = next(it)
  seconds = time.perf_counter() - start
  clips = _BATCHES.value * _BATCH.value
  return {'clips_per_s': clips / seconds, 'frames_per_s': clips * config.num_frames / seconds,
          'shape': batch['frames'].shape, 'seconds': seconds}


def main(argv: Sequence[str]) -> None:
  del argv
  root = _ROOT.value
  with tempfile.TemporaryDirectory() as tmp:
    if not root:
      root = os.path.join(tmp, 'refer_shapes')
      refer_shapes.generate(root, num_train_videos=_VIDEOS.value, num_valid_videos=0,
                            num_frames=_FRAMES.value, height=_SRC_H.value,
                            width=_SRC_W.value, seed=0)
    r = run(root)
  load = os.getloadavg()
  print(f'input pipeline, training, batch {r["shape"]} from {_SRC_H.value}x{_SRC_W.value} '
        f'JPEGs, {os.cpu_count()} CPUs: {r["clips_per_s"]:.1f} clips/s, '
        f'{r["frames_per_s"]:.0f} frames/s ({r["seconds"]:.1f} s timed); '
        f'load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}')


if __name__ == '__main__':
  app.run(main)
