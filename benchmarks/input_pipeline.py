"""Training input pipeline throughput: the paper's setting (T=12, 240x432, batch 2) or the
embedded default's (configs/refer_shapes.py: T=4, 64x96, 4 clips x 4 expressions).

Generates a refer_shapes dataset (unless --root points at one), builds its TFDS records, then
times the training pipeline of data_pipelines.pipelines (decode, resize, jitter, flip, boundary,
tokenise) and prints clips/s, frames/s and the process's CPU time per batch (what the pipeline
takes from a training step that shares the same cores) with the machine's load average. Source
frames can be made larger than the training size (--source_height/--source_width, e.g. 720x1280
like YouTube-VOS) to include the cost of decoding big JPEGs.

  python -m benchmarks.input_pipeline [--batches 60] [--source_height 720 --source_width 1280]
  python -m benchmarks.input_pipeline --setting embedded --root data/refer_shapes
"""

import os
import resource
import tempfile
import time
from collections.abc import Sequence

import tensorflow as tf
from absl import app, flags

from configs import refer_shapes as refer_shapes_config
from data_pipelines import builders, pipelines, refer_shapes
from data_pipelines.config import get_data_config

_SETTING = flags.DEFINE_enum(
    'setting', 'paper', ['paper', 'embedded'],
    "paper: configs/default.py's data; embedded: configs/refer_shapes.py's (its 64x96 source "
    'frames unless --source_height/--source_width).')
_ROOT = flags.DEFINE_string('root', '', 'Existing refer_shapes root ("" = generate in a temp dir).')
_VIDEOS = flags.DEFINE_integer('videos', 16, 'Videos to generate.')
_FRAMES = flags.DEFINE_integer('video_frames', 36, 'Frames per generated video.')
_SRC_H = flags.DEFINE_integer('source_height', 240, 'Height of the generated JPEG frames.')
_SRC_W = flags.DEFINE_integer('source_width', 432, 'Width of the generated JPEG frames.')
_BATCHES = flags.DEFINE_integer('batches', 60, 'Timed batches (after --warmup).')
_WARMUP = flags.DEFINE_integer('warmup', 10, 'Untimed batches first (fills the buffers).')
_BATCH = flags.DEFINE_integer('batch_size', 0, 'Rows per batch (0: the setting\'s, paper 2).')
_THREADS = flags.DEFINE_integer('threads', 0, 'tf.data private thread pool (0 = default).')


def data_config():
  if _SETTING.value == 'embedded':
    config = refer_shapes_config.get_config().data  # 4 clips x 4 expressions at 64x96, T=4
  else:
    config = get_data_config()  # T=12, 240x432, N=20, flip, photometric jitter
    config.batch_size = 2
    config.shuffle_buffer = 64
  if _BATCH.value:
    config.batch_size = _BATCH.value
  return config


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def run(config) -> dict:
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
  start, cpu = time.perf_counter(), _cpu_seconds()
  for _ in range(_BATCHES.value):
    batch = next(it)
  seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
  clips = _BATCHES.value * config.batch_size
  return {'clips_per_s': clips / seconds, 'frames_per_s': clips * config.num_frames / seconds,
          'cpu_ms_per_batch': 1000 * cpu / _BATCHES.value, 'shape': batch['frames'].shape,
          'seconds': seconds}


def main(argv: Sequence[str]) -> None:
  del argv
  config = data_config()
  config.root = _ROOT.value
  height, width = _SRC_H.value, _SRC_W.value
  if _SETTING.value == 'embedded' and not (_SRC_H.present or _SRC_W.present):
    height, width = config.generate.height, config.generate.width
  with tempfile.TemporaryDirectory() as tmp:
    if not config.root:
      config.root = os.path.join(tmp, 'refer_shapes')
      refer_shapes.generate(config.root, num_train_videos=_VIDEOS.value, num_valid_videos=0,
                            num_frames=_FRAMES.value, height=height, width=width, seed=0)
    r = run(config)
  load = os.getloadavg()
  source = 'existing records' if _ROOT.value else f'{height}x{width} JPEGs'
  print(f'input pipeline ({_SETTING.value}), training, batch {r["shape"]} from {source}, '
        f'{os.cpu_count()} CPUs: {r["clips_per_s"]:.1f} clips/s, '
        f'{r["frames_per_s"]:.0f} frames/s, {r["cpu_ms_per_batch"]:.0f} ms CPU per batch '
        f'({r["seconds"]:.1f} s timed); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}')


if __name__ == '__main__':
  app.run(main)
