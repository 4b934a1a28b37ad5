"""Mask propagation (rvos_jax/propagation.py): the JAX propagation against the same algorithm
written out with the PyTorch reference STCN (growing memory, and bounded), the edge cases (one
frame, an empty reference, a checkpoint of another shape, a video longer than the bank), the
config switch, and predict_split's propagated masks."""

import json
import os

import numpy as np
import pytest
import torch

from rvos_jax import evaluation, port_stcn, porting, predict, propagation
from rvos_jax.models import stcn
from tests import parity
from tests.torch_reference import stcn as ref

pytest_plugins = ('tests.data_fixtures',)

SMALL = dict(width=0.25, key_dim=16, value_dim=64, decoder_dim=32)
H, W = 32, 48


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  torch_model = parity.randomize_(ref.STCN(**SMALL), seed=7)
  path = tmp_path_factory.mktemp('stcn') / 'stcn.pth'
  torch.save(torch_model.state_dict(), path)
  out = str(path.parent / 'ported')
  port_stcn.port_checkpoint(str(path), out, **SMALL)
  return torch_model, out


def _video(n, seed=0):
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
  mask = np.zeros((H, W), bool)
  mask[8:20, 10:30] = True
  return frames, mask


def _torch_propagation(model, frames, reference, mask, mem_every, max_memory):
  """The algorithm of rvos_jax.propagation, with the torch STCN and a Python list as bank."""
  norm = lambda t: (torch.from_numpy(frames[t:t + 1].astype(np.float32) / 255).permute(
      0, 3, 1, 2) - torch.tensor(stcn.IMAGENET_MEAN)[:, None, None]) / torch.tensor(
      stcn.IMAGENET_STD)[:, None, None]
  out = np.zeros(frames.shape[:3], np.float32)
  out[reference] = mask
  with torch.no_grad():
    k, _, f16, _, _ = model.encode_key(norm(reference))
    ref_entry = (k.flatten(2), model.encode_value(
        norm(reference), f16, torch.from_numpy(mask[None, None].astype(np.float32))).flatten(3))
    for direction in (range(reference + 1, len(frames)), range(reference - 1, -1, -1)):
      bank = []
      order = list(direction)
      for i, t in enumerate(order):
        k, qv, f16, f8, f4 = model.encode_key(norm(t))
        entries = [ref_entry] + bank
        mk = torch.cat([e[0] for e in entries], 2)
        mv = torch.cat([e[1] for e in entries], 3)
        logits = model.segment(k, qv, f8, f4, mk, mv, 20)
        prob = torch.softmax(ref.aggregate(torch.sigmoid(logits)), 1)[:, 1]
        out[t] = prob[0].numpy()
        if i < len(order) - 1 and (i + 1) % mem_every == 0 and max_memory > 0:
          value = model.encode_value(norm(t), f16, prob[:, None])
          bank.append((k.flatten(2), value.flatten(3)))
          bank = bank[-max_memory:]  # the oldest replaced
  return out


@pytest.mark.parametrize('n,reference,mem_every,max_memory', [
    (7, 3, 2, 16),   # the bank never fills: STCN's unbounded memory
    (12, 2, 1, 2),   # longer than the bank: the oldest frames leave it
    (5, 0, 5, 16),   # reference first: forwards only
])
def test_propagation_equals_the_torch_algorithm(models, n, reference, mem_every, max_memory):
  torch_model, ported = models
  model, variables = port_stcn.load_stcn(ported)
  settings = propagation.Settings(mem_every=mem_every, max_memory_frames=max_memory)
  frames, mask = _video(n)
  got = propagation.Propagator(model, variables, settings).propagate(frames, reference, mask)
  want = _torch_propagation(torch_model, frames, reference, mask, mem_every, max_memory)
  assert got.shape == (n, H, W) and np.isfinite(got).all()
  parity.assert_outputs_close(got, want, f'propagation n={n} ref={reference} bank={max_memory}')


