"""Module-by-module parity of the Flax network with the PyTorch reference (float32, CPU).

Small shapes with odd h, w (as 240x432 gives at res4/res5: 15x27, 8x14). Each check records its
measured max|diff| / max|ref| (the "parity figures" table at the end of the pytest run) and
states it in its assertion message when it fails.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rvos_jax.models import (
    alignment,
    embeddings,
    language,
    motion,
    position_encoding,
    resnet,
    segmentation,
)
from tests import parity
from tests.torch_reference import model as ref

B, T, H, W, D, N = 2, 3, 5, 7, 48, 9


@pytest.fixture(autouse=True)
def _seed():
  torch.manual_seed(0)


def _features(seed=0, shape=(B, T, H, W, D)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _word_mask(lengths=(9, 4)):
  return np.arange(N)[None, :] < np.asarray(lengths)[:, None]


def test_position_encodings_match_reference():
  np.testing.assert_allclose(position_encoding.sine_1d(N, D), ref.pos_1d(N, D), atol=1e-6)
  np.testing.assert_allclose(position_encoding.sine_2d(H, W, D),
                             ref.pos_2d(H, W, D).permute(1, 2, 0), atol=1e-6)
  np.testing.assert_allclose(position_encoding.sine_3d(T, H, W, D),
                             ref.pos_3d(T, H, W, D).permute(0, 2, 3, 1), atol=1e-6)
  # The encodings must tell positions apart (a constant map would pass the comparison above).
  pos = position_encoding.sine_3d(T, H, W, D).reshape(-1, D)
  assert len(np.unique(pos.round(5), axis=0)) == T * H * W


@pytest.mark.parametrize('position', ['none', 'sine'])
@pytest.mark.parametrize('level', ['video', 'frame'])
def test_level_embeddings(level, position):
  flax_cls = {'video': embeddings.VideoLevelEmbedding, 'frame': embeddings.FrameLevelEmbedding}
  torch_cls = {'video': ref.VideoLevelEmbedding, 'frame': ref.FrameLevelEmbedding}
  p = _features()
  tmod = parity.randomize_(torch_cls[level](D, position))
  fmod = flax_cls[level](position)
  out = fmod.apply(parity.port(tmod, fmod, p), p)
  expected = tmod(parity.nchw(p)).detach()
  parity.assert_outputs_close(out, parity.nhwc(expected), f'{level}-level embedding ({position})')


@pytest.mark.parametrize('heads', [2, 4])
def test_video_level_heads(heads):
  p = _features(4)
  tmod = parity.randomize_(ref.VideoLevelEmbedding(D, 'none', heads))
  fmod = embeddings.VideoLevelEmbedding('none', heads)
  out = fmod.apply(parity.port(tmod, fmod, p), p)
  expected = tmod(parity.nchw(p)).detach()
  parity.assert_outputs_close(out, parity.nhwc(expected), f'video-level heads={heads}')
  with pytest.raises(ValueError, match='embedding_heads'):
    embeddings.VideoLevelEmbedding('none', 5).init(jax.random.key(0), p)


@pytest.mark.parametrize('stride', [2, 8])
def test_rgb_difference_stream(stride):
  # 13 x 19 frames: odd sizes at every stride-2 step (7x10, 4x5, 2x3), as torch's padding=1.
  frames = np.random.default_rng(7).normal(size=(B, T, 13, 19, 3)).astype(np.float32)
  tmod = parity.randomize_(ref.RGBDifferenceStream(D, stride))
  fmod = motion.RGBDifferenceStream(D, stride)
  out = fmod.apply(parity.port(tmod, fmod, frames), frames)
  expected = tmod(parity.nchw(frames)).detach()
  assert out.shape == (B, T, -(-13 // stride), -(-19 // stride), D)
  parity.assert_outputs_close(out, parity.nhwc(expected), f'RGB-difference stream /{stride}')
  with pytest.raises(ValueError, match='power of 2'):
    motion.RGBDifferenceStream(D, 6).init(jax.random.key(0), frames)


def test_frame_differences_and_the_stream_see_the_direction():
  """x_{t+1} - x_{t-1}, one-sided at the ends, zero for one frame; a square moving right and
  the same square moving left (the clip reversed in time) give the same frames in reverse
  order, so a per-frame network cannot tell them apart, the stream can; and it starts at
  zero (its last convolution is zero-initialised), so the initial network is the paper's."""
  x = np.random.default_rng(8).normal(size=(1, 4, 2, 3, 3)).astype(np.float32)
  d = np.asarray(motion.frame_differences(x))
  np.testing.assert_allclose(d[:, 1:3], x[:, 2:4] - x[:, 0:2], atol=1e-6)
  np.testing.assert_allclose(d[:, 0], x[:, 1] - x[:, 0], atol=1e-6)
  np.testing.assert_allclose(d[:, 3], x[:, 3] - x[:, 2], atol=1e-6)
  assert not np.asarray(motion.frame_differences(x[:, :1])).any()
  clip = np.zeros((1, 5, 16, 24, 3), np.float32)
  for t in range(5):
    clip[0, t, 4:10, 2 + 3 * t:8 + 3 * t] = 1.0
  back = clip[:, ::-1].copy()
  module = motion.RGBDifferenceStream(D, 4)
  variables = module.init(jax.random.key(0), clip)
  assert not np.asarray(module.apply(variables, clip)).any()
  tmod = parity.randomize_(ref.RGBDifferenceStream(D, 4))
  variables = parity.port(tmod, module, clip)
  fwd, rev = np.asarray(module.apply(variables, clip)), np.asarray(module.apply(variables, back))
  # Frame 2 is the same image in both clips; its motion features are not the same.
  assert np.abs(fwd[0, 2] - rev[0, 2]).max() > 0.1 * np.abs(fwd[0, 2]).max()
  with pytest.raises(ValueError, match='video_motion'):
    motion.check_motion('flow')


