"""Plain-PyTorch reference of MLRL-SA (NCHW), written independently of the Flax code.

Attribute names equal the Flax module names, so `state_dict()` keys are the Flax variable
paths joined with '.' (the naming rule of rvos_jax.porting). Only the backbone comes from
tests/torch_reference/resnet.py, with torchvision's names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_reference.resnet import ResNet

MASK_VALUE = -1e9


# ---------------------------------------------------------------- position encodings
def _sine(pos: torch.Tensor, num_feats: int) -> torch.Tensor:
  i = torch.arange(num_feats, dtype=torch.float64)
  dim_t = 10000.0 ** (2 * torch.div(i, 2, rounding_mode='floor') / num_feats)
  x = pos[..., None] / dim_t
  out = torch.empty_like(x)
  out[..., 0::2] = torch.sin(x[..., 0::2])
  out[..., 1::2] = torch.cos(x[..., 1::2])
  return out


def _norm_grid(n: int) -> torch.Tensor:
  # DETR: cumsum of a not-mask, divided by its last value (+eps), times 2*pi.
  y = torch.ones(n, dtype=torch.float64).cumsum(0)
  return y / (y[-1] + 1e-6) * 2 * math.pi


def pos_1d(n: int, d: int) -> torch.Tensor:
  return _sine(torch.arange(n, dtype=torch.float64), d).float()


def pos_2d(h: int, w: int, d: int) -> torch.Tensor:
  """(d, h, w), channels-first."""
  f = d // 2
  py = _sine(_norm_grid(h), f).T[:, :, None].expand(f, h, w)
  px = _sine(_norm_grid(w), f).T[:, None, :].expand(f, h, w)
  return torch.cat([py, px], 0).float()


def pos_3d(t: int, h: int, w: int, d: int) -> torch.Tensor:
  """(t, d, h, w)."""
  f = d // 3
  pt = _sine(_norm_grid(t), f)[:, :, None, None].expand(t, f, h, w)
  py = _sine(_norm_grid(h), f).T[None, :, :, None].expand(t, f, h, w)
  px = _sine(_norm_grid(w), f).T[None, :, None, :].expand(t, f, h, w)
  return torch.cat([pt, py, px], 1).float()


# ---------------------------------------------------------------- embeddings (§3.1)
class PixelSelfAttention(nn.Module):
  def __init__(self, d, heads=1):
    super().__init__()
    self.heads = heads
    self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

  def forward(self, x, pos=None):  # (..., L, d); pos (L, d) on queries and keys only
    xp = x if pos is None else x + pos
    hd = x.shape[-1] // self.heads
    split = lambda y: y.unflatten(-1, (self.heads, hd)).transpose(-2, -3)  # (..., H, L, hd)
    q, k, v = split(self.q(xp)), split(self.k(xp)), split(self.v(x))
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1)
    return (a @ v).transpose(-2, -3).flatten(-2) + x


class VideoLevelEmbedding(nn.Module):
  def __init__(self, d, position='none', heads=1):
    super().__init__()
    self.attn = PixelSelfAttention(d, heads)
    self.position = position

  def forward(self, p):  # (B, T, d, h, w)
    b, t, d, h, w = p.shape
    seq = p.permute(0, 1, 3, 4, 2).reshape(b, t * h * w, d)
    pos = None
    if self.position == 'sine':  # (t, d, h, w) -> (t*h*w, d)
      pos = pos_3d(t, h, w, d).permute(0, 2, 3, 1).reshape(t * h * w, d)
    return self.attn(seq, pos).reshape(b, t, h, w, d).permute(0, 1, 4, 2, 3)


class FrameLevelEmbedding(nn.Module):
  def __init__(self, d, position='none', heads=1):
    super().__init__()
    self.attn = PixelSelfAttention(d, heads)
    self.position = position

  def forward(self, p):
    b, t, d, h, w = p.shape
    seq = p.permute(0, 1, 3, 4, 2).reshape(b, t, h * w, d)
    pos = None
    if self.position == 'sine':  # (d, h, w) -> (h*w, d)
      pos = pos_2d(h, w, d).permute(1, 2, 0).reshape(h * w, d)
    return self.attn(seq, pos).reshape(b, t, h, w, d).permute(0, 1, 4, 2, 3)


def _per_frame(fn, x):  # apply a 2-D op to (B, T, C, h, w)
  b, t = x.shape[:2]
  y = fn(x.flatten(0, 1))
  return y.reshape(b, t, *y.shape[1:])


class ObjectEncoder(nn.Module):
  def __init__(self, d, kind, position='none', heads=1):
    super().__init__()
    self.kind = kind
    if kind == 'video':
      self.encoder = VideoLevelEmbedding(d, position, heads)
    elif kind == 'frame':
      self.encoder = FrameLevelEmbedding(d, position, heads)
    else:
      self.conv0 = nn.Conv2d(d, d, 3, padding=1)
    self.conv = nn.Conv2d(d, d, 3, padding=1)

  def forward(self, p):
    if self.kind == 'fcn':
      return _per_frame(lambda x: self.conv(F.relu(self.conv0(x))), p)
    return _per_frame(self.conv, self.encoder(p))


# ---------------------------------------------------------------- language (§3.2)
class MultiHeadSelfAttention(nn.Module):
  def __init__(self, d, heads):
    super().__init__()
    self.heads = heads
    self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))

  def forward(self, x, mask):
    b, n, d = x.shape
    hd = d // self.heads
    split = lambda y: y.reshape(b, n, self.heads, hd).transpose(1, 2)
    q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
    logits = q @ k.transpose(-1, -2) / math.sqrt(hd)
    logits = logits.masked_fill(~mask[:, None, None, :], MASK_VALUE)
    out = (torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(b, n, d)
    return self.out(out)


class TransformerEncoderLayer(nn.Module):
  def __init__(self, d, heads, ffn):
    super().__init__()
    self.attn = MultiHeadSelfAttention(d, heads)
    self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
    self.ffn1, self.ffn2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

  def forward(self, x, mask):  # eval mode: no dropout
    x = self.norm1(x + self.attn(x, mask))
    return self.norm2(x + self.ffn2(F.relu(self.ffn1(x))))


class LanguageEncoder(nn.Module):
  def __init__(self, d, layers, heads, ffn):
    super().__init__()
    self.num_layers = layers
    for i in range(layers):
      self.add_module(f'layer{i}', TransformerEncoderLayer(d, heads, ffn))

  def forward(self, words, mask):
    x = words + pos_1d(words.shape[1], words.shape[2])
    for i in range(self.num_layers):
      x = getattr(self, f'layer{i}')(x, mask)
    return x


# ---------------------------------------------------------------- alignment (Eq. 9-11)
class SemanticAlignment(nn.Module):
  def __init__(self, d, position):
    super().__init__()
    self.position = position
    self.visual, self.language, self.out = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

  def forward(self, p, s, mask):  # p (B, T, d, h, w)
    b, t, d, h, w = p.shape
    pos = pos_3d(t, h, w, d) if self.position == '3d' else pos_2d(h, w, d)[None].expand(t, d, h, w)
    seq = p.permute(0, 1, 3, 4, 2).reshape(b, t * h * w, d)
    pos_seq = pos.permute(0, 2, 3, 1).reshape(t * h * w, d)
    p_prime = self.visual(seq + pos_seq)
    s_prime = self.language(s + pos_1d(s.shape[1], d))
    logits = p_prime @ s_prime.transpose(1, 2) / math.sqrt(d)
    logits = logits.masked_fill(~mask[:, None, :], MASK_VALUE)
    s_hat = torch.softmax(logits, -1) @ s
    m = self.out(s_hat + seq)
    return m.reshape(b, t, h, w, d).permute(0, 1, 4, 2, 3)


class SentenceFusion(nn.Module):
  def __init__(self, d):
    super().__init__()
    self.sentence, self.out = nn.Linear(d, d), nn.Linear(d, d)

  def forward(self, p, s, mask):
    m = mask.float()[..., None]
    sent = self.sentence((s * m).sum(1) / m.sum(1).clamp(min=1.0))
    seq = p.permute(0, 1, 3, 4, 2) + sent[:, None, None, None, :]
    return self.out(seq).permute(0, 1, 4, 2, 3)


class TextPixelHead(nn.Module):  # CRIS's text-to-pixel logits (not in the paper)
  def __init__(self, d, velocity_match=False):
    super().__init__()
    self.sentence, self.pixels = nn.Linear(d, d), nn.Linear(d, d)
    if velocity_match:
      self.velocity_query = nn.Linear(d, 3)
    self.bias = nn.Parameter(torch.zeros(()))

  def forward(self, p, s, mask, velocity=None):  # p (B, T, d, h, w) -> (B, T, h, w)
    m = mask.float()[..., None]
    words = (s * m).sum(1) / m.sum(1).clamp(min=1.0)
    sent = self.sentence(words)
    pix = self.pixels(p.permute(0, 1, 3, 4, 2))
    out = torch.einsum('bthwc,bc->bthw', pix, sent) / math.sqrt(p.shape[2]) + self.bias
    if velocity is not None:  # (B, T, h, w, 2)
      speed = (velocity.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
      out = out + torch.einsum('bthwc,bc->bthw', torch.cat([velocity, speed], -1),
                               self.velocity_query(words))
    return out


# ---------------------------------------------------------------- segmentation (§3.3)
class ConvNormReLU(nn.Module):
  def __init__(self, cin, c):
    super().__init__()
    self.conv = nn.Conv2d(cin, c, 3, padding=1)
    self.norm = nn.GroupNorm(8, c, eps=1e-5)

  def forward(self, x):
    return F.relu(self.norm(self.conv(x)))


class PyramidHead(nn.Module):
  def __init__(self, cin, feat_channels, c, out, levels=('res4', 'res3', 'res2')):
    super().__init__()
    self.levels = levels
    self.in_proj = nn.Conv2d(cin, c, 1)
    for name in ('res5', *levels):
      self.add_module(f'lateral_{name}', nn.Conv2d(feat_channels[name], c, 1))
      self.add_module(f'block_{name}', ConvNormReLU(c, c))
    self.out = nn.Conv2d(c, out, 3, padding=1)

  def forward(self, x, feats):
    x = self.block_res5(self.in_proj(x) + self.lateral_res5(feats['res5']))
    for name in self.levels:
      f = feats[name]
      x = F.interpolate(x, size=f.shape[-2:], mode='bilinear', align_corners=False)
      x = getattr(self, f'block_{name}')(x + getattr(self, f'lateral_{name}')(f))
    return self.out(x)


class BoundaryAwareSegmentation(nn.Module):
  def __init__(self, cin, feat_channels, c, levels=('res4', 'res3', 'res2'), subpixel=1):
    super().__init__()
    r = self.subpixel = subpixel
    self.boundary_head = PyramidHead(cin, feat_channels, c, r * r, levels)
    self.seg_head = PyramidHead(cin, feat_channels, c, c, levels)
    self.fcnn = nn.Conv2d(c + r * r, r * r, 3, padding=1)

  def forward(self, m, feats, size):
    b = self.boundary_head(m, feats)
    e = self.fcnn(torch.cat([b, self.seg_head(m, feats)], 1))
    if self.subpixel == 1:
      up = lambda y: F.interpolate(y, size=size, mode='bilinear', align_corners=False)[:, 0]
    else:
      up = lambda y: F.pixel_shuffle(y, self.subpixel)[:, 0, :size[0], :size[1]]
    return up(e), up(b)


class ConfidenceHead(nn.Module):
  def __init__(self, cin, c):
    super().__init__()
    self.fc1, self.fc2, self.fc3 = nn.Linear(cin, c), nn.Linear(c, c), nn.Linear(c, 1)

  def forward(self, m):
    x = m.mean(dim=(2, 3))
    return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))[:, 0]


# ---------------------------------------------------------------- motion (ours)
class RGBDifferenceStream(nn.Module):
  """[x_t, x_{t+1} - x_{t-1}] -> log2(stride) 3x3 stride-2 convs + ReLU -> 3x3 conv to d."""

  def __init__(self, d, stride, width=16):
    super().__init__()
    self.n = int(round(math.log2(stride)))
    chans = [min(width * 2**i, d) for i in range(self.n)]
    for i, (a, c) in enumerate(zip([6] + chans[:-1], chans, strict=True)):
      setattr(self, f'conv{i}', nn.Conv2d(a, c, 3, stride=2, padding=1))
    self.out = nn.Conv2d(chans[-1], d, 3, padding=1)

  def forward(self, x):  # (B, T, 3, H, W) -> (B, T, d, h, w)
    b, t = x.shape[:2]
    nxt = torch.cat([x[:, 1:], x[:, -1:]], 1)
    prv = torch.cat([x[:, :1], x[:, :-1]], 1)
    y = torch.cat([x, nxt - prv], 2).flatten(0, 1)
    for i in range(self.n):
      y = F.relu(getattr(self, f'conv{i}')(y))
    y = self.out(y)
    return y.reshape(b, t, *y.shape[1:])


# ---------------------------------------------------------------- the network
class MLRLSA(nn.Module):
  MEAN = (0.485, 0.456, 0.406)
  STD = (0.229, 0.224, 0.225)

  def __init__(self, vocab_size, hidden_dim=384, decoder_dim=256, backbone_depth=50,
               backbone_width=1.0, backbone_output_stride=32, use_video_level=True,
               use_frame_level=True, use_object_level=True, object_encoder='video',
               embedding_position='none', alignment='dsa',
               text_layers=2, text_heads=8, text_ffn_dim=1536, embedding_heads=1,
               text_pixel_head=False, backbone_stem_pool=True,
               text_pixel_to_decoder=False, decoder_finest_stride=4,
               mask_upsample='bilinear', video_motion='none', velocity_head=False,
               velocity_match=False):
    super().__init__()
    d, c = hidden_dim, decoder_dim
    self.levels = [lvl for lvl, on in (('video', use_video_level), ('frame', use_frame_level),
                                        ('object', use_object_level)) if on]
    # Strides of res2..res5 before any dilation; a layer whose stride would pass the output
    # stride dilates instead (torchvision's replace_stride_with_dilation).
    strides = [2, 4, 8, 16] if not backbone_stem_pool else [4, 8, 16, 32]
    dilate = tuple(s > backbone_output_stride for s in strides[1:])
    self.backbone = ResNet(backbone_depth, backbone_width, replace_stride_with_dilation=dilate,
                           stem_pool=backbone_stem_pool)
    # Each feature's stride after dilation; the heads read the features down to
    # decoder_finest_stride (res2 is at stride 2 without the stem pool).
    stride_of = {f'res{i + 2}': min(s, backbone_output_stride) for i, s in enumerate(strides)}
    pyramid = tuple(name for name in ('res4', 'res3', 'res2')
                    if stride_of[name] >= decoder_finest_stride)
    del self.backbone.fc, self.backbone.avgpool  # only res2..res5 are used
    expansion = 1 if backbone_depth in (18, 34) else 4
    base = int(round(64 * backbone_width)) * expansion
    chans = {f'res{i + 2}': base * 2**i for i in range(4)}
    self.reduce = nn.Conv2d(chans['res5'], d, 1)
    self.word_embedding = nn.Embedding(vocab_size, d)
    align = (lambda pos: SemanticAlignment(d, pos)) if alignment == 'dsa' else (
        lambda pos: SentenceFusion(d))
    lang = lambda: LanguageEncoder(d, text_layers, text_heads, text_ffn_dim)
    if 'video' in self.levels:
      self.video_embedding = VideoLevelEmbedding(d, embedding_position, embedding_heads)
      if video_motion == 'rgb_diff':
        self.video_motion = RGBDifferenceStream(d, stride_of['res5'])
      if velocity_head:
        self.video_velocity = nn.Linear(d, 2)
      self.video_language, self.video_alignment = lang(), align('3d')
    if 'frame' in self.levels:
      self.frame_embedding = FrameLevelEmbedding(d, embedding_position, embedding_heads)
      self.frame_language, self.frame_alignment = lang(), align('2d')
    if 'object' in self.levels:
      self.object_encoder = ObjectEncoder(d, object_encoder, embedding_position, embedding_heads)
      self.object_decoder = PyramidHead(d, chans, c, 1, pyramid)
      self.object_language, self.object_alignment = lang(), align('2d')
    self.text_pixel_head = text_pixel_head
    if text_pixel_head:
      for level in self.levels:
        setattr(self, f'{level}_text_pixel',
                TextPixelHead(d, velocity_match and level == 'video'))
    k = len(self.levels) * d
    self.text_pixel_to_decoder = text_pixel_to_decoder
    extra = len(self.levels) if text_pixel_to_decoder else 0
    # Sub-pixel masks: r*r logits per cell of the heads' finest level.
    finest = min(stride_of[name] for name in ('res5', *pyramid))
    subpixel = finest if mask_upsample == 'subpixel' else 1
    self.segmentation = BoundaryAwareSegmentation(k + extra, chans, c, pyramid, subpixel)
    self.confidence = ConfidenceHead(k, d)

  def forward(self, frames, tokens, token_mask):
    """frames (B, T, 3, H, W) in [0, 1]; returns a dict of (B, T, H, W) logits and (B, T)."""
    b, t, _, height, width = frames.shape
    mean = torch.tensor(self.MEAN)[:, None, None]
    std = torch.tensor(self.STD)[:, None, None]
    x = (frames.flatten(0, 1) - mean) / std
    feats = self.backbone(x)
    p = self.reduce(feats['res5'])
    p = p.reshape(b, t, *p.shape[1:])
    words = self.word_embedding(tokens)
    ms, out = [], {'object_logits': None, 'velocity': None}
    ps, ss = {}, {}
    if 'video' in self.levels:
      p_in = p
      if hasattr(self, 'video_motion'):
        p_in = p + self.video_motion(x.reshape(b, t, *x.shape[1:]))
      ps['video'], ss['video'] = self.video_embedding(p_in), self.video_language(words, token_mask)
      if hasattr(self, 'video_velocity'):  # (B, T, d, h, w) -> (B, T, h, w, 2)
        out['velocity'] = self.video_velocity(ps['video'].permute(0, 1, 3, 4, 2))
      ms.append(self.video_alignment(ps['video'], ss['video'], token_mask))
    if 'frame' in self.levels:
      ps['frame'], ss['frame'] = self.frame_embedding(p), self.frame_language(words, token_mask)
      ms.append(self.frame_alignment(ps['frame'], ss['frame'], token_mask))
    if 'object' in self.levels:
      po = ps['object'] = self.object_encoder(p)
      y = self.object_decoder(po.flatten(0, 1), feats)
      y = F.interpolate(y, size=(height, width), mode='bilinear', align_corners=False)
      out['object_logits'] = y.reshape(b, t, height, width)
      ss['object'] = self.object_language(words, token_mask)
      ms.append(self.object_alignment(po, ss['object'], token_mask))
    out['text_pixel_logits'] = None
    if self.text_pixel_head:
      out['text_pixel_logits'] = torch.stack(
          [getattr(self, f'{lvl}_text_pixel')(
              ps[lvl], ss[lvl], token_mask,
              out['velocity'] if lvl == 'video' and hasattr(self.video_text_pixel,
                                                            'velocity_query') else None)
           for lvl in self.levels], -1)
    out['expected_velocity'] = None  # the velocity match's query, its (x, y)
    if self.text_pixel_head and hasattr(self.video_text_pixel, 'velocity_query'):
      wm = token_mask.float()[..., None]
      words_mean = (ss['video'] * wm).sum(1) / wm.sum(1).clamp(min=1.0)
      out['expected_velocity'] = self.video_text_pixel.velocity_query(words_mean)[:, :2]
    m = torch.cat(ms, 2).flatten(0, 1)
    seg_in = m
    if self.text_pixel_to_decoder:
      tp = out['text_pixel_logits'].permute(0, 1, 4, 2, 3).flatten(0, 1)
      seg_in = torch.cat([m, tp], 1)
    e, bdry = self.segmentation(seg_in, feats, (height, width))
    out['mask_logits'] = e.reshape(b, t, height, width)
    out['boundary_logits'] = bdry.reshape(b, t, height, width)
    out['confidence'] = self.confidence(m).reshape(b, t)
    return out
