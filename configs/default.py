"""The paper's setting (§3.4): ResNet-50, T=12 frames at 240x432, d=384, N=20 words.

Other configs import this one and override what differs (big_vision style):
  python main.py --config configs/default.py --config.model.use_video_level=False ...
"""

import ml_collections

from data_pipelines.config import get_data_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Every field is documented in data_pipelines/config.py; the paper's T=12, 240x432, N=20.
  config.data = get_data_config()
  config.data.name = 'refer_youtube_vos'

  config.model = model = ml_collections.ConfigDict()
  model.backbone_depth = 50
  model.backbone_width = 1.0  # width multiplier; <1 only for CPU-sized configs
  # 32 as in the paper (res5 of 240x432 is 8x14); 16 or 8 dilate layer4 (and layer3), for the
  # small inputs of CPU-sized configs where res5 would be a 2x3 map.
  model.backbone_output_stride = 32
  model.backbone_stem_pool = True  # torchvision's stem; False drops its max-pool (small frames)
  # The heads read res2..res5 (Eq. 6, 12-13) down to this stride; 2 keeps res2 without the pool.
  model.decoder_finest_stride = 4
  # E and B from the heads' stride to H x W: 'bilinear', or 'subpixel' (ours: r x r logits per
  # cell, for small frames; docs/model_choices.md).
  model.mask_upsample = 'bilinear'
  model.frozen_bn = True  # batch 2 per device is too small to train BatchNorm
  # Orbax checkpoint written by `python -m rvos_jax.port_resnet50` (ImageNet weights); '' = random.
  model.backbone_init = ''
  model.hidden_dim = 384  # d
  model.decoder_dim = 256  # channels of the pyramid heads (the paper does not give it)
  # Table 3's switches.
  model.use_video_level = True
  model.use_frame_level = True
  model.use_object_level = True
  model.object_encoder = 'video'  # 'video' | 'frame' | 'fcn'
  # Position in the embeddings' self-attention (Eq. 1-4): 'none' as printed (content only: the
  # video-level embedding cannot tell a clip from its time reversal) or 'sine' (DETR / VisTR,
  # which the paper builds on: sine encodings on queries and keys; models/embeddings.py).
  model.embedding_position = 'none'
  # Heads of the embeddings' self-attention: 1 as printed (Eq. 1-3); DETR / VisTR use 8.
  model.embedding_heads = 1
  # Ours: 'rgb_diff' adds an RGB-difference stream to P before Eq. 1 (rvos_jax/models/motion.py).
  model.video_motion = 'none'
  # Ours: a velocity read linearly from the video-level embedding, trained by
  # loss.velocity_weight against the masks' object velocities (data.object_velocity).
  model.velocity_head = False
  # Ours: the video text-to-pixel map also matches the sentence's expected motion with that
  # velocity (rvos_jax/models/alignment.py); needs velocity_head and text_pixel_head.
  model.velocity_match = False
  # Ours: where loss.expected_motion_weight's gradient stops: 'none', 'words' (not into the
  # word embeddings the three levels share) or 'sentence' (the velocity query's map only).
  model.expected_motion_stop_gradient = 'none'
  # Ours: the velocity query reads 'video' (the video language encoder's words) or 'own' (its
  # own bag of word embeddings, read by nothing else).
  model.velocity_query_words = 'video'
  model.alignment = 'dsa'  # 'dsa' | 'none'
  # Each of the three language Transformers (§3.2; depth and heads are not in the paper).
  model.text_layers = 2
  model.text_heads = 8
  model.text_ffn_dim = 1536
  model.text_dropout = 0.1
  # Mixed precision (rvos_jax/precision.py): 'bfloat16' computes in bf16 on GPUs and TPUs with
  # float32 parameters, optimizer and losses. float32 on CPU: bf16 is slower without AMX.
  model.compute_dtype = 'float32'
  # Not in the paper: a text-to-pixel head per level (CRIS), trained by loss.text_pixel_weight.
  model.text_pixel_head = False
  # Not in the paper: those heads' maps also feed the boundary and segmentation heads (one
  # channel per level beside M); needs text_pixel_head.
  model.text_pixel_to_decoder = False

  config.loss = loss = ml_collections.ConfigDict()
  loss.alpha = 0.2  # boundary weight in L_instance (Eq. 14)
  loss.beta = 0.1  # confidence weight (Eq. 16)
  loss.focal_alpha = 0.25
  loss.focal_gamma = 2.0
  # Not in the paper: weight of the auxiliary text-to-pixel loss (CRIS) on the heads that
  # model.text_pixel_head adds; 0 = the paper's Eq. 16.
  loss.text_pixel_weight = 0.0
  # Ours: L1 on model.velocity_head's velocities (rvos_jax/losses.py); needs
  # data.object_velocity.
  loss.velocity_weight = 0.0
  # Ours: L1 between the velocity match's expected motion of the sentence and expected_motion_scale
  # times the referred object's mean velocity in cells per frame (rvos_jax/losses.py,
  # expected_motion_loss); needs model.velocity_match and data.object_velocity.
  loss.expected_motion_weight = 0.0
  loss.expected_motion_scale = 4.0

  config.optim = optim = ml_collections.ConfigDict()
  # The paper prints "1e-4 for backbone, 1e-5 for the remaining part"; nearly every RVOS code
  # base uses the reverse (backbone lower), and so do we. Swap the two to follow the text.
  optim.backbone_learning_rate = 1e-5
  optim.learning_rate = 1e-4
  # Ours: the velocity query's parameters (model.velocity_query_words='own': its word
  # embeddings and linear map) learn at this multiple of learning_rate; 1 = no third group.
  optim.velocity_query_lr_multiplier = 1.0
  optim.weight_decay = 1e-4  # not on biases and normalisation scales
  optim.b1, optim.b2 = 0.9, 0.999
  # Adam's epsilon (optax's and PyTorch's default). A parameter whose exact gradient is 0 (a conv
  # bias before a GroupNorm) receives rounding noise, which Adam turns into steps of up to lr:
  # such parameters differ between device counts (tests/test_scale_out.py raises eps to compare).
  optim.eps = 1e-8
  optim.schedule = 'cosine'  # after warmup: 'cosine' (to final_lr_fraction) or 'constant'
  optim.warmup_steps = 1000
  optim.final_lr_fraction = 0.1
  optim.grad_clip_norm = 1.0  # global norm; 0 = off
  # Batch: config.data.batch_size clips per process (the paper: 2 per GPU on 4 GPUs).

  config.train = train = ml_collections.ConfigDict()
  train.num_steps = 100_000
  train.log_every = 50
  train.eval_every = 10_000  # 0 = only at the end
  train.checkpoint_every = 1000
  train.max_to_keep = 3
  train.final_eval = True  # evaluate (and write overlays) after the last step
  # Start from another run's parameters (fine-tuning): its workdir or checkpoints/ dir.
  train.init_from = ''

  # Inference (--mode eval / predict; training's own evaluations never propagate). §3.4 / Table
  # 4: 'stcn' propagates each expression's most confident mask through its video with STCN
  # (rvos_jax/propagation.py), from stcn_checkpoint (python -m rvos_jax.port_stcn, or STCN
  # trained here). STCN's settings: a memory frame every mem_every frames from the reference,
  # the top_k affinities; the bank holds the reference and at most max_memory_frames more (the
  # oldest replaced), so long videos stay within memory; frames shrunk to a shorter side of
  # short_side (STCN's 480p).
  config.inference = inference = ml_collections.ConfigDict()
  inference.propagation = 'none'
  inference.stcn_checkpoint = ''
  inference.mem_every = 5
  inference.top_k = 20
  inference.max_memory_frames = 16
  inference.short_side = 480

  # Devices (rvos_jax/sharding.py, README "Scaling out"). A (data, model) mesh over all devices
  # of all processes; -1 = the devices the other axis leaves. The batch is split over both axes
  # (every device gets distinct clips); 'model' also shards large parameters and their Adam
  # moments (FSDP), 'data' replicates them. model=1: plain data parallelism.
  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1
  mesh.model = 1
  config.sharding = shard = ml_collections.ConfigDict()
  # Parameters (and batch statistics) under this many bytes stay replicated; larger ones are
  # split over 'model' on their largest dimension divisible by its size. At the paper's setting
  # 256 KiB leaves 0.6% of the parameter bytes replicated (1 MiB would leave 16%) and spares the
  # biases and normalisation vectors an all-gather each, for nothing.
  shard.min_bytes = 1 << 18
  # Overrides, first match wins: (regex searched in the '/'-joined parameter path, spec), e.g.
  # (('^text_.*/embedding$', ('model', None)), ('^backbone/conv1/', ())); () = replicated.
  shard.rules = ()

  # Multi-host start-up (rvos_jax.sharding.initialize_distributed): 'auto' initializes
  # jax.distributed when the fields below or the environment (Slurm srun, Open MPI, GKE TPU,
  # JAX_COORDINATOR_ADDRESS) say there are several processes; 'always' (Cloud TPU pod slices:
  # JAX finds the rest) or 'never'. ''/0/-1 = left to JAX's detection.
  config.distributed = dist = ml_collections.ConfigDict()
  dist.initialize = 'auto'
  dist.coordinator_address = ''  # 'host:port' of process 0
  dist.num_processes = 0
  dist.process_id = -1
  dist.initialization_timeout = 300  # seconds to wait for every process to join

  config.seed = 0
  return config