@pytest.mark.parametrize('position,order_blind', [('none', True), ('sine', False)])
def test_video_level_embedding_sees_time_order_only_with_position(position, order_blind):
  """Eq. 1-3 as printed attend by content alone: reversing a clip in time only reverses its
  embedding, so a left-moving and a right-moving object look the same. With the 3-D encoding
  on queries and keys the reversed clip is embedded differently."""
  p = _features(3)
  module = embeddings.VideoLevelEmbedding(position)
  variables = module.init(jax.random.key(2), p)
  forward = module.apply(variables, p)
  backward = module.apply(variables, p[:, ::-1])[:, ::-1]
  diff = float(jnp.abs(forward - backward).max() / jnp.abs(forward).max())
  if order_blind:
    assert diff < 1e-5, diff
  else:
    assert diff > 1e-2, diff
  with pytest.raises(ValueError, match='embedding_position'):
    embeddings.VideoLevelEmbedding('learned').init(jax.random.key(0), p)


def test_video_level_attends_across_frames_and_frame_level_does_not():
  p = _features()
  p2 = p.copy()
  p2[:, 1] += 1.0  # change frame 1 only
  for cls, crosses in ((embeddings.VideoLevelEmbedding, True),
                       (embeddings.FrameLevelEmbedding, False)):
    variables = cls().init(jax.random.key(1), p)
    a, b = cls().apply(variables, p), cls().apply(variables, p2)
    changed = float(jnp.abs(a[:, 0] - b[:, 0]).max())
    assert (changed > 1e-3) == crosses, (cls.__name__, changed)


@pytest.mark.parametrize('kind,position', [
    ('video', 'none'), ('frame', 'none'), ('fcn', 'none'), ('video', 'sine'), ('frame', 'sine')])
def test_object_encoder(kind, position):
  p = _features(1)
  tmod = parity.randomize_(ref.ObjectEncoder(D, kind, position))
  fmod = embeddings.ObjectEncoder(kind, position)
  out = fmod.apply(parity.port(tmod, fmod, p), p)
  expected = tmod(parity.nchw(p)).detach()
  parity.assert_outputs_close(out, parity.nhwc(expected), f'object encoder ({kind}, {position})')


def test_language_encoder_and_padding():
  words = _features(2, (B, N, D))
  mask = _word_mask()
  tmod = parity.randomize_(ref.LanguageEncoder(D, 2, 4, 64))
  fmod = language.LanguageEncoder(num_layers=2, num_heads=4, ffn_dim=64)
  variables = parity.port(tmod, fmod, words, mask)
  out = fmod.apply(variables, words, mask)
  expected = tmod(torch.from_numpy(words), torch.from_numpy(mask)).detach().numpy()
  parity.assert_outputs_close(out, expected, 'language encoder')
  # Padded words are masked as keys: changing them leaves the real words' features unchanged.
  words2 = words.copy()
  words2[1, 4:] = _features(3, (N - 4, D))
  out2 = fmod.apply(variables, words2, mask)
  np.testing.assert_allclose(out2[1, :4], out[1, :4], rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(out2[1, 4:] - out[1, 4:])).max() > 1e-2  # (the test can fail)


