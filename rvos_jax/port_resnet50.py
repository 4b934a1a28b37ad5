r"""Ports a torchvision ResNet state_dict (e.g. ResNet-50 IMAGENET1K_V1/V2) to an Orbax checkpoint.

  python -m rvos_jax.port_resnet50 --torch_checkpoint resnet50-11ad3fa6.pth \
      --output_dir ~/ckpt/resnet50_imagenet

The classifier (`fc.*`) and BatchNorm's step counters (`*.num_batches_tracked`) have no
counterpart in the backbone and are dropped (and logged); every other key must port onto
`ResNet(depth)` exactly (rvos_jax.porting.torch_to_flax is strict). The output is
  output_dir/arrays/              Orbax checkpoint: a nested dict mirroring the module tree,
                                  leaves kernel / scale / bias / mean / var (no collections, so
                                  it loads into the frozen- and the trainable-BN variant alike)
  output_dir/port_metadata.json   depth, source file, its sha256, dropped keys
Set `config.model.backbone_init` to output_dir; model init then calls
`rvos_jax.porting.load_backbone_checkpoint`. torch is not needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from rvos_jax import porting
from rvos_jax.models import resnet

FLAGS = flags.FLAGS
flags.DEFINE_string('torch_checkpoint', None,
                    'torch.save file holding a torchvision ResNet state_dict (.pth).')
flags.DEFINE_string('output_dir', None, 'New directory for the Orbax checkpoint and metadata.')
flags.DEFINE_enum('depth', '50', ['18', '34', '50', '101', '152'], 'ResNet depth of the file.')


def is_dropped_key(key: str) -> bool:
  """Keys of a torchvision classifier state_dict that the backbone has no place for."""
  return key.startswith('fc.') or porting.ignore_num_batches_tracked(key)


def split_state_dict(state_dict: Mapping[str, np.ndarray]
                     ) -> tuple[dict[str, np.ndarray], list[str]]:
  """-> (the backbone's keys, the sorted dropped keys: fc.* and *.num_batches_tracked)."""
  dropped = sorted(k for k in state_dict if is_dropped_key(k))
  kept = {k: v for k, v in state_dict.items() if not is_dropped_key(k)}
  return kept, dropped


def port_state_dict(state_dict: Mapping[str, np.ndarray], depth: int = 50
                    ) -> tuple[dict[str, Any], list[str]]:
  """torchvision state_dict -> (collection-agnostic nested dict of float32 arrays, dropped keys).

  Raises porting.PortError naming every missing, unused or mis-shaped key.
  """
  kept, dropped = split_state_dict(state_dict)
  # Only shapes are needed: eval_shape skips allocating and initialising 25M parameters.
  target = jax.eval_shape(resnet.ResNet(depth=depth).init, jax.random.key(0),
                          jnp.zeros((1, 64, 64, 3), jnp.float32))
  variables = porting.torch_to_flax(kept, target)
  return porting.merge_collections(variables), dropped


def port_checkpoint(torch_checkpoint: str, output_dir: str, depth: int = 50) -> dict[str, Any]:
  """Reads, ports and writes; returns the metadata written next to the checkpoint."""
  if os.path.exists(os.path.join(output_dir, porting.ARRAYS_DIR)):
    raise FileExistsError(f'{output_dir} already holds a checkpoint; choose a new --output_dir')
  state_dict = porting.read_torch_checkpoint(torch_checkpoint)
  tree, dropped = port_state_dict(state_dict, depth)
  num_fc = sum(k.startswith('fc.') for k in dropped)
  logging.info('Dropped %d keys (%d fc.*, %d *.num_batches_tracked): %s', len(dropped), num_fc,
               len(dropped) - num_fc, ', '.join(dropped))
  leaves = jax.tree.leaves(tree)
  metadata = {
    'format': 'rvos_jax ResNet backbone: module path -> kernel/scale/bias/mean/var',
    'depth': depth,
    'source': os.path.abspath(torch_checkpoint),
    'sha256': porting.sha256(torch_checkpoint),
    'num_ported_arrays': len(leaves),
    'num_parameters': int(sum(x.size for x in leaves)),
    'dropped_keys': dropped,
  }
  arrays_dir = porting.save_backbone_checkpoint(tree, output_dir, metadata)
  logging.info('Ported %d arrays (%d values) of a ResNet-%d to %s', len(leaves),
               metadata['num_parameters'], depth, arrays_dir)
  return metadata


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.torch_checkpoint or not FLAGS.output_dir:
    raise app.UsageError('--torch_checkpoint and --output_dir are required.')
  port_checkpoint(FLAGS.torch_checkpoint, FLAGS.output_dir, int(FLAGS.depth))


if __name__ == '__main__':
  app.run(main)
