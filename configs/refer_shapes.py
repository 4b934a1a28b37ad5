"""The embedded default: refer_shapes (generated on first use), CPU-sized.

A small ResNet-18 (width x0.25, no stem max-pool) trained from scratch on 64x96 clips of T=4
frames, 4 clips x 4 expressions per step; the rest of the network is the paper's, narrower
(d=48), plus the velocity terms (rvos_jax/models/motion.py). Generates the data, trains,
evaluates and writes overlays in 12-15 minutes on 2 CPU cores; motion J 0.69 and J&F 78.2 over
3 seeds, against 0.46 and 76.6 for the frame-only control (docs/motion.md, "The 15-minute
default"):

  python main.py --config configs/refer_shapes.py --workdir workdirs/refer_shapes
  python main.py --config configs/refer_shapes.py:long ...      # twice the steps
  python main.py --config configs/refer_shapes.py:previous ...  # the former default, 1000 steps
  python main.py --config configs/refer_shapes.py:motion ...    # :previous, 2000 steps + velocity
  python main.py --config configs/refer_shapes.py:smoke ...     # seconds: a tiny dataset, 2 steps

Not the paper's (docs/model_choices.md), each measured on refer_shapes: the text-to-pixel loss
(CRIS), its maps fed to the mask heads, the stem without max-pool, sub-pixel masks, an
RGB-difference stream into the video level and the velocity terms (below). Where the quality
is: docs/motion.md and docs/refer_shapes_experiments.md. Runs differ a lot between seeds (the
step at which the words start to steer the mask moves by hundreds of steps), so compare means
of seeds.
"""

from configs import default


def get_config(arg: str | None = None):
  if arg == 'smoke':
    return get_smoke_config()
  if arg == 'long':
    return get_long_config()
  if arg == 'motion':
    return get_motion_config()
  if arg == 'previous':
    return get_previous_config()
  if arg:
    raise ValueError(f'configs/refer_shapes.py takes no argument, "long", "motion", "previous" '
                     f'or "smoke", got {arg!r}')
  config = get_previous_config()
  data, model, train = config.data, config.model, config.train
  # What makes the default learn motion in its 15 minutes (docs/motion.md, "The 15-minute
  # default"): the previous recipe learns it only after ~1000 steps, so the step is made
  # cheaper and each step's words harder to satisfy without motion.
  # 4 clips x 4 expressions (16 rows, as before): the clip's text-independent part runs once for
  # its 4 expressions, so a step costs 0.48 s against 0.64 s for 8 x 2
  # (benchmarks/model_speed.py --clips=16 --expressions_per_clip=K, same run), and every clip
  # shows most of its objects as targets; a mask on every look-alike pays for none of them.
  data.expressions_per_clip = 4
  # ... and the 3 expressions beside the first are the ones whose words are most like its
  # words: a motion expression comes with its look-alike twin's, the same frames and words but
  # the motion (pipelines.expression_similarity).
  data.expression_pairing = 'similar'
  # T = 4 frames 2 apart (the previous 6): one step 0.31 s against 0.48 s at T = 6, still 3
  # frame differences for the RGB-difference stream and the velocity.
  data.num_frames = 4
  # The direction of motion supervised and matched against the words from step 0 (ours;
  # rvos_jax/models/motion.py).
  model.velocity_head = True
  model.velocity_match = True
  config.loss.velocity_weight = 0.5
  data.object_velocity = True
  # ... and the sentence's expected motion told directly which motion it names (ours;
  # losses.expected_motion_loss): without it the words bound to the velocity only after
  # ~2000 steps of this recipe (motion J 0.45 at 2000 steps, the hedge; docs/motion.md).
  config.loss.expected_motion_weight = 0.25
  config.loss.expected_motion_scale = 8.0
  # ... only on the sentences that name a motion (refer_shapes' expression kinds): for the
  # others the words do not say which way the target moves (every object moves), and the L1 to
  # a random direction costs the colour: on the appearance expressions 13-17% of the mask on a
  # same-shape object of another colour, against 0.1% without the loss (analysis.distractors).
  # 3 seeds (the query on the shared words): J&F 69.7 -> 74.2, motion J 62.6 -> 68.2.
  data.motion_kinds = ('motion',)
  # ... and read by the velocity query from its own bag of word embeddings, at 10x the learning
  # rate: the loss then moves nothing the three levels align with. Through the shared words it
  # still cost the colour in 2 seeds of 3 (11-15% of the appearance masks on a same-shape
  # look-alike); from its own words at 1x the query learned too slowly to bind the motion
  # (motion J 0.49). 3 seeds: J&F 74.2 -> 78.2, appearance 77.5 -> 82.1, motion J 68.2 -> 69.4
  # (docs/motion.md, "The expected motion's own words").
  model.velocity_query_words = 'own'
  config.optim.velocity_query_lr_multiplier = 10.0
  # ~2.5 steps/s on this project's 2-core machine: generation, training, evaluation and
  # overlays in about 15 minutes.
  train.num_steps = 2000
  train.checkpoint_every = 500
  return config


