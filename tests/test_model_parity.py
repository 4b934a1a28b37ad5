"""The whole MLRL-SA network against the PyTorch reference: outputs, total loss (Eq. 16) and the
gradient of the loss with respect to every parameter, float32 on CPU.

Default: a CPU-sized network (ResNet-18 at width 0.25, d=48) on 2 clips x 2 frames of 80x144,
which gives odd sizes at res4/res5 (5x9, 3x5) like the paper's 240x432 (15x27, 8x14).
Slow: the paper's network (ResNet-50, d=384, N=20) on one 12-frame 240x432 clip.
"""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rvos_jax import losses, porting
from rvos_jax.models import mlrl_sa
from tests import parity
from tests.torch_reference import losses as ref_losses
from tests.torch_reference import model as ref_model

SMALL = dict(vocab_size=40, hidden_dim=48, decoder_dim=16, backbone_depth=18, backbone_width=0.25,
             text_layers=1, text_heads=4, text_ffn_dim=64)
PAPER = dict(vocab_size=3000, hidden_dim=384, decoder_dim=256, backbone_depth=50,
             backbone_width=1.0, text_layers=2, text_heads=8, text_ffn_dim=1536)


SOFTMAX_INVARIANT_BIASES = ('attn.k.bias', 'alignment.language.bias')


def make_inputs(b, t, h, w, n, vocab, lengths, seed=0):
  """Random frames in [0, 1], tokens with padding, and targets made of random ellipses."""
  rng = np.random.default_rng(seed)
  frames = rng.uniform(size=(b, t, h, w, 3)).astype(np.float32)
  token_mask = np.arange(n)[None] < np.asarray(lengths)[:, None]
  tokens = np.where(token_mask, rng.integers(2, vocab, size=(b, n)), 0).astype(np.int32)
  yy, xx = np.mgrid[:h, :w]

  def blob():
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    ry, rx = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1

  masks = np.stack([np.stack([blob() for _ in range(t)]) for _ in range(b)]).astype(np.float32)
  other = np.stack([np.stack([blob() for _ in range(t)]) for _ in range(b)]).astype(np.float32)
  frame_valid = np.ones((b, t), bool)
  frame_valid[-1, -1] = False  # a clip shorter than T: its last frame is padding
  batch = dict(frames=frames, tokens=tokens, token_mask=token_mask, masks=masks,
               object_masks=np.maximum(masks, other), frame_valid=frame_valid)
  batch['boundary'] = np.asarray(losses.boundary_target(jnp.asarray(masks)))
  # Velocity targets (pixels per frame) on the objects, for model.velocity_head.
  batch['object_velocity'] = (3 * rng.standard_normal((b, t, h, w, 2))).astype(np.float32)
  batch['velocity_valid'] = batch['object_masks'].copy()
  return batch


def build_pair(cfg, seed=0, **switches):
  cfg = {**cfg, **switches}
  torch.manual_seed(seed)
  tmodel = parity.randomize_(ref_model.MLRLSA(**cfg), seed)
  fmodel = mlrl_sa.MLRLSA(**cfg, text_dropout=0.0)
  return tmodel, fmodel


def closest_backbone_relu_input(backbone: torch.nn.Module, x: torch.Tensor) -> tuple[float, str]:
  """min |ReLU input| over the backbone's ReLUs, in float64 (the inputs' own rounding aside).

  An input within ~1e-6 of 0 lands on either side under float32 rounding, and each framework's
  float32 gradient is then the exact gradient of a slightly different function: with
  small_inputs at seed 0, one res4 ReLU input at 1.5e-7 (layer3.1's last ReLU) put the JAX
  gradient of layer3.1 5e-3 (relative) away from torch's in the w/o-alignment variant, while
  JAX and torch agreed to 6e-8 in float64 and torch float32 sat 1e-6 from float64. A failing
  gradient check reports this figure.
  """
  backbone = copy.deepcopy(backbone).double()
  closest = []
  for name, m in backbone.named_modules():
    if isinstance(m, torch.nn.ReLU):
      m.register_forward_pre_hook(
          lambda _, inp, name=name: closest.append((inp[0].abs().min().item(), name)))
  with torch.no_grad():
    backbone(x.double())
  return min(closest)


