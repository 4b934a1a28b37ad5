"""Inference: windows of T, sigmoid > 0.5 at the video's size, video I/O, overlays, submission."""

import json
import os
import shutil
import types
import zipfile

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs.default import get_config
from data_pipelines import builders, pipelines, refer_shapes
from data_pipelines.config import get_data_config
from rvos_jax import predict
from rvos_jax.models import mlrl_sa

# A tiny layout: 7 frames per video so T=4 gives a full window and a padded one.
TINY = dict(num_train_videos=4, num_valid_videos=3, num_frames=7, height=48, width=64, seed=5)
T = 4

_SETUP = {}


def _random_variables(model, inputs, seed=0):
  """Random variables of the model's shapes, drawn in numpy: `model.init` costs half a minute of
  compilation (or eager dispatch) on the shared CPU, and the tests check wiring, not the init.
  Kernels ~ N(0, 1/fan_in), embeddings ~ N(0, 1), biases ~ N(0, 0.02), norms and frozen BatchNorm
  statistics the identity."""
  shapes = jax.eval_shape(lambda rng: model.init({'params': rng}, *inputs), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    collection, name = path[0].key, path[-1].key
    if collection == 'batch_stats' or name == 'scale':
      value = np.ones(leaf.shape) if name in ('scale', 'var') else np.zeros(leaf.shape)
    elif name == 'kernel':
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name == 'embedding':
      value = rng.normal(size=leaf.shape)
    else:
      value = 0.02 * rng.normal(size=leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def tiny_setup(tmp_path_factory) -> types.SimpleNamespace:
  """Dataset, records, vocabulary, tiny model and its predict_fn; built once per test session
  (test_evaluate_model.py reuses it)."""
  if 'setup' in _SETUP:
    return _SETUP['setup']
  root = str(tmp_path_factory.mktemp('predict_tiny'))
  refer_shapes.generate(root, **TINY)
  config = get_config()
  data = get_data_config()
  data.root = root
  data.num_frames, data.height, data.width = T, TINY['height'], TINY['width']
  data.eval_batch_size = 3
  config.data = data
  m = config.model
  m.hidden_dim, m.decoder_dim, m.backbone_depth, m.backbone_width = 48, 16, 18, 0.25
  m.text_layers, m.text_heads, m.text_ffn_dim = 1, 4, 64
  builder = builders.prepare(data)
  vocab = pipelines.build_vocabulary(builder)
  model = mlrl_sa.build_model(m, len(vocab))
  inputs = mlrl_sa.dummy_inputs(T, data.height, data.width, data.max_words)
  variables = _random_variables(model, inputs)
  s = types.SimpleNamespace(root=root, config=config, vocab=vocab, builder=builder, model=model,
                            variables=variables, predict_fn=predict.make_predict_fn(model))
  _SETUP['setup'] = s
  return s


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  return tiny_setup(tmp_path_factory)


def _meta(root, split):
  with open(os.path.join(root, 'meta_expressions', split, 'meta_expressions.json')) as f:
    return json.load(f)['videos']


def _frames(root, split, video):
  """The video's frames read with PIL (independently of predict.read_video)."""
  names = _meta(root, split)[video]['frames']
  folder = os.path.join(root, split, 'JPEGImages', video)
  return np.stack([np.asarray(Image.open(os.path.join(folder, n + '.jpg'))) for n in names])


def _ids(root, split, video):
  names = _meta(root, split)[video]['frames']
  folder = os.path.join(root, split, 'Annotations', video)
  return np.stack([np.asarray(Image.open(os.path.join(folder, n + '.png'))) for n in names])


def _assert_masks_equal(got, probs, what):
  """got == probs > 0.5 wherever the probability is not within 1e-4 of the threshold."""
  clear = np.abs(probs - 0.5) > 1e-4
  bad = (got != (probs > 0.5)) & clear
  assert not bad.any(), f'{what}: {bad.sum()} of {bad.size} pixels differ'


# ------------------------------------------------------------------------------------------------


def test_resize_bilinear_matches_jax():
  x = np.random.default_rng(0).random((2, 5, 7)).astype(np.float32)
  for size in [(11, 13), (3, 4), (5, 7), (9, 3)]:
    want = jax.image.resize(x, (2, *size), 'bilinear', antialias=False)
    np.testing.assert_allclose(predict.resize_bilinear(x, size), want, atol=1e-6,
                               err_msg=str(size))


def test_segment_video_matches_manual_windows(setup):
  s = setup
  frames = _frames(s.root, 'train', 'train_00000')  # (7, 48, 64, 3), the config size
  text = _meta(s.root, 'train')['train_00000']['expressions']['0']['exp']
  calls = []

  def spy(variables, x, tokens, token_mask):
    calls.append(np.asarray(x))
    return s.predict_fn(variables, x, tokens, token_mask)

  probs, conf = predict.video_probabilities(spy, s.variables, frames, text, s.vocab, s.config)
  # 7 frames, T=4: windows [0..3] and [4..6 + blank], run as one batch of eval_batch_size=3
  # whose third window is blank.
  x = frames.astype(np.float32) / 255.0
  assert len(calls) == 1 and calls[0].shape == (3, T, 48, 64, 3)
  np.testing.assert_allclose(calls[0][0], x[:4], atol=1e-6)
  np.testing.assert_allclose(calls[0][1, :3], x[4:], atol=1e-6)
  assert not calls[0][1, 3].any() and not calls[0][2].any()
  assert probs.shape == (7, 48, 64) and conf.shape == (7,)

  # The same by hand: pad to 8 frames, two windows, the model, sigmoid, drop the padding.
  tokens, token_mask = s.vocab.encode(text, s.config.data.max_words)
  clip = np.zeros((8, 48, 64, 3), np.float32)
  clip[:7] = x
  out = jax.jit(s.model.apply)(s.variables, clip.reshape(2, T, 48, 64, 3),
                               np.stack([tokens] * 2), np.stack([token_mask] * 2))
  want = np.asarray(jax.nn.sigmoid(out.mask_logits)).reshape(8, 48, 64)[:7]
  want_conf = np.asarray(jax.nn.sigmoid(out.confidence)).reshape(8)[:7]
  np.testing.assert_allclose(probs, want, atol=1e-5)
  np.testing.assert_allclose(conf, want_conf, atol=1e-5)


  masks = predict.segment_video(s.predict_fn, s.variables, frames, text, s.vocab, s.config)
  assert masks.shape == (7, 48, 64) and masks.dtype == bool
  _assert_masks_equal(masks, want, 'config-size video')

  # A video twice the config size: the 2x2 box reduction gives back exactly the frames above,
  # and the masks come back at 96x128 (bilinear upsampling of the same probabilities).
  big = frames.repeat(2, axis=1).repeat(2, axis=2)
  big_masks = predict.segment_video(s.predict_fn, s.variables, big, text, s.vocab, s.config)
  assert big_masks.shape == (7, 96, 128)
  up = np.asarray(jax.image.resize(jnp.asarray(want), (7, 96, 128), 'bilinear',
                                   antialias=False))
  _assert_masks_equal(big_masks, up, '2x video')

  # Any other size comes back at its own size.
  odd = np.asarray(jax.image.resize(x, (7, 37, 90, 3), 'bilinear') * 255).astype(np.uint8)
  odd_masks = predict.segment_video(s.predict_fn, s.variables, odd, text, s.vocab, s.config)
  assert odd_masks.shape == (7, 37, 90) and odd_masks.dtype == bool


def test_video_probabilities_with_eval_frame_stride(setup):
  """eval_frame_stride=2: windows of every second frame ([0,2,4,6] and [1,3,5]), and each
  frame's probability lands back at its own index."""
  s = setup
  frames = _frames(s.root, 'train', 'train_00000')  # (7, 48, 64, 3)
  text = _meta(s.root, 'train')['train_00000']['expressions']['0']['exp']
  config = s.config.copy_and_resolve_references()
  config.data.eval_frame_stride = 2
  calls = []

  def spy(variables, x, tokens, token_mask):
    calls.append(np.asarray(x))
    return s.predict_fn(variables, x, tokens, token_mask)

  probs, conf = predict.video_probabilities(spy, s.variables, frames, text, s.vocab, config)
  x = frames.astype(np.float32) / 255.0
  assert len(calls) == 1 and calls[0].shape == (3, T, 48, 64, 3)
  np.testing.assert_allclose(calls[0][0], x[[0, 2, 4, 6]], atol=1e-6)
  np.testing.assert_allclose(calls[0][1, :3], x[[1, 3, 5]], atol=1e-6)
  assert not calls[0][1, 3].any() and not calls[0][2].any()

  tokens, token_mask = s.vocab.encode(text, s.config.data.max_words)
  clip = np.zeros((2, T, 48, 64, 3), np.float32)
  clip[0], clip[1, :3] = x[[0, 2, 4, 6]], x[[1, 3, 5]]
  out = jax.jit(s.model.apply)(s.variables, clip, np.stack([tokens] * 2),
                               np.stack([token_mask] * 2))
  window_probs = np.asarray(jax.nn.sigmoid(out.mask_logits))
  np.testing.assert_allclose(probs[[0, 2, 4, 6]], window_probs[0], atol=1e-5)
  np.testing.assert_allclose(probs[[1, 3, 5]], window_probs[1, :3], atol=1e-5)
  np.testing.assert_allclose(conf[[1, 3, 5]],
                             np.asarray(jax.nn.sigmoid(out.confidence))[1, :3], atol=1e-5)



def test_encode_expression(setup, caplog):
  s = setup
  max_words = s.config.data.max_words
  text = _meta(s.root, 'train')['train_00000']['expressions']['0']['exp']
  tokens, mask = predict.encode_expression(text.upper() + '!', s.vocab, max_words)
  want, want_mask = s.vocab.encode(text + ' !', max_words)
  np.testing.assert_array_equal(tokens[:mask.sum()], [*want[:want_mask.sum()]])
  for empty in ('', '   '):
    with pytest.raises(predict.PredictError, match='empty'):
      predict.encode_expression(empty, s.vocab, max_words)
  with pytest.raises(predict.PredictError, match='no word .* vocabulary'):
    predict.encode_expression('zzyzx qwxqz', s.vocab, max_words)
  long_text = ' '.join([text] * 10)
  tokens, mask = predict.encode_expression(long_text, s.vocab, max_words)
  assert mask.all() and len(tokens) == max_words
  assert any('max_words' in r.getMessage() for r in caplog.records)


@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')  # the test's own imageio calls
def test_read_video_folder_and_mp4(setup, tmp_path):
  s = setup
  folder = os.path.join(s.root, 'train', 'JPEGImages', 'train_00001')
  frames, names = predict.read_video(folder)
  np.testing.assert_array_equal(frames, _frames(s.root, 'train', 'train_00001'))
  assert names == _meta(s.root, 'train')['train_00001']['frames']

  path = str(tmp_path / 'clip.mp4')
  iio.imwrite(path, frames, plugin='FFMPEG', fps=5, macro_block_size=1)
  video, video_names = predict.read_video(path)
  assert video.shape == frames.shape and video.dtype == np.uint8
  assert video_names == [f'{i:05d}' for i in range(7)]
  err = np.abs(video.astype(np.float32) - frames).mean()
  assert err < 12, f'mean abs error {err:.1f} of the mp4 round trip'
  assert predict.video_fps(path) == pytest.approx(5.0)


def test_read_video_errors(setup, tmp_path):
  s = setup
  with pytest.raises(predict.PredictError, match='not found: .*nowhere'):
    predict.read_video(str(tmp_path / 'nowhere'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'notes.txt').write_text('no frames here')
  with pytest.raises(predict.PredictError, match=f'no frames .* in folder {empty}'):
    predict.read_video(str(empty))

  src = os.path.join(s.root, 'train', 'JPEGImages', 'train_00001')
  corrupt = shutil.copytree(src, tmp_path / 'corrupt')
  (corrupt / '00010.jpg').write_bytes(b'not a jpeg at all')
  with pytest.raises(predict.PredictError, match='cannot read frame .*corrupt/00010.jpg'):
    predict.read_video(str(corrupt))

  mixed = shutil.copytree(src, tmp_path / 'mixed')
  Image.new('RGB', (30, 20)).save(mixed / '00015.jpg')
  with pytest.raises(predict.PredictError, match='mixed/00015.jpg is 30x20'):
    predict.read_video(str(mixed))

  bad = tmp_path / 'bad.mp4'
  bad.write_bytes(b'garbage' * 20)
  with pytest.raises(predict.PredictError, match='cannot read video file .*bad.mp4'):
    predict.read_video(str(bad))


@pytest.mark.filterwarnings('ignore:os.fork:RuntimeWarning')  # the test's own imageio calls
def test_overlays(setup, tmp_path):
  s = setup
  frames = _frames(s.root, 'train', 'train_00002')
  masks = _ids(s.root, 'train', 'train_00002') == 1
  assert masks.any()
  over = predict.overlay_frames(frames, masks)
  outline = np.stack([predict._outline(m, 1) for m in masks])
  inside = masks & ~outline
  tint = np.round(0.5 * frames + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
  np.testing.assert_array_equal(over[inside], tint[inside])
  np.testing.assert_array_equal(over[~masks], frames[~masks])
  assert (over[outline] == predict.OVERLAY_OUTLINE).all() and outline.any()

  # 48 x 64 frames are enlarged 5x (the short side reaches OVERLAY_MIN_SIDE = 240), each
  # model pixel a 5 x 5 block; the caption sits above the frames.
  big_frames, big_masks = predict.enlarge(frames, masks)
  assert big_frames.shape == (7, 240, 320, 3)
  np.testing.assert_array_equal(big_masks[:, ::5, ::5], masks)
  np.testing.assert_array_equal(big_frames[:, 4::5, 4::5], frames)
  text = 'the red square moving to the left of the blue circle'
  rendered = predict.render_overlay(frames, masks, text)
  banner = predict.caption(text, 320)
  assert rendered.shape == (7, banner.shape[0] + 240, 320, 3)
  np.testing.assert_array_equal(rendered[:, banner.shape[0]:],
                                predict.overlay_frames(big_frames, big_masks))
  np.testing.assert_array_equal(rendered[3, :banner.shape[0]], banner)
  # The caption holds text (white pixels on the dark background), and other words draw
  # other pixels; a long sentence wraps onto more lines instead of running off the frame.
  assert (banner == 255).all(-1).sum() > 50
  assert (banner == predict.CAPTION_BACKGROUND).all(-1).mean() > 0.5
  assert not np.array_equal(predict.caption('the blue circle', 320)[:, :, 0],
                            predict.caption('the red square', 320)[:, :, 0])
  assert predict.caption(text * 3, 320).shape[0] > banner.shape[0]
  assert predict.render_overlay(frames, masks).shape == (7, 240, 320, 3)

  # The still: frames 0, 2, 4, 6 of the overlay side by side, 4 white pixels apart, the
  # caption once above them.
  strip = predict.overlay_strip(frames, masks, text)
  top_strip = predict.caption(text, 4 * 320 + 3 * 4).shape[0]
  assert strip.shape == (top_strip + 240, 4 * 320 + 3 * 4, 3)
  big = predict.render_overlay(frames, masks)
  for i, t in enumerate((0, 2, 4, 6)):
    np.testing.assert_array_equal(strip[top_strip:, i * 324:i * 324 + 320], big[t])
  assert (strip[top_strip:, 320:324] == 255).all()

  paths = predict.write_overlays(frames, masks, str(tmp_path), expression=text)
  assert set(paths) == {'gif', 'mp4', 'strip'}
  with Image.open(paths['strip']) as still:
    np.testing.assert_array_equal(np.asarray(still.convert('RGB')), strip)
  top = banner.shape[0]
  with Image.open(paths['gif']) as gif:
    assert gif.n_frames == 7
    for t in range(7):
      gif.seek(t)
      rgb = np.asarray(gif.convert('RGB')).astype(np.float32)
      assert rgb.shape == (top + 240, 320, 3)
      rgb = rgb[top:]
      redness = rgb[..., 0] - rgb[..., 1]
      inside_big, outside_big = predict.enlarge(frames, inside)[1][t], ~big_masks[t]
      assert redness[inside_big].mean() > redness[outside_big].mean() + 40, t
      # Outside the mask the frame is unchanged, up to the GIF's 256-colour palette.
      assert np.abs(rgb[outside_big] - big_frames[t][outside_big]).mean() < 12, t
  mp4 = iio.imread(paths['mp4'], plugin='FFMPEG')
  assert mp4.shape == (7, top + 240, 320, 3)


def test_predict_main_one_video(setup, tmp_path):
  s = setup
  folder = os.path.join(s.root, 'train', 'JPEGImages', 'train_00003')
  text = _meta(s.root, 'train')['train_00003']['expressions']['0']['exp']
  result = predict.predict_main(s.config, str(tmp_path), variables=s.variables, vocab=s.vocab,
                                predict_fn=s.predict_fn, video=folder, expression=text)
  assert result['output_dir'] == str(tmp_path / 'predictions' / 'train_00003')
  names = _meta(s.root, 'train')['train_00003']['frames']
  assert result['masks'] == [os.path.join(result['output_dir'], 'masks', n + '.png')
                             for n in names]
  want = predict.segment_video(s.predict_fn, s.variables, _frames(s.root, 'train', 'train_00003'),
                               text, s.vocab, s.config)
  for path, mask in zip(result['masks'], want, strict=True):
    with Image.open(path) as im:
      assert im.mode == 'L' and im.size == (64, 48)
      arr = np.asarray(im)
    assert set(np.unique(arr)) <= {0, 255}
    np.testing.assert_array_equal(arr > 0, mask)
  assert os.path.exists(result['gif']) and os.path.exists(result['mp4'])
  with pytest.raises(predict.PredictError, match='--video and --expression go together'):
    predict.predict_main(s.config, str(tmp_path), variables=s.variables, vocab=s.vocab,
                         predict_fn=s.predict_fn, video=folder)


def test_example_overlays_pair_the_motion_look_alikes(setup, tmp_path):
  """One overlay per kind, and the motion expression's look-alike twin beside it: both
  segmented, and one still that stacks the two strips (same frames, two sentences)."""
  s = setup
  config = s.config.copy_and_resolve_references()
  config.data.eval_split = 'train'  # the tiny train split has motion clips
  with open(os.path.join(s.root, 'meta_expressions', 'train', 'expression_kinds.json')) as f:
    kinds = json.load(f)['videos']
  written = predict.write_example_overlays(s.predict_fn, s.variables, config, s.vocab,
                                           str(tmp_path))
  names = sorted(os.path.basename(w) for w in written)
  motion = [n for n in names if n.startswith('motion_')]
  assert len(motion) == 2 and len(names) == len({n.split('_')[0] for n in names}) + 1
  video = '_'.join(motion[0].split('_')[1:3])
  assert video == '_'.join(motion[1].split('_')[1:3])
  ids = sorted(n.split('_')[-1] for n in motion)
  assert ids == sorted(e for e, k in kinds[video].items() if k == 'motion')[:2]
  pair = np.asarray(Image.open(tmp_path / f'motion_{video}_pair.png'))
  strips = [np.asarray(Image.open(tmp_path / n / 'overlay_strip.png')) for n in motion]
  assert pair.shape[0] == sum(x.shape[0] for x in strips) + predict.STRIP_GAP
  # motion[0] is the first motion expression of the clip: its strip comes first.
  np.testing.assert_array_equal(pair[:strips[0].shape[0], :strips[0].shape[1]], strips[0][..., :3])


def test_predict_split_submission(setup, tmp_path):
  """A model size (32x48) unlike the videos' (48x64): masks are written at 48x64, one per
  (video, exp_id, frame), and the zip has Annotations/ at its top."""
  s = setup
  config = get_config()
  config.data = ml_collections.ConfigDict(s.config.data.to_dict())
  config.data.height, config.data.width = 32, 48
  out = tmp_path / 'sub'
  stale = out / 'Annotations' / 'old_video' / '0'
  stale.mkdir(parents=True)
  (stale / '00000.png').write_bytes(b'stale')
  result = predict.predict_main(config, str(tmp_path), variables=s.variables, vocab=s.vocab,
                                predict_fn=s.predict_fn, builder=s.builder, output_dir=str(out))
  assert result['zip'] == str(out / 'submission.zip')

  meta = _meta(s.root, 'valid')
  want = {f'Annotations/{v}/{e}/{f}.png' for v in meta for e in meta[v]['expressions']
          for f in meta[v]['frames']}
  got = {os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out / 'Annotations')
         for f in fs}
  assert got == want
  for rel in sorted(want)[::5]:
    with Image.open(out / rel) as im:
      assert im.size == (64, 48), rel
      assert set(np.unique(np.asarray(im))) <= {0, 255}, rel
  with zipfile.ZipFile(result['zip']) as zf:
    assert set(zf.namelist()) == want
  with open(out / 'confidence.json') as f:
    conf = json.load(f)
  assert {(v, e) for v in conf for e in conf[v]} == {(v, e) for v in meta
                                                     for e in meta[v]['expressions']}
  assert all(len(c) == 7 and all(0 <= x <= 1 for x in c) for es in conf.values()
             for c in es.values())