def get_previous_config():
  """The default before the motion recipe (1000 steps of 8 clips x 2 random expressions, T=6,
  no velocity terms): the base of the MeViS-layout and STCN configs, and of the figures measured
  before it (Table 3, Table 4, MeViS; docs/refer_shapes_experiments.md). ~14 min, motion J 0.43
  (the hedge)."""
  config = default.get_config()

  data = config.data
  data.name = 'refer_shapes'
  data.root = 'data/refer_shapes'
  data.generate.update(num_train_videos=400, num_valid_videos=40, num_frames=12, height=64,
                       width=96)
  data.num_frames, data.height, data.width = 6, 64, 96
  data.max_words = 12
  data.frame_stride = 2
  # Evaluation windows with the training spacing: the RGB-difference stream (below) reads
  # differences of neighbouring clip frames, 2 video frames apart in training. (The default
  # without the stream scores the same with either: 67.5 / 63.3 at stride 1 and 2.)
  data.eval_frame_stride = 2
  # Two expressions of each clip (16 rows = 8 clips x 2). The step reads each clip once: the
  # backbone, the embeddings and the object decoder run once for both expressions
  # (train.model_inputs), so a step costs 1.25x one of 8 clips x 1 (0.625 s against 0.499 s)
  # for twice the expressions, and the same frames with two targets make masking every object
  # cost. Measured in ~15 min (docs/refer_shapes_experiments.md): J&F 68.2 / 67.3 (seeds 0 / 1)
  # at 1150 steps against 66.2 / 64.6 for 8 x 1 at 1400 steps.
  data.batch_size = 16
  data.expressions_per_clip = 2
  data.eval_batch_size = 8
  data.shuffle_buffer = 256
  # Every expression once per pass; `--config.data.kind_repeats.motion=4` oversamples a kind
  # (with `--config.data.expressions_per_clip=1`).
  data.kind_repeats.update(appearance=1, motion=1, position=1, occluded=1)

  model = config.model
  model.backbone_depth, model.backbone_width = 18, 0.25
  # 64x96 frames: res5 at stride 32 would be 2x3, coarser than the objects; stride 8 gives 8x12.
  model.backbone_output_stride = 8
  # Not torchvision's stem: no max-pool, so res2..res4 keep twice the resolution
  # (docs/model_choices.md). With the pool the network learned colour and hardly shape (a linear
  # readout of shape from P: 0.31 after 1500 steps, chance 0.16;
  # rvos_jax.analysis.appearance_probe) and appearance masks hedged between same-colour
  # objects; without it 0.47, and J&F 53.0 -> 61.6 at 1500 steps (seed 0) for 17% more time
  # per step.
  model.backbone_stem_pool = False
  # Trained from scratch on a batch of 8 x 6 frames: BatchNorm statistics can be learned.
  model.frozen_bn = False
  model.hidden_dim = 48
  model.decoder_dim = 32
  model.text_layers, model.text_heads, model.text_ffn_dim = 1, 4, 96
  # Not the paper's (docs/model_choices.md): CRIS's text-to-pixel loss on every level's
  # embedding. Trained from scratch, the words start to steer the mask only after ~1000 steps;
  # this loss gives the embeddings and the language encoders a direct grounding signal.
  # Measured at 1500 steps, seeds 0 / 1: J&F 42.6 / 42.4 without, 49.7 / 47.2 with weight 1,
  # 53.0 / 46.3 with weight 3 (docs/refer_shapes_experiments.md).
  model.text_pixel_head = True
  config.loss.text_pixel_weight = 3.0
  # Not the paper's: those maps also feed the mask heads. Without it one seed's text-to-pixel
  # heads grounded the words (their loss 0.46) while its mask never left the every-object
  # plateau (J&F 39.8 at 1400 steps); with it the same seed left it at step ~500 (64.6).
  model.text_pixel_to_decoder = True
  # Not the paper's: sub-pixel masks (4 x 4 logits per stride-4 cell instead of a bilinear
  # upsampling). Objects here are ~100 pixels; the best stride-4 logit map a bilinear
  # upsampling can turn into a mask reaches J 0.91 against the ground truth
  # (docs/model_choices.md). Seed 0 at 1100 steps: J&F 69.0 -> 70.2, prec@0.9 7.7 -> 14.8,
  # same step time.
  model.mask_upsample = 'subpixel'
  # Not the paper's: an RGB-difference stream added to P before the video-level embedding
  # (rvos_jax/models/motion.py). Where the background is still, x_{t+1} - x_{t-1} is non-zero
  # only on moving objects: at 1000 steps J&F 67.5 / 63.3 -> 71.9 / 73.0 (seeds 0 / 1;
  # appearance 70.9 / 68.3 -> 77.5 / 80.3), the same step time within the machine's drift.
  model.video_motion = 'rgb_diff'

  optim = config.optim
  # No ImageNet weights here: the backbone learns at the same rate as the rest.
  optim.backbone_learning_rate = optim.learning_rate = 1e-3
  optim.warmup_steps = 100

  # §3.4's propagation (off; --config.inference.propagation=stcn turns it on for --mode eval
  # and predict): the STCN that configs/propagation_refer_shapes.py trains.
  config.inference.stcn_checkpoint = 'workdirs/propagation_refer_shapes/stcn'

  train = config.train
  # 1.27-1.38 steps/s on this project's 2-core machine (its speed drifts): generation,
  # training, evaluation and overlays in under 15 minutes on its slower days.
  train.num_steps = 1000
  train.log_every = 50
  train.eval_every = 0
  train.checkpoint_every = 250
  return config