def run_parity(cfg, inputs, check_grads=True, **switches):
  tmodel, fmodel = build_pair(cfg, **switches)
  args = (inputs['frames'], inputs['tokens'], inputs['token_mask'])
  variables = parity.port(tmodel, fmodel, *args)

  # Outputs.
  out = fmodel.apply(variables, *args)
  tframes = torch.from_numpy(np.ascontiguousarray(np.moveaxis(inputs['frames'], -1, 2)))
  tbatch = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
  backbone_input = []
  hook = tmodel.backbone.register_forward_pre_hook(lambda _, inp: backbone_input.append(inp[0]))
  tout = tmodel(tframes, tbatch['tokens'].long(), tbatch['token_mask'])
  hook.remove()
  for name in ('mask_logits', 'boundary_logits', 'object_logits', 'confidence',
               'text_pixel_logits', 'velocity', 'expected_velocity'):
    if tout[name] is None:
      assert getattr(out, name) is None
      continue
    parity.assert_outputs_close(getattr(out, name), tout[name].detach(), f'model {name}')

  # Total loss (Eq. 16, plus the text-to-pixel loss when its heads are on) and its gradients.
  text_pixel_weight = 0.7 if switches.get('text_pixel_head') else 0.0
  velocity_weight = 0.4 if switches.get('velocity_head') else 0.0
  motion_weight = 0.3 if switches.get('velocity_match') else 0.0

  def loss_fn(params):
    o = fmodel.apply({**variables, 'params': params}, *args)
    return losses.total_loss(o, inputs, text_pixel_weight=text_pixel_weight,
                             velocity_weight=velocity_weight,
                             expected_motion_weight=motion_weight,
                             expected_motion_scale=8.0)[0]

  loss, grads = jax.value_and_grad(loss_fn)(variables['params'])
  tloss, _ = ref_losses.total_loss(tout['mask_logits'], tout['boundary_logits'],
                                   tout['object_logits'], tout['confidence'], tbatch,
                                   text_pixel_logits=tout['text_pixel_logits'],
                                   text_pixel_weight=text_pixel_weight,
                                   velocity=tout['velocity'], velocity_weight=velocity_weight,
                                   expected_velocity=tout['expected_velocity'],
                                   expected_motion_weight=motion_weight,
                                   expected_motion_scale=8.0)
  parity.assert_loss_close(loss, tloss.item(), 'total loss')
  if not check_grads:
    return
  tloss.backward()
  tgrads = {k: p.grad.numpy() for k, p in tmodel.named_parameters() if p.grad is not None}
  flat = porting.flax_to_torch({'params': grads})
  assert flat, 'no gradients'
  for key, g in flat.items():
    assert key in tgrads, f'{key}: has a JAX gradient but no torch gradient'
    if key.endswith(SOFTMAX_INVARIANT_BIASES):
      # Exactly zero in exact arithmetic: a bias on the key side of a softmax (K in
      # attention, S' in Eq. 10) adds the same q.b to every logit of a row, which the softmax
      # cancels. Both sides hold rounding noise only; check that it is noise.
      scale = np.linalg.norm(flat[key[:-len('bias')] + 'weight'])
      assert max(np.linalg.norm(g), np.linalg.norm(tgrads[key])) <= 1e-4 * scale, key
      continue
    try:
      parity.assert_grads_close(g, tgrads[key], f'gradient of {key}')
    except AssertionError as e:
      gap, relu = closest_backbone_relu_input(tmodel.backbone, backbone_input[0].detach())
      raise AssertionError(f'{e}\n(the input of backbone ReLU {relu} is {gap:.1e} from 0 in '
                           f'float64; see closest_backbone_relu_input)') from e
  # Every trainable torch parameter outside the frozen BatchNorms has a JAX counterpart.
  bn = {k for k in tgrads if k.startswith('backbone.') and ('bn' in k or 'downsample.1' in k)}
  assert set(tgrads) - bn == set(flat), sorted(set(tgrads) - bn ^ set(flat))


@functools.lru_cache(maxsize=1)
def small_inputs():
  # seed 1: seed 0 puts two backbone ReLU inputs within 1.5e-7 of 0 (closest_backbone_relu_input).
  return make_inputs(2, 2, 80, 144, 7, SMALL['vocab_size'], lengths=(7, 3), seed=1)


def test_full_model_small():
  run_parity(SMALL, small_inputs())


