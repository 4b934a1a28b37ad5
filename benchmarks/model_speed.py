"""Speed of the whole network, JAX against the PyTorch reference, in one run.

  python -m benchmarks.model_speed                               # both settings, ~15 min on 2 cores
  python -m benchmarks.model_speed --settings=embedded --repeats=3
  python -m benchmarks.model_speed --settings=embedded --allocators=system,auto  # allocator
  python -m benchmarks.model_speed --json=benchmarks/results/cpu.json
  python -m benchmarks.model_speed --settings=paper --frameworks=jax --modes=infer --breakdown
  python -m benchmarks.model_speed --settings=embedded --frameworks=jax --modes=train \
      --set=model.decoder_finest_stride=2                # what a config switch costs
  JAX_PLATFORMS=cuda python -m benchmarks.model_speed --frameworks=jax --settings=paper \
      --compute_dtype=bfloat16 --clips=16              # a GPU: bf16, 16 windows per call

Rows: for each setting (`paper`: configs/default.py, T=12 frames of 240x432, ResNet-50, d=384,
N=20, one 12-frame clip per step as at inference time; `embedded`: configs/refer_shapes.py, a
batch of 8 clips of 4 frames at 64x96, with its velocity head and loss; `embedded_previous`: the
default before its motion recipe, configs/refer_shapes.py:previous, 8 clips of 6 frames; the
default trains on 4 clips x 4 expressions: `--clips=16 --expressions_per_clip=4`) and each mode
(`infer`: forward only; `train`: forward, Eq. 16 loss, backward and the AdamW update), the JAX
model (`train.jit_train_step`, the step that main.py runs, and `jax.jit(model.apply)`) and the
PyTorch reference of tests/torch_reference in eager mode, NCHW (`torch`) and channels_last
(`torch_cl`), on the same inputs.

Columns:
  median / spread:  seconds per step over --repeats timed calls after --warmup untimed ones;
                    spread = (max - min) / median;
  frames/s:         clips x T / median;
  compile:          JAX's lower + compile seconds (torch: none);
  GFLOP:            XLA's FLOP count of the compiled step (`cost_analysis`), used for every
                    framework's row since the network is the same;
  GFLOP/s, %peak:   GFLOP / median, and that as a share of the matrix-multiply ceiling measured
                    in the same run (the best of JAX's and torch's 2048^3 float32 matmul);
  RSS:              peak resident memory of the child process that ran the row (each row runs in
                    a fresh process), MiB; XLA temp: XLA's own estimate of its temporaries.
JAX/torch ratios (frames/s, or torch time / JAX time for training) come last, per setting, against
both torch layouts.

Both sides: float32, the backbone's BatchNorm frozen (the reference has no trainable BN; the
embedded config trains its BN, but here both use frozen statistics so the work is the same),
no dropout. Each row runs in its own child process, one after another (never two at once: on a
2-core machine a row beside another measures neither). The XLA flags in force are those of
rvos_jax/xla_flags.py unless --stock is given (they only change XLA's CPU compiler; torch reads
none of them). Both frameworks' rows run under the memory allocator of --allocators
(rvos_jax/allocator.py; default auto, what main.py runs under: tcmalloc where installed);
`system` is the process as started (glibc's malloc).
"""

from __future__ import annotations

import ast
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_list('settings', ['embedded', 'paper'], 'embedded, embedded_previous (the '
                  'default before its motion recipe: configs/refer_shapes.py:previous) and/or '
                  'paper.')
flags.DEFINE_list('modes', ['infer', 'train'], 'infer and/or train.')
flags.DEFINE_list('frameworks', ['jax', 'torch', 'torch_cl'], 'jax, torch (NCHW), torch_cl '
                  '(channels_last).')
flags.DEFINE_integer('repeats', 5, 'Timed calls per row (the median is reported).')
flags.DEFINE_integer('warmup', 2, 'Untimed calls before timing (JAX: after compiling).')
flags.DEFINE_integer('clips', 0, 'Clips per step; 0 = the setting\'s own (paper 1, embedded 8).')
flags.DEFINE_integer('expressions_per_clip', 1, 'JAX train rows: K expressions per clip '
                     '(config.data.expressions_per_clip): --clips rows, clips/K distinct clips, '
                     'each read once by the step.')
