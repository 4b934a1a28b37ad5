"""rvos-jax entry point: train, evaluate or predict, as the config says.

  python main.py --config configs/refer_shapes.py --workdir /tmp/rvos            # train + eval
  python main.py --config configs/refer_shapes.py --workdir /tmp/rvos --mode eval
  python main.py --config configs/refer_shapes.py --workdir /tmp/rvos --mode predict \\
      --video clip.mp4 --expression "the red square moving left"
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, vocabulary, logs and results go here.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict'],
                  'train: train (resuming) and evaluate; eval: evaluate the latest checkpoint; '
                  'predict: segment --video for --expression, or the eval split into a '
                  'submission zip when they are not given.')
flags.DEFINE_string('video', None, 'predict: an mp4 (or other video file) or a folder of frames.')
flags.DEFINE_string('expression', None, 'predict: the referring expression.')
flags.DEFINE_string('output_dir', None, 'predict/eval: where results go (default under workdir).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Multi-host runs (Slurm, TPU pod slices, config.distributed) join jax.distributed before
  # anything creates a JAX backend: afterwards initialize() would fail.
  from rvos_jax import sharding  # noqa: PLC0415
  sharding.initialize_distributed(FLAGS.config)
  # tf.data only feeds the host: keep TensorFlow off the accelerators JAX uses.
  import tensorflow as tf  # noqa: PLC0415
  tf.config.set_visible_devices([], 'GPU')

  from rvos_jax import inference, train  # noqa: PLC0415 -- after TF is confined
  config = FLAGS.config
  from rvos_jax import allocator  # noqa: PLC0415
  logging.info('memory allocator: %s', allocator.describe())
  logging.info('config:\n%s', config)
  if config.get('task', 'rvos') == 'propagation':  # STCN for §3.4's propagation
    from rvos_jax import propagation_train  # noqa: PLC0415
    if FLAGS.mode == 'predict':
      raise app.UsageError('the propagation network has no --mode predict of its own: set '
                           '--config.inference.propagation=stcn on an MLRL-SA config')
    if FLAGS.mode == 'train':
      propagation_train.train_and_evaluate(config, FLAGS.workdir)
    else:
      propagation_train.evaluate_vos(config, propagation_train.export_dir(FLAGS.workdir),
                                     FLAGS.output_dir or f'{FLAGS.workdir}/eval')
    return
  if FLAGS.mode == 'train':
    train.train_and_evaluate(config, FLAGS.workdir)
  elif FLAGS.mode == 'eval':
    inference.evaluate_checkpoint(config, FLAGS.workdir, output_dir=FLAGS.output_dir)
  else:
    inference.predict_checkpoint(config, FLAGS.workdir, video=FLAGS.video,
                                 expression=FLAGS.expression, output_dir=FLAGS.output_dir)


if __name__ == '__main__':
  # Before anything is loaded: a retaining allocator makes the CPU step ~1.5x faster, and
  # LD_PRELOAD only takes effect in a new process (rvos_jax/allocator.py; RVOS_JAX_ALLOCATOR).
  from rvos_jax import allocator
  allocator.reexec()
  app.run(main)
