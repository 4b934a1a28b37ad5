"""One scenario of tests/test_scale_out.py, run in its own process (the device count is fixed by
XLA_FLAGS before JAX starts, and jax.distributed can be initialized once per process).

From the repository root, with PYTHONPATH=. (tests/test_scale_out.py sets XLA_FLAGS):
  python tests/scale_out_worker.py eight --out O --ckpt C   # 8 devices: DP, FSDP, saves C
  python tests/scale_out_worker.py one --out O --ckpt C     # 1 device: reference, restores C
  python tests/scale_out_worker.py multi --out O --ckpt C --data_root D --port P \\
      --process_id I                                        # 2 processes x 4 devices

Every run trains the same tiny model (configs/refer_shapes.py:smoke, shrunk) for STEPS steps on
the same synthetic global batches (GLOBAL_BATCH clips) and writes, under --out, .npz files of
the losses and the final state (gathered to the host) and a .json of facts, for the test to
compare. The last line printed is 'done'.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from configs import refer_shapes
from rvos_jax import checkpointing, losses, sharding, train
from rvos_jax.models import mlrl_sa

T0 = time.time()
STEPS = 5
GLOBAL_BATCH = 8
VOCAB_SIZE = 20
# Overrides exercised by the FSDP scenario: one leaf the size rule would shard is forced
# replicated, one it would replicate (too small) is forced sharded.
RULES = (('^object_encoder/conv/kernel$', ()), ('^word_embedding/embedding$', ('model', None)))


def log(msg: str) -> None:
  print(f'[{time.time() - T0:6.1f} s] {msg}', flush=True)


def tiny_config(model_axis: int = 1, data_axis: int = -1):
  """The smoke config at test_train's tiny size (compiles in seconds on CPU)."""
  # The previous default's smoke: make_batch has no velocity targets and distinct clips per row.
  config = refer_shapes.get_previous_smoke_config()
  config.data.expressions_per_clip = 1
  config.data.height, config.data.width, config.data.num_frames, config.data.max_words = (
      32, 48, 2, 5)
  config.model.hidden_dim, config.model.decoder_dim = 24, 8
  config.model.text_ffn_dim = 16
  config.model.backbone_width = 0.125
  config.optim.warmup_steps = 2
  config.optim.eps = 1e-4  # see tests/test_scale_out.py: exact-zero gradients are noise
  config.train.num_steps = 10
  config.mesh.data, config.mesh.model = data_axis, model_axis
  # Tiny leaves: a 4 KiB threshold still leaves biases and norms replicated.
  config.sharding.min_bytes = 4096
  config.sharding.rules = RULES
  return config