flags.DEFINE_multi_string('set', [], 'A config override KEY=VALUE for every row (repeatable), '
                          'e.g. --set=model.decoder_finest_stride=2: what a switch costs.')
flags.DEFINE_list('allocators', ['auto'], 'Run every row under each of these memory allocators '
                  '(rvos_jax/allocator.py: auto, tcmalloc, jemalloc, glibc_tuned, system; auto is '
                  'what main.py runs under, system the process as started): before/after in one '
                  'run.')
flags.DEFINE_bool('stock', False, 'Without rvos_jax/xla_flags.py\'s defaults: what they buy.')
flags.DEFINE_string('xla_flags', '', 'Extra XLA_FLAGS for every child (e.g. to try a flag).')
flags.DEFINE_enum('compute_dtype', 'float32', ['float32', 'bfloat16', 'float16'],
                  'config.model.compute_dtype of the JAX rows (rvos_jax/precision.py); the torch '
                  'rows stay float32.')
flags.DEFINE_bool('breakdown', False, 'Also time the backbone, one pyramid head and the whole '
                  'network alone (JAX) for each setting.')
flags.DEFINE_string('json', '', 'Also write the rows as JSON here.')
flags.DEFINE_string('child', '', 'Internal: SETTING:FRAMEWORK:MODE, or "ceiling".')
FLAGS = flags.FLAGS

VOCAB = 3000


def setting_config(name: str):
  """(config, clips) for a setting: the config's data/model sections define the shapes."""
  if name == 'paper':
    from configs import default  # noqa: PLC0415
    config, clips = default.get_config(), 1
  elif name in ('embedded', 'embedded_previous'):
    from configs import refer_shapes  # noqa: PLC0415
    config = refer_shapes.get_config(None if name == 'embedded' else 'previous')
    clips = 8
  else:
    raise ValueError(f'unknown setting {name!r}: embedded, embedded_previous or paper')
  for item in FLAGS.set:
    key, sep, value = item.partition('=')
    section, _, field = key.partition('.')
    if not sep or section not in config or field not in config[section]:
      raise ValueError(f'--set={item!r}: not KEY=VALUE with KEY an existing config key')
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # a bare string
    config[section][field] = value
  config.model.frozen_bn = True
  config.model.text_dropout = 0.0
  config.model.compute_dtype = FLAGS.compute_dtype
  config.data.expressions_per_clip = FLAGS.expressions_per_clip
  clips = FLAGS.clips or clips
  if clips % FLAGS.expressions_per_clip:
    raise ValueError(f'--expressions_per_clip={FLAGS.expressions_per_clip} must divide the '
                     f'{clips} clips per step')
  return config, clips