def get_long_config():
  """Twice the default's steps (same schedule shape, stretched): ~30 min on 2 CPU cores."""
  config = get_config()
  config.train.num_steps *= 2  # 4000
  return config


def get_motion_config():
  """The first recipe that learned motion (kept so that docs/motion.md's figures reproduce):
  the previous default at 2000 steps with the direction of motion supervised and matched
  against the words (ours; rvos_jax/models/motion.py): ~27 min on 2 CPU cores. Seeds 0 / 1 /
  2: motion J 0.627 / 0.660 / 0.817 (seed 0's masks 65% on the target, 26% on its look-alike
  twin; the frame-only control at this budget hedges at 0.44), J&F 73.6 / 76.3 / 75.8
  (docs/motion.md). At 1000 steps these terms cost more than they give (J&F 56.5): with 8
  clips x 2 random expressions of 6 frames the words bind to the velocity only after ~1000
  steps.
  """
  config = get_previous_config()
  config.train.num_steps *= 2  # 2000
  config.model.velocity_head = True
  config.model.velocity_match = True
  config.loss.velocity_weight = 0.5
  config.data.object_velocity = True
  return config


def get_smoke_config():
  """A few steps on a tiny dataset: the shape of a full run in seconds (tests use it)."""
  config = _smoke(get_config())
  config.data.batch_size = 4  # one clip x 4 expressions
  return config


def get_previous_smoke_config():
  """The smoke version of get_previous_config (the MeViS-layout and STCN smoke configs)."""
  config = _smoke(get_previous_config())
  config.data.batch_size = 2  # one clip x 2 expressions
  return config


def _smoke(config):
  config.data.root = 'data/refer_shapes_smoke'
  config.data.generate.update(num_train_videos=6, num_valid_videos=3, num_frames=6, height=48,
                              width=64)
  config.data.height, config.data.width, config.data.num_frames = 48, 64, 4
  config.data.eval_batch_size = 2
  config.data.shuffle_buffer = 16
  config.train.num_steps = 2
  config.train.log_every = 1
  config.train.checkpoint_every = 1
  config.optim.warmup_steps = 1
  return config