# Gradients for the variants whose parameters, or the module holding them, no other gradient
# test reaches: SentenceFusion (w/o alignment), the FCN and the frame-level object encoders,
# the sine positions. (The JAX gradient is taken for every variant anyway, so these add
# only torch's backward and the comparison.)
GRAD_VARIANTS = (dict(alignment='none'), dict(object_encoder='fcn'), dict(object_encoder='frame'),
                 dict(embedding_position='sine'))


@pytest.mark.parametrize('switches', [
    dict(use_video_level=False),
    dict(use_frame_level=False),
    dict(use_object_level=False),
    dict(object_encoder='frame'),
    dict(object_encoder='fcn'),
    dict(alignment='none'),
    dict(embedding_position='sine'),
    dict(embedding_heads=4, embedding_position='sine'),
    dict(embedding_heads=4, object_encoder='frame'),
    dict(backbone_output_stride=8),
    dict(backbone_output_stride=8, backbone_stem_pool=False),
    dict(backbone_output_stride=8, backbone_stem_pool=False, decoder_finest_stride=2),
    dict(mask_upsample='subpixel'),
], ids=lambda s: ','.join(f'{k}={v}' for k, v in s.items()))
def test_ablation_variants_small(switches):
  run_parity(SMALL, small_inputs(), check_grads=switches in GRAD_VARIANTS, **switches)


def test_text_pixel_heads_small():
  # Gradients included: the auxiliary loss reaches the embeddings and the language encoders.
  run_parity(SMALL, small_inputs(), text_pixel_head=True)


def test_text_pixel_maps_into_the_decoder_small():
  # Gradients included: the mask loss now reaches the text-to-pixel heads through the decoder.
  run_parity(SMALL, small_inputs(), text_pixel_head=True, text_pixel_to_decoder=True,
             backbone_output_stride=8, backbone_stem_pool=False)


def test_rgb_difference_stream_small():
  # Gradients included: the stream adds to P on the video level's path only (motion.py).
  run_parity(SMALL, small_inputs(), video_motion='rgb_diff', backbone_output_stride=8,
             backbone_stem_pool=False)


def test_velocity_match_small():
  # Gradients included: the velocity loss reaches the video-level embedding and the stream;
  # the video text-to-pixel map reads the velocity, and the mask heads read that map.
  run_parity(SMALL, small_inputs(), video_motion='rgb_diff', velocity_head=True,
             velocity_match=True, text_pixel_head=True, text_pixel_to_decoder=True)


def test_subpixel_masks_small():
  # Gradients included: depth_to_space and the crop to an h, w that are not multiples of the
  # heads' stride 4 (res2 at stride 2 without the stem pool) are on the loss's path.
  run_parity(SMALL, make_inputs(2, 2, 78, 142, 7, SMALL['vocab_size'], lengths=(7, 3)),
             mask_upsample='subpixel', text_pixel_head=True,
             text_pixel_to_decoder=True, backbone_output_stride=8, backbone_stem_pool=False)


@pytest.mark.slow  # ~1 min; ResNet-50 parity alone stays in the default suite (test_resnet.py)
def test_resnet50_backbone_small():
  cfg = {**SMALL, 'backbone_depth': 50, 'backbone_width': 1.0}
  run_parity(cfg, make_inputs(1, 2, 67, 93, 5, SMALL['vocab_size'], lengths=(4,)),
             check_grads=False)


@pytest.mark.slow
def test_paper_model_full_size():
  """The paper's setting: T=12 frames of 240x432, ResNet-50, d=384, N=20."""
  inputs = make_inputs(1, 12, 240, 432, 20, PAPER['vocab_size'], lengths=(11,))
  inputs['frame_valid'][0, 10:] = False
  run_parity(PAPER, inputs)


