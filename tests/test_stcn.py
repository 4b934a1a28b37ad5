"""STCN (rvos_jax/models/stcn.py) against the plain-PyTorch reference with the released
state_dict names (tests/torch_reference/stcn.py): every part, the memory read with and without
top-k, the whole read + decode, the padding, and the port of a torch.save'd state_dict.
float32 on CPU, random weights (BatchNorm statistics too), max|diff| <= 1e-4 max|ref|."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rvos_jax import port_stcn, porting
from rvos_jax.models import stcn
from tests import parity
from tests.parity import nchw, nhwc
from tests.torch_reference import stcn as ref

# CPU-sized widths (the released ones are checked by name and shape below, at full size).
SMALL = dict(width=0.25, key_dim=16, value_dim=64, decoder_dim=32)
H, W = 48, 80  # multiples of 16, not square
torch.manual_seed(0)


def _flax_model(**kw):
  return stcn.STCN(**{**SMALL, **kw})


def _torch_model(**kw):
  args = {**SMALL, **kw}
  model = ref.STCN(width=args['width'], key_dim=args['key_dim'], value_dim=args['value_dim'],
                   decoder_dim=args['decoder_dim'], stem_pool=args.get('stem_pool', True))
  return parity.randomize_(model, seed=1)


def _inputs(b=1, o=2, seed=0, h=H, w=W):
  rng = np.random.default_rng(seed)
  frames = rng.normal(size=(2, b, h, w, 3)).astype(np.float32)
  masks = rng.random((b, o, h, w)).astype(np.float32)
  return frames[0], masks, frames[1]


def test_parts_match_torch():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 7, 9, 24)).astype(np.float32)
  for t_mod, f_mod, what in ((ref.ResBlock(24, 16), stcn.ResBlock(16), 'ResBlock 24->16'),
                             (ref.ResBlock(24, 24), stcn.ResBlock(24), 'ResBlock 24->24'),
                             (ref.CBAM(24, 4), stcn.CBAM(4), 'CBAM')):
    t_mod = parity.randomize_(t_mod, seed=2)
    variables = parity.port(t_mod, f_mod, x)
    parity.assert_outputs_close(f_mod.apply(variables, x), nhwc(t_mod(nchw(x))), what)

  torch_model = _torch_model()
  image, masks, _ = _inputs()
  keys = parity.port(torch_model.key_encoder, stcn.KeyEncoder(width=SMALL['width']), image)
  f16, f8, f4 = stcn.KeyEncoder(width=SMALL['width']).apply(keys, image)
  t16, t8, t4 = torch_model.key_encoder(nchw(image))
  for a, b, what in ((f16, t16, 'key encoder f16'), (f8, t8, 'f8'), (f4, t4, 'f4')):
    parity.assert_outputs_close(a, nhwc(b), what)

  value_encoder = stcn.ValueEncoder(width=SMALL['width'], value_dim=SMALL['value_dim'])
  m, o = masks[:, 0], masks[:, 1]
  variables = parity.port(torch_model.value_encoder, value_encoder, image, m, o, f16)
  got = value_encoder.apply(variables, image, m, o, f16)
  want = torch_model.value_encoder(nchw(image), torch.from_numpy(m[:, None]),
                                   torch.from_numpy(o[:, None]), t16)
  parity.assert_outputs_close(got, nhwc(want), 'value encoder (ResNet-18 + fuser)')

  decoder = stcn.Decoder(SMALL['value_dim'], SMALL['decoder_dim'])
  x16 = rng.normal(size=(1, H // 16, W // 16, 2 * SMALL['value_dim'])).astype(np.float32)
  variables = parity.port(torch_model.decoder, decoder, x16, f8, f4, (H, W))
  got = decoder.apply(variables, x16, f8, f4, (H, W))
  want = torch_model.decoder(nchw(x16), t8, t4, 4)[:, 0]
  parity.assert_outputs_close(got, want.detach().numpy(), 'decoder')


@pytest.mark.parametrize('top_k', [None, 5])
def test_memory_read_matches_torch(top_k):
  rng = np.random.default_rng(4)
  mk = rng.normal(size=(2, 37, 8)).astype(np.float32)  # 37 memory locations, C_k = 8
  mv = rng.normal(size=(2, 3, 37, 6)).astype(np.float32)  # 3 objects, C_v = 6
  qk = rng.normal(size=(2, 11, 8)).astype(np.float32)
  got = stcn.memory_readout(mk, mv, qk, top_k=top_k)  # (B, O, M, C_v)
  weights = ref.softmax_top(ref.affinity(torch.from_numpy(mk).transpose(1, 2),
                                         torch.from_numpy(qk).transpose(1, 2)), top_k)
  want = torch.einsum('bocn,bnm->bomc', torch.from_numpy(mv).permute(0, 1, 3, 2), weights)
  parity.assert_outputs_close(got, want.numpy(), f'memory readout (top_k={top_k})')
  # Unused slots of a fixed-size bank weigh nothing: the same as leaving them out.
  pad_k = np.concatenate([mk, rng.normal(size=(2, 5, 8)).astype(np.float32)], 1)
  pad_v = np.concatenate([mv, rng.normal(size=(2, 3, 5, 6)).astype(np.float32)], 2)
  valid = np.arange(42)[None].repeat(2, 0) < 37
  masked = stcn.memory_readout(pad_k, pad_v, qk, top_k=top_k, valid=valid)
  np.testing.assert_allclose(masked, got, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('top_k', [None, 7])
def test_whole_read_and_decode_matches_torch(top_k):
  torch_model = _torch_model()
  model = _flax_model()
  first, masks, second = _inputs(b=2, o=2)
  variables = parity.port(torch_model, model, first, masks, second)
  got = model.apply(variables, first, masks, second, top_k=top_k)
  want = torch_model(nchw(first), torch.from_numpy(masks), nchw(second), top_k)
  assert got.shape == (2, 2, H, W)
  parity.assert_outputs_close(got, want.detach().numpy(), f'STCN read + decode (top_k={top_k})')


def test_one_object_and_no_stem_pool_match_torch():
  """One object (its `others` channel zero) and the CPU variant without the stem max-pool."""
  torch_model = _torch_model(stem_pool=False)
  model = _flax_model(stem_pool=False)
  first, masks, second = _inputs(o=1, h=32, w=48)
  variables = parity.port(torch_model, model, first, masks, second)
  got = model.apply(variables, first, masks, second, top_k=3)
  want = torch_model(nchw(first), torch.from_numpy(masks), nchw(second), 3)
  parity.assert_outputs_close(got, want.detach().numpy(), 'STCN, 1 object, no stem pool')


def test_aggregate_and_padding_match_torch():
  probs = np.random.default_rng(5).random((2, 3, 5, 7)).astype(np.float32)
  probs[0, 0, 0, 0] = 0.0  # the clamp
  parity.assert_outputs_close(stcn.aggregate(probs), ref.aggregate(torch.from_numpy(probs)),
                              'soft aggregation')
  x = np.random.default_rng(6).normal(size=(1, 37, 53, 3)).astype(np.float32)
  padded = stcn.pad_to_multiple(x)
  assert padded.shape == (1, 48, 64, 3)
  # STCN's pad_divide_by: F.pad(x, (lw, uw, lh, uh)), the smaller half before.
  want = F.pad(nchw(x), (5, 6, 5, 6))
  np.testing.assert_array_equal(padded, nhwc(want))
  np.testing.assert_array_equal(stcn.unpad(padded, 37, 53, axes=(1, 2)), x)
  with pytest.raises(ValueError, match='padded to multiples of 16'):
    stcn.STCN(**SMALL).init(__import__('jax').random.key(0), x, np.zeros((1, 1, 37, 53)), x)


def test_released_architecture_has_the_released_keys():
  """At the released widths, the Flax variables name exactly the reference's state_dict keys
  (what `stcn.pth` holds), with the same shapes."""
  model = stcn.STCN()
  abstract = port_stcn.abstract_variables(model)
  torch_keys = {k: tuple(v.shape) for k, v in ref.STCN().state_dict().items()
                if not k.endswith('num_batches_tracked')}
  leaves = porting.flax_to_torch(__import__('jax').tree.map(
      lambda s: np.zeros(s.shape, np.float32), abstract))
  assert {k: v.shape for k, v in leaves.items()} == torch_keys
  assert torch_keys['value_encoder.conv1.weight'] == (64, 5, 7, 7)
  assert torch_keys['key_proj.key_proj.weight'] == (64, 1024, 3, 3)
  assert torch_keys['value_encoder.fuser.block1.downsample.weight'] == (512, 1280, 3, 3)
  assert torch_keys['decoder.up_16_8.skip_conv.weight'] == (512, 512, 3, 3)


def test_port_of_a_saved_state_dict_gives_the_same_masks(tmp_path):
  torch_model = _torch_model()
  path = tmp_path / 'stcn.pth'
  state = {f'module.{k}': v for k, v in torch_model.state_dict().items()}  # a DDP save
  torch.save(state, path)
  meta = port_stcn.port_checkpoint(str(path), str(tmp_path / 'out'), **SMALL)
  assert meta['architecture']['value_dim'] == SMALL['value_dim']
  model, variables = port_stcn.load_stcn(str(tmp_path / 'out'))
  first, masks, second = _inputs(o=1)
  got = model.apply(variables, first, masks, second, top_k=20)
  want = torch_model(nchw(first), torch.from_numpy(masks), nchw(second), 20)
  parity.assert_outputs_close(got, want.detach().numpy(), 'ported from torch.save')

  # Strict: a missing, an unused and a mis-shaped key are all named.
  sd = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  del sd['decoder.pred.bias']
  sd['decoder.extra.weight'] = np.zeros(3)
  sd['key_comp.weight'] = np.zeros((3, 3, 3, 3), np.float32)
  with pytest.raises(porting.PortError) as err:
    port_stcn.port_state_dict(sd, **SMALL)
  for key in ('decoder.pred.bias', 'decoder.extra.weight', 'key_comp.weight'):
    assert key in str(err.value)
  # Another architecture than the checkpoint's (the released widths): refused by shape.
  with pytest.raises(porting.PortError, match='key_proj.key_proj.weight'):
    port_stcn.port_state_dict({k: v.numpy() for k, v in torch_model.state_dict().items()})
  # A single-object value encoder (4 input channels) gets a zero fifth channel.
  sd = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  sd['value_encoder.conv1.weight'] = sd['value_encoder.conv1.weight'][:, :4]
  _, variables, notes = port_stcn.port_state_dict(sd, **SMALL)
  kernel = variables['params']['value_encoder']['conv1']['kernel']
  assert kernel.shape[2] == 5 and not kernel[:, :, 4].any() and '4 input channels' in notes[-1]