def make_batch(config, clips: int, seed: int = 0) -> dict:
  """Random frames, tokens (every clip a different length) and rectangle targets, numpy."""
  import numpy as np  # noqa: PLC0415
  d = config.data
  rng = np.random.default_rng(seed)
  t, h, w, n = d.num_frames, d.height, d.width, d.max_words
  lengths = rng.integers(3, n + 1, size=clips)
  token_mask = np.arange(n)[None] < lengths[:, None]
  masks = np.zeros((clips, t, h, w), np.float32)
  objects = np.zeros_like(masks)
  for i in range(clips):
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    masks[i, :, y:y + h // 3, x:x + w // 3] = 1
    objects[i] = masks[i]
    objects[i, :, h // 2:, w // 2:] = 1
  batch = dict(
      frames=rng.uniform(size=(clips, t, h, w, 3)).astype(np.float32),
      tokens=np.where(token_mask, rng.integers(2, VOCAB, size=(clips, n)), 0).astype(np.int32),
      token_mask=token_mask, masks=masks, object_masks=objects,
      frame_valid=np.ones((clips, t), bool))
  if d.get('object_velocity', False):  # the velocity loss' targets (random; its cost is real)
    batch['object_velocity'] = rng.normal(size=(clips, t, h, w, 2)).astype(np.float32)
    batch['velocity_valid'] = objects > 0
  return batch


def timed(fn, repeats: int, warmup: int) -> list[float]:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def run_jax(setting: str, mode: str) -> dict:
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from rvos_jax import losses, precision, sharding, train  # noqa: PLC0415
  from rvos_jax.models import mlrl_sa  # noqa: PLC0415

  config, clips = setting_config(setting)
  batch = make_batch(config, clips)
  batch['boundary'] = losses.boundary_target(jnp.asarray(batch['masks']))
  model = mlrl_sa.build_model(config.model, VOCAB)
  config.mesh.data, config.mesh.model = 1, 1
  mesh = sharding.make_mesh(config)
  tx = train.make_optimizer(config)
  state, shardings = train.create_train_state(config, model, tx, mesh, jax.random.key(0))
  batch = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}
  t0 = time.perf_counter()
  if mode == 'infer':
    # Every output (as the torch reference computes), in config.model.compute_dtype.
    fn = jax.jit(lambda v, f, tk, m: precision.apply(model, v, f, tk, m))
    args = (state.variables(), batch['frames'], batch['tokens'], batch['token_mask'])
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0

    def call():
      jax.block_until_ready(compiled(*args))
  else:
    compiled = train.jit_train_step(model, tx, config, mesh, shardings).lower(
        state, batch).compile()
    compile_s = time.perf_counter() - t0
    holder = [state]

    def call():  # the state is donated: carry the new one
      holder[0], metrics = compiled(holder[0], batch)
      jax.block_until_ready(metrics)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  mem = compiled.memory_analysis()
  times = timed(call, FLAGS.repeats, FLAGS.warmup)
  return dict(compile_s=compile_s, flops=float(cost.get('flops', 0.0)), times=times,
              xla_temp=int(mem.temp_size_in_bytes), clips=clips,
              frames=clips * config.data.num_frames,
              xla_flags=os.environ.get('XLA_FLAGS', ''))


def _import_rvos_jax_first():
  """rvos_jax's XLA flags apply on import: before anything creates JAX's backend."""
  import rvos_jax  # noqa: F401, PLC0415


def run_torch(setting: str, mode: str, channels_last: bool) -> dict:
  import numpy as np  # noqa: PLC0415
  import torch  # noqa: PLC0415

  from tests import parity  # noqa: PLC0415
  from tests.torch_reference import losses as ref_losses  # noqa: PLC0415
  from tests.torch_reference import model as ref_model  # noqa: PLC0415

  torch.set_num_threads(os.cpu_count())
  config, clips = setting_config(setting)
  c = config.model
  model = ref_model.MLRLSA(
      VOCAB, hidden_dim=c.hidden_dim, decoder_dim=c.decoder_dim,
      backbone_depth=c.backbone_depth, backbone_width=c.backbone_width,
      backbone_output_stride=c.backbone_output_stride, use_video_level=c.use_video_level,
      use_frame_level=c.use_frame_level, use_object_level=c.use_object_level,
      object_encoder=c.object_encoder, embedding_position=c.embedding_position,
      alignment=c.alignment, text_layers=c.text_layers,
      text_heads=c.text_heads, text_ffn_dim=c.text_ffn_dim,
      embedding_heads=c.get('embedding_heads', 1),
      text_pixel_head=c.get('text_pixel_head', False),
      video_motion=c.get('video_motion', 'none'),
      velocity_head=c.get('velocity_head', False),
      velocity_match=c.get('velocity_match', False),
      backbone_stem_pool=c.get('backbone_stem_pool', True),
      text_pixel_to_decoder=c.get('text_pixel_to_decoder', False),
      decoder_finest_stride=c.get('decoder_finest_stride', 4),
      mask_upsample=c.get('mask_upsample', 'bilinear'))
  parity.randomize_(model)  # eval(): frozen BatchNorm statistics, as in the JAX rows
  b = make_batch(config, clips)
  frames = torch.from_numpy(np.ascontiguousarray(np.moveaxis(b['frames'], -1, 2)))
  tb = {k: torch.from_numpy(v) for k, v in b.items() if k != 'frames'}
  tb['boundary'] = ref_losses.boundary_target(tb['masks'])
  tokens, token_mask = tb['tokens'].long(), tb['token_mask']
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  if mode == 'infer':
    def call():
      with torch.no_grad():
        model(frames, tokens, token_mask)
  else:
    for name, p in model.named_parameters():  # frozen BatchNorm: no gradient, as in JAX
      if name.startswith('backbone.') and ('bn' in name or 'downsample.1' in name):
        p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            weight_decay=1e-4)

    def call():
      out = model(frames, tokens, token_mask)
      loss, _ = ref_losses.total_loss(out['mask_logits'], out['boundary_logits'],
                                      out['object_logits'], out['confidence'], tb,
                                      text_pixel_logits=out['text_pixel_logits'],
                                      text_pixel_weight=config.loss.get('text_pixel_weight', 0.0),
                                      velocity=out.get('velocity'),
                                      velocity_weight=config.loss.get('velocity_weight', 0.0))
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
  times = timed(call, FLAGS.repeats, FLAGS.warmup)
  return dict(times=times, clips=clips, frames=clips * config.data.num_frames,
              threads=torch.get_num_threads())