@pytest.mark.parametrize('stop', ['words', 'sentence'])
def test_expected_motion_stop_gradient_small(stop):
  """expected_motion_stop_gradient: the same expected motion (the same weights read twice),
  but its gradient stops below the query: 'words' at the shared word embeddings (it still
  reaches the video language encoder), 'sentence' at the sentence features (it reaches the
  query's map alone). With 'none' it reaches the embeddings too."""
  switches = dict(video_motion='rgb_diff', velocity_head=True, velocity_match=True,
                  text_pixel_head=True, text_pixel_to_decoder=True)
  inputs = small_inputs()
  args = (inputs['frames'], inputs['tokens'], inputs['token_mask'])
  _, plain = build_pair(SMALL, **switches)
  variables = plain.init(jax.random.key(0), *args)
  stopped = plain.clone(expected_motion_stop_gradient=stop)
  grads = {}
  for name, model in (('plain', plain), ('stopped', stopped)):
    def expected(params, model=model):
      return model.apply({**variables, 'params': params}, *args).expected_velocity.sum()
    grads[name] = jax.grad(expected)(variables['params'])
  out_p, out_s = (m.apply(variables, *args).expected_velocity for m in (plain, stopped))
  np.testing.assert_allclose(np.asarray(out_p), np.asarray(out_s), rtol=1e-6, atol=1e-6)
  norm = lambda tree: float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(tree)))
  assert norm(grads['plain']['word_embedding']) > 0
  assert norm(grads['plain']['video_language']) > 0
  assert norm(grads['stopped']['word_embedding']) == 0
  assert (norm(grads['stopped']['video_language']) > 0) == (stop == 'words')
  query = grads['stopped']['video_text_pixel']['velocity_query']
  assert norm(query) > 0
  # Below the query nothing of the text-to-pixel head (its sentence/pixel maps) is reached.
  others = {k: v for k, v in grads['stopped']['video_text_pixel'].items() if k != 'velocity_query'}
  assert norm(others) == 0


def test_expected_motion_stop_gradient_checked():
  with pytest.raises(ValueError, match="expected_motion_stop_gradient must be"):
    _, model = build_pair(SMALL, video_motion='rgb_diff', velocity_head=True,
                          velocity_match=True, text_pixel_head=True)
    model = model.clone(expected_motion_stop_gradient='all')
    inputs = small_inputs()
    model.init(jax.random.key(0), inputs['frames'], inputs['tokens'], inputs['token_mask'])


def test_velocity_query_own_words_small():
  """velocity_query_words='own': the query is Dense(mean of its own word embeddings) (checked
  by hand from the parameters), the expected motion's gradient reaches those two and nothing
  else, and the velocity match still moves the video level's text-to-pixel logits."""
  switches = dict(video_motion='rgb_diff', velocity_head=True, velocity_match=True,
                  text_pixel_head=True, text_pixel_to_decoder=True)
  inputs = small_inputs()
  args = (inputs['frames'], inputs['tokens'], inputs['token_mask'])
  _, plain = build_pair(SMALL, **switches)
  own = plain.clone(velocity_query_words='own')
  variables = own.init(jax.random.key(0), *args)
  params = variables['params']
  out = own.apply(variables, *args)
  table = np.asarray(params['velocity_query_embedding']['embedding'])
  mask = np.asarray(inputs['token_mask'], np.float32)[..., None]
  bag = (table[np.asarray(inputs['tokens'])] * mask).sum(1) / np.maximum(mask.sum(1), 1)
  dense = params['video_text_pixel']['velocity_query']
  by_hand = bag @ np.asarray(dense['kernel']) + np.asarray(dense['bias'])
  np.testing.assert_allclose(np.asarray(out.expected_velocity), by_hand[:, :2], rtol=1e-5,
                             atol=1e-6)

  def expected(p):
    return own.apply({**variables, 'params': p}, *args).expected_velocity.sum()
  grads = jax.grad(expected)(params)
  norm = lambda tree: float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(tree)))
  reached = {k for k, v in grads.items() if norm(v) > 0}
  assert reached == {'velocity_query_embedding', 'video_text_pixel'}, reached
  assert set(k for k, v in grads['video_text_pixel'].items() if norm(v) > 0) == {'velocity_query'}
  # The query enters the logits: another query table changes them.
  moved = jax.tree.map(lambda x: x, params)
  moved['velocity_query_embedding'] = {'embedding': params['velocity_query_embedding'][
      'embedding'] * 3.0}
  out_moved = own.apply({**variables, 'params': moved}, *args)
  assert not np.allclose(np.asarray(out.text_pixel_logits[0]),
                         np.asarray(out_moved.text_pixel_logits[0]))
  with pytest.raises(ValueError, match="must stay 'none'"):
    own.clone(expected_motion_stop_gradient='words').init(jax.random.key(0), *args)
