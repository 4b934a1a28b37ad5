"""MLRL-SA: the whole network of Wu et al., CVPR 2022 (Fig. 2).

frames (B, T, H, W, 3) in [0, 1], tokens (B*K, N), token_mask (B*K, N): K >= 1 expressions
per clip, each clip's K next to each other (the text-independent part runs once per clip)
  -> ResNet res2..res5 -> 1x1 reduce (res5 -> d) = P            (§3.1)
  -> video / frame / object level embeddings                      (Eq. 1-7)
  -> one language encoder per level, semantic alignment each      (Eq. 8-11)
  -> concat M = [M_video, M_frame, M_object] on channels          (§3.2 end)
  -> boundary-aware segmentation (E, B) and confidence head (C)   (Eq. 12-13, §3.4)
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from rvos_jax.models.alignment import SemanticAlignment, SentenceFusion, TextPixelHead
from rvos_jax.models.embeddings import FrameLevelEmbedding, ObjectEncoder, VideoLevelEmbedding
from rvos_jax.models.language import LanguageEncoder
from rvos_jax.models.motion import RGBDifferenceStream, check_motion
from rvos_jax.models.outputs import ModelOutputs
from rvos_jax.models.resnet import ResNet, feature_strides
from rvos_jax.models.segmentation import (
    BoundaryAwareSegmentation,
    ConfidenceHead,
    PyramidHead,
    decoder_levels,
    upsample_bilinear,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Switches that were tried, measured nothing and were removed (docs/refer_shapes_experiments.md
# keeps the findings), with the value that is what the network always does now.
REMOVED_SWITCHES = {'alignment_fusion': 'add', 'video_temporal_kernel': 0}


class MLRLSA(nn.Module):
  """The network. Each level, the alignment and the object-encoder variant are switchable
  (Table 3's ablations); at least one level must be on.

  Attributes:
    vocab_size: words in the vocabulary (0 = <pad>, 1 = <unk>).
    hidden_dim: d, the feature width shared by vision and language (paper: 384).
    decoder_dim: channels of the pyramid heads (divisible by 8 for GroupNorm(8)).
    backbone_depth / backbone_width: ResNet depth (paper: 50) and width multiplier.
    backbone_output_stride: 32 (paper); 16 / 8 dilate res5 (and res4) for small inputs.
    backbone_stem_pool: torchvision's stem max-pool (paper); False keeps twice the resolution
      in res2..res5 for small frames (resnet.ResNet).
    mask_upsample: how E and B reach H x W from the heads' stride: 'bilinear' (the paper's
      usual reading) or 'subpixel' (ours: r*r logits per cell laid out as an r x r patch;
      segmentation.BoundaryAwareSegmentation).
    decoder_finest_stride: the pyramid heads read the backbone features down to this stride
      (segmentation.decoder_levels): 4 reads res2..res5 with the stem pool, as Eq. 6 and 12-13
      print; without the pool res2 is at stride 2 and only 2 reads it (heads at twice the
      resolution, four times the cost of their last block).
    frozen_bn: keep the backbone's BatchNorm statistics and affine fixed.
    use_video_level / use_frame_level / use_object_level: the three levels of §3.1.
    object_encoder: 'video' (paper), 'frame' or 'fcn'.
    embedding_position: 'none' (Eq. 1-4 as printed: attention by content only, blind to time
      order) or 'sine' (DETR / VisTR: sine encodings on the embeddings' queries and keys).
    embedding_heads: attention heads of the video-, frame- and object-level embeddings (1 as
      printed; more as in DETR / VisTR, see embeddings.PixelSelfAttention).
    video_motion: ours, 'none' = as printed; 'rgb_diff' adds an RGB-difference stream of the
      frames to P before the video-level embedding (motion.RGBDifferenceStream).
    velocity_head: ours: a linear map from the video-level embedding to the velocity of the
      object at each cell, trained by loss.velocity_weight (motion.py, "Velocity").
    velocity_match: ours: the video level's text-to-pixel map also scores the sentence's
      expected motion against that velocity (alignment.TextPixelHead; needs velocity_head and
      text_pixel_head).
    expected_motion_stop_gradient: ours: where loss.expected_motion_weight's gradient stops on
      its way from outputs.expected_velocity (the velocity match's query) into the text side:
      'none' (everything below it), 'words' (the video language encoder and the query, not the
      word embeddings the three levels share) or 'sentence' (the query's linear map only; the
      sentence features it reads are shaped by the other losses alone).
    velocity_query_words: ours: what the velocity match's query reads: 'video' (the mean of the
      video language encoder's word features) or 'own' (the mean of its own word embeddings, a
      bag of words that no other part reads, so neither the velocity match nor
      loss.expected_motion_weight moves the features the three levels align with).
    alignment: 'dsa' (the paper's dynamic semantic alignment) or 'none' (Table 3 ablation).
    text_layers / text_heads / text_ffn_dim / text_dropout: each language Transformer.
    compute_dtype: 'float32', 'bfloat16' or 'float16': read by rvos_jax.precision.apply, which
      casts the variables and frames; the module itself follows its input's dtype.
    text_pixel_head: ours, not the paper's: a text-to-pixel logit map per level (CRIS) that
      loss.text_pixel_weight trains (alignment.TextPixelHead); inference does not read it,
      unless text_pixel_to_decoder.
    text_pixel_to_decoder: ours: the text-to-pixel maps (one channel per level) join M as the
      input of the boundary and segmentation heads (not the confidence head's), so the mask
      reads the grounding those maps learn directly instead of only through Eq. 11's sum.
  """

  vocab_size: int
  hidden_dim: int = 384
  decoder_dim: int = 256
  backbone_depth: int = 50
  backbone_width: float = 1.0
  backbone_output_stride: int = 32
  backbone_stem_pool: bool = True
  decoder_finest_stride: int = 4
  mask_upsample: str = 'bilinear'
  frozen_bn: bool = True
  use_video_level: bool = True
  use_frame_level: bool = True
  use_object_level: bool = True
  object_encoder: str = 'video'
  embedding_position: str = 'none'
  embedding_heads: int = 1
  video_motion: str = 'none'
  velocity_head: bool = False
  velocity_match: bool = False
  expected_motion_stop_gradient: str = 'none'
  velocity_query_words: str = 'video'
  alignment: str = 'dsa'
  text_layers: int = 2
  text_heads: int = 8
  text_ffn_dim: int = 1536
  text_dropout: float = 0.1
  compute_dtype: str = 'float32'
  text_pixel_head: bool = False
  text_pixel_to_decoder: bool = False

  def _align(self, name: str, position: str):
    if self.alignment == 'dsa':
      return SemanticAlignment(position=position, name=name)
    if self.alignment == 'none':
      return SentenceFusion(name=name)
    raise ValueError(f"model.alignment must be 'dsa' or 'none', got {self.alignment!r}")

  def _language(self, name: str):
    return LanguageEncoder(self.text_layers, self.text_heads, self.text_ffn_dim,
                           self.text_dropout, name=name)

  @nn.compact
  def __call__(self, frames: jax.Array, tokens: jax.Array, token_mask: jax.Array,
               train: bool = False) -> ModelOutputs:
    """frames (B, T, H, W, 3); tokens, token_mask (B*K, N): K expressions of each clip, next to
    each other. What does not read the words (backbone, P, the three embeddings, the object
    decoder; Eq. 1-7) runs once per clip; the outputs have B*K rows, the same numbers as
    repeating each clip K times would give (BatchNorm's batch statistics included)."""
    chex.assert_rank([frames, tokens, token_mask], [5, 2, 2])
    chex.assert_equal_shape([tokens, token_mask])
    b, t, height, width, _ = frames.shape
    k, rest = divmod(tokens.shape[0], b)
    if rest or not k:
      raise ValueError(f'MLRL-SA: {tokens.shape[0]} expressions for {b} clips; expected K >= 1 '
                       f'per clip (B*K token rows)')
    bk = b * k

    def per_expression(x, frame_rows=False):
      """(B, ...) -> (B*K, ...), each clip's row K times; frame_rows: (B*T, ...) rows."""
      if k == 1:
        return x
      if frame_rows:
        return jnp.repeat(x.reshape(b, t, *x.shape[1:]), k, axis=0).reshape(bk * t, *x.shape[1:])
      return jnp.repeat(x, k, axis=0)
    if not (self.use_video_level or self.use_frame_level or self.use_object_level):
      raise ValueError('MLRL-SA needs at least one of the video, frame and object levels.')
    d = self.hidden_dim
    position, heads = self.embedding_position, self.embedding_heads

    dtype = frames.dtype  # float32, or the compute dtype of rvos_jax.precision.apply
    x = (frames.reshape(b * t, height, width, 3) - jnp.asarray(IMAGENET_MEAN, dtype)
         ) / jnp.asarray(IMAGENET_STD, dtype)
    feats = ResNet(self.backbone_depth, self.backbone_width, self.frozen_bn,
                   self.backbone_output_stride, self.backbone_stem_pool, name='backbone')(
                       x, train=train)
    p = nn.Conv(d, (1, 1), name='reduce')(feats['res5'])  # §3.1: 1x1 conv c -> d
    h, w = p.shape[1:3]
    p = p.reshape(b, t, h, w, d)
    strides = feature_strides(self.backbone_output_stride, self.backbone_stem_pool)
    pyramid = decoder_levels(strides, self.decoder_finest_stride)

    token_mask = token_mask.astype(bool)
    words = nn.Embed(self.vocab_size, d, name='word_embedding')(tokens)
    levels = []
    text_pixel = []
    object_logits = velocity = expected_velocity = None
    check_motion(self.video_motion)
    if self.expected_motion_stop_gradient not in ('none', 'words', 'sentence'):
      raise ValueError("model.expected_motion_stop_gradient must be 'none', 'words' or "
                       f"'sentence', got {self.expected_motion_stop_gradient!r}")
    if self.velocity_query_words not in ('video', 'own'):
      raise ValueError("model.velocity_query_words must be 'video' or 'own', got "
                       f"{self.velocity_query_words!r}")
    if self.velocity_query_words == 'own' and self.expected_motion_stop_gradient != 'none':
      raise ValueError("model.velocity_query_words='own' reads no shared feature: "
                       "model.expected_motion_stop_gradient must stay 'none'")
    if self.velocity_head and not self.use_video_level:
      raise ValueError('model.velocity_head reads the video level: it needs use_video_level')
    if self.velocity_match and not (self.velocity_head and self.text_pixel_head):
      raise ValueError('model.velocity_match needs model.velocity_head and model.text_pixel_head')
    if self.use_video_level:
      p_in = p
      if self.video_motion == 'rgb_diff':
        p_in = p + RGBDifferenceStream(d, strides['res5'], name='video_motion')(
            x.reshape(b, t, height, width, 3))
        chex.assert_equal_shape([p_in, p])
      p_clip = VideoLevelEmbedding(position, heads, name='video_embedding')(p_in)
      p_video = per_expression(p_clip)  # Eq. 1-3
      if self.velocity_head:
        velocity = per_expression(nn.Dense(2, name='video_velocity')(p_clip))
      video_language = self._language('video_language')
      s_video = video_language(words, token_mask, train)
      levels.append(self._align('video_alignment', '3d')(p_video, s_video, token_mask))
      if self.text_pixel_head and self.velocity_match:
        # The expected motion returned for loss.expected_motion_weight, read with the same
        # weights from inputs whose gradient stops where expected_motion_stop_gradient says:
        # 'words' spares the word embeddings the three levels share, 'sentence' everything
        # but the query's linear map.
        # With velocity_query_words='own' the query reads its own bag of words instead.
        stop = self.expected_motion_stop_gradient
        query_s = (video_language(jax.lax.stop_gradient(words), token_mask, train)
                   if stop == 'words' else
                   jax.lax.stop_gradient(s_video) if stop == 'sentence' else None)
        query_words = (nn.Embed(self.vocab_size, d, name='velocity_query_embedding')(tokens)
                       if self.velocity_query_words == 'own' else None)
        logits, query = TextPixelHead(name='video_text_pixel')(
            p_video, s_video, token_mask, velocity, with_query=True, query_s=query_s,
            query_words=query_words)
        text_pixel.append(logits)
        expected_velocity = query[:, :2]
      elif self.text_pixel_head:
        text_pixel.append(TextPixelHead(name='video_text_pixel')(p_video, s_video, token_mask))
    if self.use_frame_level:
      p_frame = per_expression(FrameLevelEmbedding(
          position, heads, name='frame_embedding')(p))  # Eq. 4
      s_frame = self._language('frame_language')(words, token_mask, train)
      levels.append(self._align('frame_alignment', '2d')(p_frame, s_frame, token_mask))
      if self.text_pixel_head:
        text_pixel.append(TextPixelHead(name='frame_text_pixel')(p_frame, s_frame, token_mask))
    if self.use_object_level:
      p_object = ObjectEncoder(self.object_encoder, position, heads,
                               name='object_encoder')(p)  # Eq. 5
      y = PyramidHead(self.decoder_dim, 1, pyramid, name='object_decoder')(
          p_object.reshape(b * t, h, w, d), feats)  # Eq. 6
      object_logits = per_expression(
          upsample_bilinear(y, (height, width))[..., 0].reshape(b, t, height, width))
      p_object = per_expression(p_object)
      s_object = self._language('object_language')(words, token_mask, train)
      levels.append(self._align('object_alignment', '2d')(p_object, s_object, token_mask))
      if self.text_pixel_head:
        text_pixel.append(TextPixelHead(name='object_text_pixel')(p_object, s_object, token_mask))

    m = jnp.concatenate(levels, axis=-1).reshape(bk * t, h, w, len(levels) * d)
    seg_in = m
    if self.text_pixel_to_decoder:
      if not self.text_pixel_head:
        raise ValueError('model.text_pixel_to_decoder needs model.text_pixel_head=True')
      seg_in = jnp.concatenate(
          [m, jnp.stack(text_pixel, axis=-1).reshape(bk * t, h, w, len(text_pixel))], axis=-1)
    seg_feats = {name: per_expression(feats[name], frame_rows=True)
                 for name in ('res5', *pyramid)}
    if self.mask_upsample not in ('bilinear', 'subpixel'):
      raise ValueError(f"model.mask_upsample must be 'bilinear' or 'subpixel', got "
                       f'{self.mask_upsample!r}')
    subpixel = 1
    if self.mask_upsample == 'subpixel':  # the heads end at their finest level's stride
      subpixel = min(strides[name] for name in ('res5', *pyramid))
    e, bdry = BoundaryAwareSegmentation(self.decoder_dim, pyramid, subpixel,
                                        name='segmentation')(
        seg_in, seg_feats, (height, width))  # Eq. 12-13
    confidence = ConfidenceHead(d, name='confidence')(m)  # §3.4
    outputs = ModelOutputs(
        mask_logits=e.reshape(bk, t, height, width),
        boundary_logits=bdry.reshape(bk, t, height, width),
        object_logits=object_logits,
        confidence=confidence.reshape(bk, t),
        text_pixel_logits=jnp.stack(text_pixel, axis=-1) if text_pixel else None,
        velocity=velocity,
        expected_velocity=expected_velocity,
    )
    chex.assert_shape([outputs.mask_logits, outputs.boundary_logits], (bk, t, height, width))
    return outputs


def build_model(model_config: ml_collections.ConfigDict, vocab_size: int) -> MLRLSA:
  """The network described by `config.model` (configs/default.py documents each key)."""
  c = model_config
  for key, kept in REMOVED_SWITCHES.items():
    if c.get(key, kept) != kept:
      raise ValueError(f'model.{key}={c[key]!r}: this switch was removed (the network always '
                       f'runs {kept!r}; docs/refer_shapes_experiments.md has what it measured)')
  return MLRLSA(
      vocab_size=vocab_size,
      hidden_dim=c.hidden_dim,
      decoder_dim=c.decoder_dim,
      backbone_depth=c.backbone_depth,
      backbone_width=c.backbone_width,
      backbone_output_stride=c.backbone_output_stride,
      # Configs saved before this key existed describe torchvision's stem.
      backbone_stem_pool=c.get('backbone_stem_pool', True),
      decoder_finest_stride=c.get('decoder_finest_stride', 4),
      mask_upsample=c.get('mask_upsample', 'bilinear'),
      frozen_bn=c.frozen_bn,
      use_video_level=c.use_video_level,
      use_frame_level=c.use_frame_level,
      use_object_level=c.use_object_level,
      object_encoder=c.object_encoder,
      # Configs saved before this key existed describe Eq. 1-4 as printed.
      embedding_position=c.get('embedding_position', 'none'),
      # Configs saved before these keys existed describe the paper's model.
      embedding_heads=c.get('embedding_heads', 1),
      video_motion=c.get('video_motion', 'none'),
      velocity_head=c.get('velocity_head', False),
      velocity_match=c.get('velocity_match', False),
      # A config saved while this was the bool expected_motion_detach_words means 'words'.
      expected_motion_stop_gradient=c.get(
          'expected_motion_stop_gradient',
          'words' if c.get('expected_motion_detach_words', False) else 'none'),
      velocity_query_words=c.get('velocity_query_words', 'video'),
      alignment=c.alignment,
      text_layers=c.text_layers,
      text_heads=c.text_heads,
      text_ffn_dim=c.text_ffn_dim,
      text_dropout=c.text_dropout,
      compute_dtype=c.get('compute_dtype', 'float32'),
      text_pixel_head=c.get('text_pixel_head', False),
      text_pixel_to_decoder=c.get('text_pixel_to_decoder', False),
  )


def dummy_inputs(num_frames: int, height: int, width: int, max_words: int, batch: int = 1):
  """Inputs of the right shapes and dtypes for `init` / `jax.eval_shape`."""
  return (jnp.zeros((batch, num_frames, height, width, 3), jnp.float32),
          jnp.zeros((batch, max_words), jnp.int32),
          jnp.ones((batch, max_words), bool))