def test_edge_cases(models, tmp_path):
  _, ported = models
  model, variables = port_stcn.load_stcn(ported)
  prop = propagation.Propagator(model, variables)
  frames, mask = _video(4)
  # One frame: nothing to propagate.
  one = prop.propagate(frames[:1], 0, mask)
  np.testing.assert_array_equal(one[0], mask)
  masks = np.zeros((4, H, W), bool)
  masks[1] = mask
  np.testing.assert_array_equal(propagation.refine(prop, frames[:1], masks[:1], np.ones(1)),
                                masks[:1])
  # An empty mask on the most confident frame: the network's masks are kept.
  conf = np.array([0.1, 0.2, 0.9, 0.3])
  np.testing.assert_array_equal(propagation.refine(prop, frames, masks, conf), masks)
  # Otherwise the reference keeps its mask and the others are propagated.
  conf[1] = 0.95
  refined = propagation.refine(prop, frames, masks, conf)
  np.testing.assert_array_equal(refined[1], mask)
  want = prop.propagate(frames, 1, mask) > 0.5
  np.testing.assert_array_equal(refined[[0, 2, 3]], want[[0, 2, 3]])
  with pytest.raises(ValueError, match=r'reference mask \(3, 3\) does not fit frames 32x48'):
    prop.propagate(frames, 0, np.zeros((3, 3)))

  # A checkpoint of another shape than its metadata says: refused, naming the keys.
  other = tmp_path / 'other'
  other.mkdir()
  os.symlink(os.path.join(ported, porting.ARRAYS_DIR), other / porting.ARRAYS_DIR)
  meta = json.load(open(os.path.join(ported, porting.METADATA_FILE)))
  meta['architecture']['value_dim'] = 32
  json.dump(meta, open(other / porting.METADATA_FILE, 'w'))
  with pytest.raises(porting.PortError, match='key_comp'):
    port_stcn.load_stcn(str(other))
  with pytest.raises(FileNotFoundError, match='port_metadata.json'):
    port_stcn.load_stcn(str(tmp_path / 'nowhere'))


def test_working_size_and_settings():
  assert propagation.working_size(720, 1280, 480) == (480, 853)
  assert propagation.working_size(64, 96, 480) == (64, 96)  # never enlarged
  with pytest.raises(ValueError, match='mem_every must be >= 1'):
    propagation.Settings(mem_every=0)


def test_config_switch(models, tmp_path):
  from configs import refer_shapes  # noqa: PLC0415

  config = refer_shapes.get_config('smoke')
  assert propagation.from_config(config) is None  # 'none' by default
  config.inference.propagation = 'stcn'
  # configs/refer_shapes.py points at the STCN that configs/propagation_refer_shapes.py trains
  assert config.inference.stcn_checkpoint == 'workdirs/propagation_refer_shapes/stcn'
  config.inference.stcn_checkpoint = str(tmp_path / 'untrained')
  with pytest.raises(FileNotFoundError, match=r'untrained: no port_metadata.json'):
    propagation.from_config(config)
  config.inference.stcn_checkpoint = ''
  with pytest.raises(ValueError, match='needs config.inference.stcn_checkpoint'):
    propagation.from_config(config)
  config.inference.update(stcn_checkpoint=models[1], mem_every=3, max_memory_frames=4)
  prop = propagation.from_config(config)
  assert prop.settings.mem_every == 3 and prop.slots == 5
  config.inference.propagation = 'cfbi'
  with pytest.raises(ValueError, match="expected 'none' or 'stcn'"):
    propagation.from_config(config)


def test_predict_split_writes_the_propagated_masks(models, tiny_root, tiny_builder, tiny_vocab,
                                                   tmp_path):
  """predict_split with a propagator: each expression's masks are its most confident frame's
  mask propagated from the frames on disk (a fixed fake network gives the masks)."""
  from tests.data_fixtures import tiny_config  # noqa: PLC0415

  _, ported = models
  model, variables = port_stcn.load_stcn(ported)
  prop = propagation.Propagator(model, variables, propagation.Settings(mem_every=2))
  config = tiny_config(tiny_root, height=32, width=48)

  def fake_predict(v, frames, tokens, token_mask):
    b, t = frames.shape[:2]
    probs = np.zeros((b, t, 32, 48), np.float32)
    probs[..., 6:18, 8:26] = 0.9
    conf = frames.mean(axis=(2, 3, 4))  # some frame-dependent confidence
    return probs, conf

  out = tmp_path / 'pred'
  predict.predict_split(fake_predict, None, config, tiny_builder, tiny_vocab, str(out),
                        split='valid', process_index=0, process_count=1, propagator=prop)
  confidence = json.load(open(out / 'confidence.json'))
  video = sorted(confidence)[0]
  exp_id = sorted(confidence[video])[0]
  names = sorted(os.listdir(out / 'Annotations' / video / exp_id))
  got = np.stack([evaluation.read_prediction(str(out / 'Annotations' / video / exp_id / n))
                  for n in names])
  frames = np.stack([predict.read_frame(os.path.join(tiny_root, 'valid', 'JPEGImages', video,
                                                     n.replace('.png', '.jpg'))) for n in names])
  probs = np.zeros((len(names), 32, 48), np.float32)
  probs[:, 6:18, 8:26] = 0.9
  network = predict.probabilities_to_masks(probs, frames.shape[1:3])  # what fake_predict gives
  want = propagation.refine(prop, frames, network, np.asarray(confidence[video][exp_id]))
  np.testing.assert_array_equal(got, want)
  assert not np.array_equal(got, network)  # the propagation changed something
