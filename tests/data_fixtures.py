"""Shared fixtures of the data tests (import them into a test module; no conftest needed).

A tiny refer_shapes dataset (6 train / 4 valid videos of 8 frames at 48x64) generated once per
test session, its TFDS records, and the matching `config.data` (T=4). Test modules load the
fixtures with `pytest_plugins = ('tests.data_fixtures',)`; the helpers are imported normally,
hence PYTEST_DONT_REWRITE (this module has no assertions to rewrite).
"""

import json
import os
import shutil

import pytest

from data_pipelines import builders, pipelines, refer_shapes
from data_pipelines.config import get_data_config

TINY = dict(num_train_videos=6, num_valid_videos=4, num_frames=8, height=48, width=64, seed=3)


def tiny_config(root, **overrides):
  c = get_data_config()
  c.root = str(root)
  c.num_frames, c.height, c.width = 4, TINY['height'], TINY['width']
  c.shuffle_buffer = 16
  c.batch_size = 2
  c.eval_batch_size = 3
  c.update(overrides)
  return c


def drop_obj_ids(meta_expressions_path) -> dict:
  """Removes every expression's obj_id from a meta_expressions.json (as Refer-YouTube-VOS valid
  publishes it); returns its 'videos'."""
  with open(meta_expressions_path) as f:
    meta = json.load(f)
  for entry in meta['videos'].values():
    for exp in entry['expressions'].values():
      del exp['obj_id']
  with open(meta_expressions_path, 'w') as f:
    json.dump(meta, f)
  return meta['videos']


def make_layout(path, **kwargs):
  """A small generated layout at `path` (for tests that then damage it)."""
  args = dict(num_train_videos=2, num_valid_videos=0, num_frames=4, height=32, width=40,
              seed=1)
  args.update(kwargs)
  refer_shapes.generate(str(path), **args)
  return str(path)


@pytest.fixture(scope='session')
def tiny_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('refer_shapes_tiny')
  refer_shapes.generate(str(root), **TINY)
  return str(root)


@pytest.fixture(scope='session')
def tiny_builder(tiny_root):
  return builders.prepare(tiny_config(tiny_root))


@pytest.fixture(scope='session')
def tiny_vocab(tiny_builder):
  return pipelines.build_vocabulary(tiny_builder)


def copy_layout(src, dst):
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns('tfds'))
  return str(dst)


def video_dir(root, split, kind, video):
  return os.path.join(root, split, kind, video)