def run_breakdown(setting: str) -> dict:
  """Where the time goes in JAX: the backbone, the pyramid heads (F_dec, F_bdry, F_seg run one
  PyramidHead each) and the whole network, each jitted alone on the setting's shapes, forward
  and forward + backward (gradient of a sum with respect to the parameters and the input)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from rvos_jax import precision  # noqa: PLC0415
  from rvos_jax.models import mlrl_sa, resnet, segmentation  # noqa: PLC0415

  config, clips = setting_config(setting)
  c, d = config.model, config.data
  n = clips * d.num_frames
  dtype = jnp.dtype(FLAGS.compute_dtype)
  rng = jax.random.key(0)
  x = jax.random.uniform(rng, (n, d.height, d.width, 3), dtype)
  stem_pool = c.get('backbone_stem_pool', True)
  backbone = resnet.ResNet(c.backbone_depth, c.backbone_width, True, c.backbone_output_stride,
                           stem_pool)
  bvars = backbone.init(rng, x)
  feats = backbone.apply(precision.cast_floating(bvars, dtype), x)  # the heads' inputs
  m = jax.random.normal(rng, (*feats['res5'].shape[:3], 3 * c.hidden_dim), dtype)
  # F_seg ends in decoder_dim channels, F_dec and F_bdry in one: time both kinds.
  levels = segmentation.decoder_levels(resnet.feature_strides(c.backbone_output_stride,
                                                               stem_pool))
  head_c = segmentation.PyramidHead(c.decoder_dim, c.decoder_dim, levels)
  head_1 = segmentation.PyramidHead(c.decoder_dim, 1, levels)
  hvars_c, hvars_1 = head_c.init(rng, m, feats), head_1.init(rng, m, feats)
  model = mlrl_sa.build_model(c, VOCAB)
  batch = make_batch(config, clips)
  margs = (jnp.asarray(batch['frames'], dtype), jnp.asarray(batch['tokens']),
           jnp.asarray(batch['token_mask']))
  mvars = model.init(rng, *margs)
  # The parts get their variables in the compute dtype, as rvos_jax.precision.apply gives them
  # to the network (a no-op in float32).
  bvars, hvars_c, hvars_1, mvars = (precision.cast_floating(v, dtype)
                                    for v in (bvars, hvars_c, hvars_1, mvars))
  parts = {
      'backbone': (lambda v, a: backbone.apply(v, a)['res5'], bvars, x),
      f'pyramid head, {c.decoder_dim} outputs (F_seg)': (
          lambda v, a: head_c.apply(v, a, feats), hvars_c, m),
      'pyramid head, 1 output (F_dec, F_bdry)': (
          lambda v, a: head_1.apply(v, a, feats), hvars_1, m),
      # Every output, so that XLA keeps every head (an unused one would be compiled away).
      'whole network': (lambda v, a: _all_outputs(model.apply(v, a, *margs[1:])), mvars,
                        margs[0]),
  }
  out = {}
  for name, (fn, variables, arg) in parts.items():
    def loss(params, a, fn=fn, variables=variables):
      return fn({**variables, 'params': params}, a).astype(jnp.float32).sum()
    row = {}
    for mode, f in (('infer', jax.jit(fn)),
                    ('train', jax.jit(jax.grad(loss, argnums=(0, 1))))):
      call_args = (variables, arg) if mode == 'infer' else (variables['params'], arg)
      compiled = f.lower(*call_args).compile()
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      times = timed(lambda c=compiled, a=call_args: jax.block_until_ready(c(*a)),
                    FLAGS.repeats, FLAGS.warmup)
      row[mode] = dict(median_s=statistics.median(times), times=times,
                       flops=float(cost.get('flops', 0.0)))
    out[name] = row
  return dict(parts=out, setting=setting, one_output_heads=2 if c.use_object_level else 1)


def _all_outputs(outputs):
  import jax.numpy as jnp  # noqa: PLC0415
  total = outputs.mask_logits.sum() + outputs.boundary_logits.sum() + outputs.confidence.sum()
  if outputs.object_logits is not None:
    total = total + outputs.object_logits.sum()
  return jnp.broadcast_to(total, (1,))


def breakdown_table(result: dict) -> str:
  parts, k = result['parts'], result['one_output_heads']
  names = list(parts)  # backbone, F_seg-like head, 1-output head, whole network
  lines = [f"Breakdown, {result['setting']} (JAX, each part jitted alone; the network runs the "
           f'backbone, 1 head like F_seg and {k} with one output):',
           '| part | forward s | GFLOP | forward+backward s | GFLOP |', '|---|---|---|---|---|']
  for name, row in parts.items():
    lines.append(f"| {name} | {row['infer']['median_s']:.3f} | {row['infer']['flops'] / 1e9:.1f} "
                 f"| {row['train']['median_s']:.3f} | {row['train']['flops'] / 1e9:.1f} |")

  def rest(mode, key):
    return (parts[names[3]][mode][key] - parts[names[0]][mode][key] - parts[names[1]][mode][key]
            - k * parts[names[2]][mode][key])
  lines.append(f"| rest (embeddings, language, alignment, F_cnn, upsampling, losses' sums) "
               f"| {rest('infer', 'median_s'):.3f} | {rest('infer', 'flops') / 1e9:.1f} "
               f"| {rest('train', 'median_s'):.3f} | {rest('train', 'flops') / 1e9:.1f} |")
  return '\n'.join(lines)


def run_ceiling() -> dict:
  """The best float32 matmul rate of this machine, in both frameworks (GFLOP/s)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  import torch  # noqa: PLC0415
  torch.set_num_threads(os.cpu_count())
  n = 2048
  a = np.random.default_rng(0).standard_normal((n, n), np.float32)
  ja = jnp.asarray(a)
  mm = jax.jit(lambda x: x @ x)
  ta = torch.from_numpy(a)
  jt = min(timed(lambda: mm(ja).block_until_ready(), 10, 2))
  tt = min(timed(lambda: ta @ ta, 10, 2))
  f = 2 * n**3 / 1e9
  return dict(jax_gflops=f / jt, torch_gflops=f / tt, peak_gflops=max(f / jt, f / tt))