def make_batch(config, step: int, b: int = GLOBAL_BATCH) -> dict[str, np.ndarray]:
  """The global batch of `step` (different clips every step; every run builds the same)."""
  d = config.data
  rng = np.random.default_rng(1000 + step)
  masks = np.zeros((b, d.num_frames, d.height, d.width), np.float32)
  for i in range(b):
    y, x = rng.integers(0, d.height // 2), rng.integers(0, d.width // 2)
    masks[i, :, y:y + 12, x:x + 16] = 1.0
  batch = dict(
      frames=rng.uniform(size=(b, d.num_frames, d.height, d.width, 3)).astype(np.float32),
      tokens=rng.integers(2, VOCAB_SIZE, size=(b, d.max_words)).astype(np.int32),
      token_mask=np.ones((b, d.max_words), bool), masks=masks, object_masks=masks,
      frame_valid=np.ones((b, d.num_frames), bool))
  batch['boundary'] = np.asarray(losses.boundary_target(jnp.asarray(masks)))
  return batch


def host_tree(tree) -> dict[str, np.ndarray]:
  """'/'-joined path -> the whole array on this host (gathered from every process)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = '/'.join(sharding.path_names(path))
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    out[name] = np.asarray(leaf)
  return out


def run_training(config, tag: str, out: str, init_state=None) -> dict:
  """STEPS steps of train.jit_train_step on the mesh of `config`; writes <out>/<tag>.npz.

  init_state: start from this state (moved to this mesh's shardings) instead of
  create_train_state, which would compile the initialisation again (~15 s on this CPU)."""
  mesh = sharding.make_mesh(config)
  model = mlrl_sa.build_model(config.model, VOCAB_SIZE)
  tx = train.make_optimizer(config)
  if init_state is None:
    state, shardings = train.create_train_state(config, model, tx, mesh, jax.random.PRNGKey(0))
  else:
    _, shardings = train.abstract_train_state(config, model, tx, mesh)
    state = jax.device_put(init_state, shardings)
  initial = state
  log(f'{tag}: initial state on mesh {dict(mesh.shape)}')
  # No donation: `initial` must survive for the next scenario of this process.
  step_fn = train.jit_train_step(model, tx, config, mesh, shardings, donate=False)
  # This process's rows of the global batch: processes hold consecutive blocks.
  n_local = GLOBAL_BATCH // jax.process_count()
  rows = slice(jax.process_index() * n_local, (jax.process_index() + 1) * n_local)

  def batch_of(step):
    return sharding.global_batch({k: v[rows] for k, v in make_batch(config, step).items()}, mesh)

  t0 = time.time()
  batch = batch_of(0)
  d = config.data
  # Each process passed GLOBAL_BATCH / process_count clips: the array is the global batch.
  chex.assert_shape(batch['frames'], (GLOBAL_BATCH, d.num_frames, d.height, d.width, 3))
  compiled = step_fn.lower(state, batch).compile()
  compile_s = time.time() - t0
  # Which global rows this process's devices hold: must be its own block, in order.
  held = sorted({s.index[0].start or 0 for s in batch['frames'].addressable_shards})
  state_in = compiled.input_shardings[0][0]
  held_b, total_b = sharding.bytes_per_device(
      jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                   state.params, state_in.params))
  opt_held, opt_total = sharding.bytes_per_device(
      jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                   state.opt_state, state_in.opt_state))
  mem = compiled.memory_analysis()
  losses_, grad_norms = [], []
  t0 = time.time()
  for step in range(STEPS):
    if step:
      batch = batch_of(step)
    state, metrics = compiled(state, batch)
    losses_.append(float(metrics['loss/total']))
    # Adam's update hardly depends on the gradient's scale: the norm checks it directly (a
    # sum over devices where a mean is due would show here, not in the parameters).
    grad_norms.append(float(metrics['grad_norm']))
  step_s = (time.time() - t0) / STEPS
  specs = {name: str(s.spec) for name, s in zip(
      host_tree(state.params), jax.tree.leaves(state_in.params), strict=True)}
  facts = dict(
      tag=tag, mesh=dict(mesh.shape), process_count=jax.process_count(),
      device_count=jax.device_count(), losses=losses_, grad_norms=grad_norms,
      compile_s=compile_s, step_s=step_s,
      param_bytes_device0=held_b, param_bytes_total=total_b,
      opt_bytes_device0=opt_held, opt_bytes_total=opt_total,
      argument_bytes=int(mem.argument_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
      batch_row_starts=held, specs=specs)
  arrays = host_tree({'params': state.params, 'batch_stats': state.batch_stats})
  start = host_tree({'params': initial.params, 'batch_stats': initial.batch_stats})
  if jax.process_index() == 0:
    np.savez(os.path.join(out, f'{tag}.npz'), **arrays)
    np.savez(os.path.join(out, f'{tag}_initial.npz'), **start)
  with open(os.path.join(out, f'{tag}_p{jax.process_index()}.json'), 'w') as f:
    json.dump(facts, f)
  log(f'{tag}: losses {losses_}, params {held_b}/{total_b} bytes on device 0, '
      f'compile {compile_s:.1f} s, step {step_s:.2f} s')
  return dict(state=state, initial=initial)


def meta_for(config, step):
  return {'config': config, 'vocab_sha256': 'synthetic', 'vocab_size': VOCAB_SIZE,
          'data': {'batches_per_process': step}}


def save_checkpoint(config, state, ckpt: str, out: str) -> None:
  """Saves `state` at its step under `ckpt` (and its values, gathered, to <out>/saved_<step>)."""
  manager = checkpointing.make_manager(ckpt, max_to_keep=2, save_interval_steps=1)
  step = int(state.step)
  assert checkpointing.save(manager, step, state, meta_for(config, step), force=True)
  manager.wait_until_finished()
  manager.close()
  np.savez(os.path.join(out, f'saved_{step}.npz'), **host_tree(state))
  log(f'saved step {step} to {ckpt}')


def restore_checkpoint(config, ckpt: str, step: int | None = None):
  """inference.restore_for_inference's path: this mesh's abstract state is the target."""
  mesh = sharding.make_mesh(config)
  model = mlrl_sa.build_model(config.model, VOCAB_SIZE)
  abstract, _ = train.abstract_train_state(config, model, train.make_optimizer(config), mesh)
  manager = checkpointing.make_manager(ckpt, max_to_keep=2, save_interval_steps=1)
  state, _ = checkpointing.restore_latest(manager, abstract, config=config, step=step)
  manager.close()
  for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(state)[0],
                               jax.tree.leaves(abstract), strict=True):
    assert got.sharding == want.sharding, (jax.tree_util.keystr(path), got.sharding)
  log(f'restored step {int(state.step)} onto mesh {dict(mesh.shape)}')
  return state


def dump_restored(state, out: str, tag: str) -> None:
  kernel = state.params['backbone']['layer4']['1']['conv2']['kernel']
  arrays = host_tree(state)
  if jax.process_index() == 0:
    np.savez(os.path.join(out, f'{tag}.npz'), **arrays)
  with open(os.path.join(out, f'{tag}_p{jax.process_index()}.json'), 'w') as f:
    json.dump({'mesh': {k: int(v) for k, v in kernel.sharding.mesh.shape.items()},
               'kernel_spec': str(kernel.sharding.spec),
               'kernel_shard_shape': list(kernel.addressable_shards[0].data.shape)}, f)


def read_data_shard(config, data_root: str, out: str, batches: int = 4) -> None:
  """The videos of this process's share of the records, and those its training stream yields
  (the pipeline shards by jax.process_index())."""
  from data_pipelines import builders, pipelines  # noqa: PLC0415 -- TensorFlow: only here

  config.data.root = data_root
  builder = train.prepare_data(config)
  records = sorted(r['video'].decode() for r in pipelines.read_records(
      builder, config.data.train_split).as_numpy_iterator())
  vocab = pipelines.build_vocabulary(builder, config.data.train_split)
  it = pipelines.as_numpy(pipelines.make_train_dataset(config.data, builder, vocab))
  streamed = sorted({v.decode() for _ in range(batches) for v in next(it)['video']})
  all_videos = sorted(builders.expressions_of(builder, config.data.train_split))
  with open(os.path.join(out, f'data_p{jax.process_index()}.json'), 'w') as f:
    json.dump({'records': records, 'streamed': streamed, 'all_videos': all_videos}, f)
  log(f'data: process {jax.process_index()} holds videos {records}, streamed {streamed}')


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('mode', choices=['eight', 'one', 'multi'])
  parser.add_argument('--out', required=True)
  parser.add_argument('--ckpt', required=True)
  parser.add_argument('--data_root')
  parser.add_argument('--port', type=int)
  parser.add_argument('--process_id', type=int, default=0)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  log(f'{args.mode}: imports done')

  if args.mode == 'multi':
    config = tiny_config()
    config.distributed.coordinator_address = f'localhost:{args.port}'
    config.distributed.num_processes = 2
    config.distributed.process_id = args.process_id
    config.distributed.initialization_timeout = 60
    assert sharding.initialize_distributed(config)
  expected = {'eight': (1, 8), 'one': (1, 1), 'multi': (2, 8)}[args.mode]
  assert (jax.process_count(), jax.device_count()) == expected, (
      jax.process_count(), jax.device_count())

  if args.mode == 'eight':
    dp = run_training(tiny_config(), 'dp8', args.out)  # data=8
    save_checkpoint(tiny_config(), dp['initial'], args.ckpt, args.out)  # step 0, for 'multi'
    fsdp = tiny_config(model_axis=2)  # data=4 x model=2
    trained = run_training(fsdp, 'fsdp8', args.out, init_state=dp['initial'])
    save_checkpoint(fsdp, trained['state'], args.ckpt, args.out)  # step STEPS, sharded
  elif args.mode == 'one':
    run_training(tiny_config(), 'one', args.out)
    dump_restored(restore_checkpoint(tiny_config(), args.ckpt), args.out, 'restored1')
  else:
    # data=2 (one row per process) x model=4 (parameters sharded within each process). The
    # initial state is the 8-device run's, restored: the same values as create_train_state
    # gives (the 1-device run checks that), without compiling the initialisation again.
    config = tiny_config(model_axis=4)
    initial = restore_checkpoint(config, args.ckpt, step=0)
    run_training(config, 'multi', args.out, init_state=initial)
    dump_restored(restore_checkpoint(config, args.ckpt), args.out, 'restored_multi')
    read_data_shard(tiny_config(), args.data_root, args.out)
    multihost_utils.sync_global_devices('scale_out_worker:done')
  log('done')


if __name__ == '__main__':
  main()