def test_language_dropout_only_in_training():
  words, mask = _features(2, (B, N, D)), _word_mask()
  fmod = language.LanguageEncoder(num_layers=1, num_heads=4, ffn_dim=64, dropout=0.5)
  variables = fmod.init(jax.random.key(0), words, mask)
  eval1 = fmod.apply(variables, words, mask)
  np.testing.assert_array_equal(eval1, fmod.apply(variables, words, mask))
  train = fmod.apply(variables, words, mask, train=True, rngs={'dropout': jax.random.key(1)})
  assert np.abs(np.asarray(train - eval1)).max() > 1e-3


@pytest.mark.parametrize('position', ['3d', '2d'])
def test_semantic_alignment(position):
  p, s, mask = _features(4), _features(5, (B, N, D)), _word_mask()
  tmod = parity.randomize_(ref.SemanticAlignment(D, position))
  fmod = alignment.SemanticAlignment(position=position)
  variables = parity.port(tmod, fmod, p, s, mask)
  out = fmod.apply(variables, p, s, mask)
  expected = tmod(parity.nchw(p), torch.from_numpy(s), torch.from_numpy(mask)).detach()
  parity.assert_outputs_close(out, parity.nhwc(expected),
                              f'semantic alignment ({position})')
  # Padded words get zero attention: their features cannot reach M.
  s2 = s.copy()
  s2[1, 4:] += 10.0
  np.testing.assert_allclose(fmod.apply(variables, p, s2, mask), out, rtol=1e-5, atol=1e-5)


def test_sentence_fusion():
  p, s, mask = _features(4), _features(5, (B, N, D)), _word_mask()
  tmod = parity.randomize_(ref.SentenceFusion(D))
  fmod = alignment.SentenceFusion()
  out = fmod.apply(parity.port(tmod, fmod, p, s, mask), p, s, mask)
  expected = tmod(parity.nchw(p), torch.from_numpy(s), torch.from_numpy(mask)).detach()
  parity.assert_outputs_close(out, parity.nhwc(expected), 'sentence fusion (w/o alignment)')


def _pyramid_features(n=2, sizes=((20, 36), (10, 18), (5, 9), (3, 5)), chans=(8, 16, 24, 32)):
  rng = np.random.default_rng(7)
  return {f'res{i + 2}': rng.normal(size=(n, *sz, c)).astype(np.float32)
          for i, (sz, c) in enumerate(zip(sizes, chans, strict=True))}


def test_bilinear_upsampling_matches_torch():
  x = _features(8, (2, 3, 5, 4))
  for size in ((5, 9), (8, 14), (15, 27), (240, 432)):
    out = segmentation.upsample_bilinear(x, size)
    expected = torch.nn.functional.interpolate(
        parity.nchw(x), size=size, mode='bilinear', align_corners=False)
    parity.assert_outputs_close(out, parity.nhwc(expected), f'bilinear to {size}', rtol=1e-6)


def test_pyramid_head():
  feats = _pyramid_features()
  chans = {k: v.shape[-1] for k, v in feats.items()}
  x = _features(9, (2, 3, 5, D))
  tmod = parity.randomize_(ref.PyramidHead(D, chans, 16, 5))
  fmod = segmentation.PyramidHead(16, 5)
  out = fmod.apply(parity.port(tmod, fmod, x, feats), x, feats)
  expected = tmod(parity.nchw(x), {k: parity.nchw(v) for k, v in feats.items()}).detach()
  assert out.shape == (2, 20, 36, 5)
  parity.assert_outputs_close(out, parity.nhwc(expected), 'pyramid head')


def test_boundary_aware_segmentation_and_confidence():
  feats = _pyramid_features()
  chans = {k: v.shape[-1] for k, v in feats.items()}
  m = _features(10, (2, 3, 5, 3 * D))
  tmod = parity.randomize_(ref.BoundaryAwareSegmentation(3 * D, chans, 16))
  fmod = segmentation.BoundaryAwareSegmentation(16)
  e, b = fmod.apply(parity.port(tmod, fmod, m, feats, (77, 141)), m, feats, (77, 141))
  te, tb = tmod(parity.nchw(m), {k: parity.nchw(v) for k, v in feats.items()}, (77, 141))
  assert e.shape == b.shape == (2, 77, 141)
  parity.assert_outputs_close(e, te.detach(), 'BAS mask E')
  parity.assert_outputs_close(b, tb.detach(), 'BAS boundary B')

  tconf = parity.randomize_(ref.ConfidenceHead(3 * D, D))
  fconf = segmentation.ConfidenceHead(D)
  c = fconf.apply(parity.port(tconf, fconf, m), m)
  parity.assert_outputs_close(c, tconf(parity.nchw(m)).detach(), 'confidence head')


