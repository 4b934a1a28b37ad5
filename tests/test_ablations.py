"""Table 3's switches change the parameter tree as expected (one test per switch)."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from configs import default as configs_default
from rvos_jax.models import mlrl_sa

CFG = dict(vocab_size=30, hidden_dim=48, decoder_dim=16, backbone_depth=18, backbone_width=0.25,
           text_layers=1, text_heads=4, text_ffn_dim=64)
D = CFG['hidden_dim']
INPUTS = (jnp.zeros((1, 2, 64, 96, 3)), jnp.zeros((1, 5), jnp.int32), jnp.ones((1, 5), bool))


def params(**switches):
  model = mlrl_sa.MLRLSA(**{**CFG, **switches})
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *INPUTS))['params']


def fused_width(p):
  """Channels of M = [M_video, M_frame, M_object] as seen by the heads that consume it."""
  seg_in = p['segmentation']['seg_head']['in_proj']['kernel'].shape[2]
  bdry_in = p['segmentation']['boundary_head']['in_proj']['kernel'].shape[2]
  conf_in = p['confidence']['fc1']['kernel'].shape[0]
  assert seg_in == bdry_in == conf_in
  return seg_in


LEVEL_MODULES = {
    'video': {'video_embedding', 'video_language', 'video_alignment'},
    'frame': {'frame_embedding', 'frame_language', 'frame_alignment'},
    'object': {'object_encoder', 'object_decoder', 'object_language', 'object_alignment'},
}
SHARED = {'backbone', 'reduce', 'word_embedding', 'segmentation', 'confidence'}


def test_full_model_tree():
  p = params()
  assert set(p) == SHARED | set().union(*LEVEL_MODULES.values())
  assert fused_width(p) == 3 * D
  assert set(p['object_encoder']) == {'encoder', 'conv'}
  assert set(p['video_alignment']) == {'visual', 'language', 'out'}


@pytest.mark.parametrize('level', ['video', 'frame', 'object'])
def test_without_level(level):
  p = params(**{f'use_{level}_level': False})
  others = set().union(*(m for k, m in LEVEL_MODULES.items() if k != level))
  assert set(p) == SHARED | others
  assert fused_width(p) == 2 * D


def test_object_level_off_returns_no_object_map():
  # Shapes only (jax.eval_shape): running the model op by op on the CPU took 15 s.
  model = mlrl_sa.MLRLSA(**CFG, use_object_level=False)
  out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), *INPUTS), *INPUTS))
  assert out.object_logits is None and out.mask_logits.shape == (1, 2, 64, 96)


def test_single_level_and_no_level():
  p = params(use_video_level=False, use_object_level=False)
  assert fused_width(p) == D
  with pytest.raises(ValueError, match='at least one'):
    params(use_video_level=False, use_frame_level=False, use_object_level=False)


def test_object_encoder_variants():
  video = params(object_encoder='video')['object_encoder']
  frame = params(object_encoder='frame')['object_encoder']
  fcn = params(object_encoder='fcn')['object_encoder']
  assert set(video) == set(frame) == {'encoder', 'conv'}
  assert set(video['encoder']['attn']) == {'q', 'k', 'v'}
  assert set(fcn) == {'conv0', 'conv'}
  assert fcn['conv0']['kernel'].shape == (3, 3, D, D)
  with pytest.raises(ValueError, match='object_encoder'):
    params(object_encoder='transformer')


def test_alignment_switch():
  p = params(alignment='none')
  for level in ('video', 'frame', 'object'):
    assert set(p[f'{level}_alignment']) == {'sentence', 'out'}
  with pytest.raises(ValueError, match='alignment'):
    params(alignment='cross')


def test_embedding_position_switch_adds_no_parameters():
  # The sine encodings are constants: a checkpoint of either setting has the same arrays (the
  # config check, not the tree, keeps one from being resumed as the other).
  none, sine = params(), params(embedding_position='sine')
  assert jax.tree.map(lambda x: x.shape, none) == jax.tree.map(lambda x: x.shape, sine)
  with pytest.raises(ValueError, match='embedding_position'):
    params(embedding_position='learned')
  with pytest.raises(ValueError, match='embedding_position'):  # no attention left to check it
    params(embedding_position='learned', use_video_level=False, use_frame_level=False,
           object_encoder='fcn')


def test_embedding_heads_switch_splits_the_same_parameters():
  # Heads split the channels of the same Q, K, V (no output projection, as in Eq. 1-3): the
  # tree is unchanged, the numbers are not; a head count that does not divide d is refused.
  one, four = params(), params(embedding_heads=4)
  assert jax.tree.map(lambda x: x.shape, one) == jax.tree.map(lambda x: x.shape, four)
  with pytest.raises(ValueError, match='embedding_heads'):
    params(embedding_heads=5)


def test_removed_switches_are_refused_by_name():
  # model.alignment_fusion and model.video_temporal_kernel measured nothing and were removed
  # (docs/refer_shapes_experiments.md); a config that still asks for them is an error, not a
  # silently different network. Their kept value is accepted, so old configs load.
  config = ml_collections.ConfigDict(configs_default.get_config().model.to_dict())
  config.alignment_fusion, config.video_temporal_kernel = 'add', 0
  assert isinstance(mlrl_sa.build_model(config, 17), mlrl_sa.MLRLSA)
  for key, value in (('alignment_fusion', 'multiply'), ('video_temporal_kernel', 3)):
    bad = ml_collections.ConfigDict(config.to_dict())
    bad[key] = value
    with pytest.raises(ValueError, match=f'model.{key}={value!r}: this switch was removed'):
      mlrl_sa.build_model(bad, 17)
  with pytest.raises(TypeError):
    mlrl_sa.MLRLSA(vocab_size=17, alignment_fusion='multiply')


def test_video_motion_adds_one_stream_on_the_video_level():
  # 'rgb_diff' adds the stream's convolutions and nothing else; without the video level
  # there is nothing to add it to.
  base, moving = params(), params(video_motion='rgb_diff')
  assert set(moving) - set(base) == {'video_motion'}
  assert jax.tree.map(lambda x: x.shape, {k: v for k, v in moving.items() if k != 'video_motion'}
                      ) == jax.tree.map(lambda x: x.shape, base)
  assert moving['video_motion']['out']['kernel'].shape[-1] == D
  assert 'video_motion' not in params(video_motion='rgb_diff', use_video_level=False)
  with pytest.raises(ValueError, match='video_motion'):
    params(video_motion='flow')


def test_velocity_head_adds_one_linear_map_on_the_video_level():
  base, head = params(), params(velocity_head=True)
  assert set(head) - set(base) == {'video_velocity'}
  assert head['video_velocity']['kernel'].shape == (D, 2)
  with pytest.raises(ValueError, match='velocity_head'):
    params(velocity_head=True, use_video_level=False)


def test_velocity_match_adds_a_query_to_the_video_text_pixel_head_only():
  base = params(velocity_head=True, text_pixel_head=True)
  match = params(velocity_head=True, text_pixel_head=True, velocity_match=True)
  assert set(match['video_text_pixel']) - set(base['video_text_pixel']) == {'velocity_query'}
  assert match['video_text_pixel']['velocity_query']['kernel'].shape == (D, 3)
  for level in ('frame', 'object'):
    assert match[f'{level}_text_pixel'] == base[f'{level}_text_pixel']
  for missing in (dict(velocity_head=True), dict(text_pixel_head=True)):
    with pytest.raises(ValueError, match='velocity_match'):
      params(velocity_match=True, **missing)


def test_text_pixel_to_decoder_widens_the_segmentation_heads_input():
  # One more input channel per level for the boundary and segmentation heads; the confidence
  # head still reads M alone; nothing else changes. It needs the text-to-pixel heads.
  base, fed = params(text_pixel_head=True), params(text_pixel_head=True, text_pixel_to_decoder=True)
  for head in ('seg_head', 'boundary_head'):
    assert fed['segmentation'][head]['in_proj']['kernel'].shape[2] == 3 * D + 3
    assert base['segmentation'][head]['in_proj']['kernel'].shape[2] == 3 * D
  assert fed['confidence']['fc1']['kernel'].shape[0] == 3 * D
  two = params(text_pixel_head=True, text_pixel_to_decoder=True, use_frame_level=False)
  assert two['segmentation']['seg_head']['in_proj']['kernel'].shape[2] == 2 * D + 2
  shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)
  assert shapes({k: v for k, v in fed.items() if k != 'segmentation'}) == shapes(
      {k: v for k, v in base.items() if k != 'segmentation'})
  with pytest.raises(ValueError, match='text_pixel_to_decoder needs'):
    params(text_pixel_to_decoder=True)


def test_backbone_stem_pool_switch_drops_res2_from_the_heads():
  # Without the stem pool res2 is at stride 2: the three pyramid heads stop at res3 (stride 4,
  # as before) and lose res2's lateral and block; the backbone's parameters are unchanged.
  base = params(backbone_output_stride=8)
  nopool = params(backbone_output_stride=8, backbone_stem_pool=False)
  shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)
  assert shapes(base['backbone']) == shapes(nopool['backbone'])
  for head in (base['object_decoder'], base['segmentation']['seg_head'],
               base['segmentation']['boundary_head']):
    assert {'lateral_res2', 'block_res2'} <= set(head)
  for head in (nopool['object_decoder'], nopool['segmentation']['seg_head'],
               nopool['segmentation']['boundary_head']):
    assert not {'lateral_res2', 'block_res2'} & set(head)
    assert {'lateral_res3', 'block_res3', 'lateral_res5'} <= set(head)
  assert set(nopool) == set(base)


def test_decoder_finest_stride_2_gives_the_heads_res2_back_without_the_stem_pool():
  nopool = params(backbone_output_stride=8, backbone_stem_pool=False)
  fine = params(backbone_output_stride=8, backbone_stem_pool=False, decoder_finest_stride=2)
  heads = lambda tree: (tree['object_decoder'], tree['segmentation']['seg_head'],
                        tree['segmentation']['boundary_head'])
  for head in heads(fine):
    assert {'lateral_res2', 'block_res2', 'lateral_res3', 'block_res3'} <= set(head)
    # res2 of ResNet-18 x0.25 has 16 channels.
    assert head['lateral_res2']['kernel'].shape[2] == 16
  without = lambda tree: jax.tree.map(
      lambda x: x.shape, {k: {n: v for n, v in h.items() if not n.endswith('res2')}
                          for k, h in zip('abc', heads(tree), strict=True)})
  assert without(fine) == without(nopool)
  coarse = params(backbone_output_stride=8, backbone_stem_pool=False, decoder_finest_stride=8)
  for head in heads(coarse):
    assert not {'lateral_res2', 'lateral_res3', 'block_res3'} & set(head)
  with pytest.raises(ValueError, match='decoder_finest_stride must be 2, 4 or 8'):
    params(decoder_finest_stride=3)


def test_text_pixel_head_switch_adds_one_head_per_level():
  base, heads = params(), params(text_pixel_head=True)
  added = set(heads) - set(base)
  assert added == {'video_text_pixel', 'frame_text_pixel', 'object_text_pixel'}
  for name in added:
    assert set(heads[name]) == {'sentence', 'pixels', 'bias'}
    assert heads[name]['pixels']['kernel'].shape == (D, D)
  assert set(params(text_pixel_head=True, use_frame_level=False)) - set(base) == {
      'video_text_pixel', 'object_text_pixel'}


def test_frame_only_has_nothing_that_sees_two_frames():
  # The motion control: without the video level and with the frame object encoder, frame 0's
  # outputs do not depend on frame 1; in the full model (RGB-difference stream on) they do.
  from configs import ablations  # noqa: PLC0415

  overrides = {k.split('.')[1]: v for k, v in ablations.VARIANTS['frame_only'].items()}
  frames = jax.random.uniform(jax.random.key(1), INPUTS[0].shape)
  moved = frames.at[:, 1].set(jax.random.uniform(jax.random.key(2), frames[:, 1].shape))
  tokens = jnp.array([[3, 5, 7, 0, 0]]), jnp.array([[1, 1, 1, 0, 0]], bool)

  def frame0_change(**switches):
    model = mlrl_sa.MLRLSA(**{**CFG, **switches})
    variables = model.init(jax.random.key(0), frames, *tokens)
    out = lambda x: model.apply(variables, x, *tokens, train=False)
    a, b = out(frames), out(moved)
    return max(float(jnp.abs(x[:, 0] - y[:, 0]).max()) for x, y in zip(
        (a.mask_logits, a.boundary_logits, a.confidence),
        (b.mask_logits, b.boundary_logits, b.confidence), strict=True))

  p = params(video_motion='rgb_diff', **overrides)
  assert not [name for name in p if name.startswith('video')]
  assert frame0_change(video_motion='rgb_diff', **overrides) == 0.0
  assert frame0_change(video_motion='rgb_diff') > 1e-4


def test_backbone_switches():
  p50 = params(backbone_depth=50, backbone_width=1.0)
  assert p50['reduce']['kernel'].shape == (1, 1, 2048, D)
  p18 = params()
  assert p18['reduce']['kernel'].shape == (1, 1, 128, D)  # 512 * 0.25


def test_ablation_configs_build_their_variant():
  from configs import ablations  # noqa: PLC0415

  for variant, overrides in ablations.VARIANTS.items():
    config = ablations.get_config(f'refer_shapes,{variant}')
    for key, value in overrides.items():
      section, field = key.split('.')
      assert config[section][field] == value
  assert ablations.get_config('default,no_alignment').model.alignment == 'none'
  assert ablations.get_config('default').data.num_frames == 12
  with pytest.raises(ValueError, match='unknown ablation'):
    ablations.get_config('default,no_language')


def test_refer_shapes_long_differs_from_the_default_only_in_steps():
  """The `long` budget is the same run with twice the steps, so its figures compare with the
  default's; `motion` is the previous default at 2000 steps plus the velocity terms; the
  frame-only control of each keeps its budget; bad arguments are named."""
  from configs import ablations, refer_shapes  # noqa: PLC0415

  base, long = refer_shapes.get_config().to_dict(), refer_shapes.get_config('long').to_dict()
  assert long['train'].pop('num_steps') == 2 * base['train'].pop('num_steps') == 4000
  assert long == base
  assert ablations.get_config('refer_shapes_long,no_video_level').train.num_steps == 4000
  # The controls: the velocity terms read the video level and go with it.
  for name, steps in (('refer_shapes', 2000), ('refer_shapes_motion', 2000)):
    for variant in ('no_video_level', 'frame_only'):
      control = ablations.get_config(f'{name},{variant}')
      assert control.train.num_steps == steps and not control.model.use_video_level
      assert not control.model.velocity_head and not control.model.velocity_match
    assert ablations.get_config(f'{name},frame_only').model.object_encoder == 'frame'
  with pytest.raises(ValueError, match="'longer'"):
    refer_shapes.get_config('longer')
  # The default: the previous one with 4 similar expressions per clip of 4 frames, 2000 steps,
  # the velocity terms (all four of them: the loss needs the data) and the expected-motion loss
  # on the motion expressions, read from the query's own words at 10x the learning rate.
  previous = refer_shapes.get_config('previous').to_dict()
  default = refer_shapes.get_config().to_dict()
  velocity = {('model', 'velocity_head'): True, ('model', 'velocity_match'): True,
              ('loss', 'velocity_weight'): 0.5, ('data', 'object_velocity'): True}
  changed = {**velocity, ('data', 'expressions_per_clip'): 4, ('data', 'num_frames'): 4,
             ('data', 'expression_pairing'): 'similar', ('train', 'num_steps'): 2000,
             ('train', 'checkpoint_every'): 500, ('loss', 'expected_motion_weight'): 0.25,
             ('loss', 'expected_motion_scale'): 8.0, ('data', 'motion_kinds'): ('motion',),
             ('model', 'velocity_query_words'): 'own',
             ('optim', 'velocity_query_lr_multiplier'): 10.0}
  for (section, key), value in changed.items():
    assert default[section].pop(key) == value != previous[section].pop(key), key
  assert default == previous
  # `motion` is the previous default at 2000 steps plus the velocity terms.
  motion, previous = (refer_shapes.get_config(a).to_dict() for a in ('motion', 'previous'))
  for (section, key), value in velocity.items():
    assert motion[section].pop(key) == value and previous[section].pop(key) != value
  assert motion['train'].pop('num_steps') == 2 * previous['train'].pop('num_steps') == 2000
  assert motion == previous


def test_mask_upsample_subpixel_widens_only_the_last_convs():
  # The heads end at their finest level's stride: 4 with the stem pool (res2), 4 without it
  # at output stride 8 (res3), 2 with decoder_finest_stride=2 (res2): r*r logits per cell.
  c = CFG['decoder_dim']
  shapes = lambda tree: jax.tree.map(lambda x: x.shape, tree)
  for switches, r in (({}, 4), (dict(backbone_output_stride=8, backbone_stem_pool=False), 4),
                      (dict(backbone_output_stride=8, backbone_stem_pool=False,
                            decoder_finest_stride=2), 2)):
    base, sub = params(**switches), params(mask_upsample='subpixel', **switches)
    seg = sub['segmentation']
    assert seg['fcnn']['kernel'].shape == (3, 3, c + r * r, r * r)
    assert seg['boundary_head']['out']['kernel'].shape == (3, 3, c, r * r)
    drop = lambda p: {**p, 'segmentation': {
        **p['segmentation'], 'fcnn': None,
        'boundary_head': {k: v for k, v in p['segmentation']['boundary_head'].items()
                          if k != 'out'}}}
    assert shapes(drop(sub)) == shapes(drop(base))
  with pytest.raises(ValueError, match="mask_upsample must be 'bilinear' or 'subpixel'"):
    params(mask_upsample='nearest')