def child(spec: str) -> dict:
  _import_rvos_jax_first()
  if spec == 'ceiling':
    out = run_ceiling()
  elif spec.endswith(':breakdown'):
    out = run_breakdown(spec.split(':')[0])
  else:
    setting, framework, mode = spec.split(':')
    if framework == 'jax':
      out = run_jax(setting, mode)
    elif framework in ('torch', 'torch_cl'):
      out = run_torch(setting, mode, channels_last=framework == 'torch_cl')
    else:
      raise ValueError(f'unknown framework {framework!r}')
    out.update(setting=setting, framework=framework, mode=mode)
  out['rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return out


def run_child(spec: str, allocator_choice: str = 'auto') -> dict:
  from rvos_jax import allocator  # noqa: PLC0415 -- imports nothing heavy
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'),
             TF_CPP_MIN_LOG_LEVEL='2')
  env.pop(allocator.ACTIVE, None)  # this run's choice, not the one the parent may run under
  env = allocator.environment(allocator_choice, env)
  if FLAGS.stock:
    env['RVOS_JAX_XLA_FLAGS'] = 'none'
  if FLAGS.xla_flags:
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' + FLAGS.xla_flags).strip()
  cmd = [sys.executable, '-m', 'benchmarks.model_speed', f'--child={spec}',
         f'--repeats={FLAGS.repeats}', f'--warmup={FLAGS.warmup}', f'--clips={FLAGS.clips}',
         f'--compute_dtype={FLAGS.compute_dtype}',
         f'--expressions_per_clip={FLAGS.expressions_per_clip}',
         *[f'--set={item}' for item in FLAGS.set]]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
  lines = [x for x in proc.stdout.splitlines() if x.startswith('RESULT ')]
  if proc.returncode or not lines:
    sys.exit(f'{spec} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
  return {**json.loads(lines[0][len('RESULT '):]), 'allocator': env[allocator.ACTIVE]}


def summarise(rows: list[dict], ceiling: dict) -> str:
  flops = {(r['setting'], r['mode']): r['flops'] for r in rows if r['framework'] == 'jax'}
  lines = ['| setting | mode | allocator | framework | median s | spread | frames/s | compile s '
           '| GFLOP | GFLOP/s | % peak | RSS MiB | XLA temp MiB |', '|' + '---|' * 13]
  for r in rows:
    med = statistics.median(r['times'])
    r['median_s'] = med
    r['spread'] = (max(r['times']) - min(r['times'])) / med
    r['frames_per_s'] = r['frames'] / med
    f = flops.get((r['setting'], r['mode']))
    r['gflops_per_s'] = f / 1e9 / med if f else None
    cells = [r['setting'], r['mode'], r.get('allocator', '?'), r['framework'], f'{med:.4f}',
             f"{100 * r['spread']:.0f}%",
             f"{r['frames_per_s']:.1f}",
             f"{r['compile_s']:.1f}" if 'compile_s' in r else '-',
             f'{f / 1e9:.1f}' if f else '?',
             f"{r['gflops_per_s']:.1f}" if f else '?',
             f"{100 * r['gflops_per_s'] / ceiling['peak_gflops']:.0f}%" if f else '?',
             f"{r['rss_mib']:.0f}",
             f"{r['xla_temp'] / 2**20:.0f}" if 'xla_temp' in r else '-']
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines.append('')
  lines.append(f"Matmul ceiling (2048^3 float32, best of 10): JAX {ceiling['jax_gflops']:.0f} "
               f"GFLOP/s, torch {ceiling['torch_gflops']:.0f} GFLOP/s.")
  by = {(r['setting'], r['mode'], r.get('allocator'), r['framework']): r for r in rows}
  for (setting, mode, alloc, fw), r in by.items():
    if fw != 'jax':
      continue
    for other in ('torch', 'torch_cl'):
      if (setting, mode, alloc, other) in by:
        ratio = by[(setting, mode, alloc, other)]['median_s'] / r['median_s']
        lines.append(f'JAX / {other}, {setting} {mode}, both under {alloc}: {ratio:.2f}x '
                     f"({'JAX faster' if ratio > 1 else 'torch faster'})")
  allocs = list(dict.fromkeys(r.get('allocator') for r in rows))
  for alloc in allocs[1:]:  # every allocator against the first, per framework
    for (setting, mode, a, fw), r in by.items():
      base = by.get((setting, mode, allocs[0], fw))
      if a == alloc and base:
        lines.append(f'{fw}, {setting} {mode}: {alloc} against {allocs[0]}: '
                     f"{base['median_s'] / r['median_s']:.2f}x")
  return '\n'.join(lines)


def main(argv):
  del argv
  if FLAGS.child:
    print('RESULT ' + json.dumps(child(FLAGS.child)), flush=True)
    return
  t0 = time.time()
  ceiling = run_child('ceiling')
  rows = []
  for setting in FLAGS.settings:
    for mode in FLAGS.modes:
      for choice in FLAGS.allocators:
        for framework in FLAGS.frameworks:
          rows.append(run_child(f'{setting}:{framework}:{mode}', choice))
          r = rows[-1]
          print(f"{setting} {mode} {framework} ({r['allocator']}): median "
                f"{statistics.median(r['times']):.4f} s ({time.time() - t0:.0f} s so far)",
                flush=True)
  text = summarise(rows, ceiling)
  if FLAGS.expressions_per_clip > 1:
    text = (f'JAX train rows: {FLAGS.expressions_per_clip} expressions per clip (frames/s counts '
            f'(clip, expression) frames; infer and torch rows read every row)\n') + text
  breakdowns = []
  if FLAGS.breakdown:
    for setting in FLAGS.settings:
      breakdowns.append(run_child(f'{setting}:breakdown'))
      text += '\n\n' + breakdown_table(breakdowns[-1])
  print(text)
  if FLAGS.json:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
    with open(FLAGS.json, 'w') as f:
      json.dump(dict(ceiling=ceiling, rows=rows, breakdowns=breakdowns, argv=sys.argv,
                     allocators=FLAGS.allocators,
                     stock=FLAGS.stock, compute_dtype=FLAGS.compute_dtype), f, indent=1)


if __name__ == '__main__':
  app.run(main)