class _BatchNorm(nn.Module):
  """The backbone's norm layer on its own (resnet.batch_norm needs a parent module)."""

  frozen: bool
  train: bool

  @nn.compact
  def __call__(self, x):
    return resnet.batch_norm(self.frozen, self.train, 'bn')(x)


def _shrink_(module: torch.nn.Module, *names: str) -> torch.nn.Module:
  with torch.no_grad():
    for name in names:
      module.get_parameter(name).mul_(1e-3)
  return module


def _norm_case(norm: str):
  """-> (JAX output as a function of nothing, torch output), activations of variance ~1e-6 at
  every norm of the module. Biases before a norm shrink with the input: per-channel offsets of
  0.1 would give GroupNorm's groups (and LayerNorm's rows) a variance of ~1e-2 of their own."""
  rng = np.random.default_rng(11)
  if norm == 'group':  # the pyramid heads' conv-GroupNorm(8)-ReLU block
    x = (1e-3 * rng.normal(size=(2, 9, 11, 16))).astype(np.float32)
    tmod = _shrink_(parity.randomize_(ref.ConvNormReLU(16, 16)), 'conv.bias')
    fmod = segmentation.ConvNormReLU(16)
    variables = parity.port(tmod, fmod, x)
    return lambda: fmod.apply(variables, x), parity.nhwc(tmod(parity.nchw(x)).detach())
  if norm == 'layer':  # the language encoder's post-norm layer: norm1 and norm2
    x = (1e-3 * rng.normal(size=(B, N, D))).astype(np.float32)
    mask = _word_mask()
    tmod = _shrink_(parity.randomize_(ref.TransformerEncoderLayer(D, 4, 64)), 'attn.out.weight',
                    'attn.out.bias', 'norm1.weight', 'norm1.bias', 'ffn2.weight', 'ffn2.bias')
    fmod = language.TransformerEncoderLayer(num_heads=4, ffn_dim=64, dropout=0.0)
    variables = parity.port(tmod, fmod, x, mask, False)
    expected = tmod(torch.from_numpy(x), torch.from_numpy(mask)).detach().numpy()
    return lambda: fmod.apply(variables, x, mask, False), expected
  # The backbone's BatchNorm: frozen (running variance ~1e-6) or trained (batch variance ~1e-6).
  train = norm == 'batch_train'
  x = ((1e-3 if train else 1.0) * rng.normal(size=(4, 7, 9, 16))).astype(np.float32)
  tmod = parity.randomize_(torch.nn.ModuleDict({'bn': torch.nn.BatchNorm2d(16)}))
  if train:
    tmod.train()
  else:
    tmod['bn'].running_var.mul_(1e-6)
  fmod = _BatchNorm(frozen=not train, train=train)
  variables = parity.port(tmod, fmod, x)
  expected = parity.nhwc(tmod['bn'](parity.nchw(x)).detach())
  if train:
    return lambda: fmod.apply(variables, x, mutable=['batch_stats'])[0], expected
  return lambda: fmod.apply(variables, x), expected


@pytest.mark.parametrize('norm', ['group', 'layer', 'batch_frozen', 'batch_train'])
def test_norm_epsilon_under_tiny_variance(norm, monkeypatch):
  """torch's eps is 1e-5 for all three norms, Flax's GroupNorm / LayerNorm default 1e-6. At unit
  variance that mistake moves outputs by ~5e-6 relative and passes the 1e-4 tolerance; at a
  variance of ~1e-6 the eps dominates. Then the same comparison with every JAX eps at 1e-6
  must fail (the test can fail)."""
  run, expected = _norm_case(norm)
  parity.assert_outputs_close(run(), expected, f'{norm} norm, variance ~1e-6')
  monkeypatch.setattr(segmentation, 'GROUP_NORM_EPS', 1e-6)
  monkeypatch.setattr(language, 'LAYER_NORM_EPS', 1e-6)
  monkeypatch.setattr(resnet, 'BN_EPSILON', 1e-6)
  monkeypatch.setattr(resnet, 'FrozenBatchNorm',
                      functools.partial(resnet.FrozenBatchNorm, epsilon=1e-6))
  wrong = parity.max_rel_diff(run(), expected)
  assert wrong > 100 * parity.OUT_RTOL, f'eps 1e-6 only moved the {norm} output by {wrong:.1e}'
