r"""Ports STCN's released weights (`stcn.pth`, a torch state_dict) to an Orbax checkpoint.

  python -m rvos_jax.port_stcn --torch_checkpoint stcn.pth --output_dir ~/ckpt/stcn

Every key must port onto rvos_jax.models.stcn.STCN exactly (rvos_jax.porting.torch_to_flax is
strict: every missing, unused or mis-shaped key is named); only BatchNorm's step counters
(`*.num_batches_tracked`) are dropped, and a 'module.' prefix (a DistributedDataParallel
save) is stripped. A value encoder trained single-object (STCN's stage 0: conv1 with 4 input
channels) gets a fifth input channel of zeros, as STCN's own evaluation does. torch is not
needed to read the file. The output:
  output_dir/arrays/              Orbax checkpoint: a nested dict mirroring the module tree
  output_dir/port_metadata.json   architecture (widths), source file, its sha256
`load_stcn(output_dir)` returns (model, variables); `config.inference.stcn_checkpoint` points
at output_dir.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from rvos_jax import porting
from rvos_jax.models import stcn

# The released model's widths (STCN's defaults); port_metadata.json records them.
RELEASED = dict(key_depth=50, value_depth=18, width=1.0, key_dim=64, value_dim=512,
                decoder_dim=256, stem_pool=True)
_VALUE_CONV1 = 'value_encoder.conv1.weight'


def abstract_variables(model: stcn.STCN):
  """The variables' shapes (nothing allocated)."""
  frames = jnp.zeros((1, 32, 32, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), frames, jnp.zeros((1, 1, 32, 32)),
                        frames)


def clean_state_dict(state_dict: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray],
                                                                    list[str]]:
  """-> (state_dict to port, notes on what was changed): 'module.' stripped, counters dropped,
  a 4-channel value-encoder conv1 padded with a zero 'other objects' channel."""
  notes = []
  out = {}
  for key, value in state_dict.items():
    if porting.ignore_num_batches_tracked(key):
      continue
    if key.startswith('module.'):
      key = key[len('module.'):]
    out[key] = np.asarray(value)
  if len(out) < len(state_dict):
    notes.append(f'dropped {len(state_dict) - len(out)} *.num_batches_tracked')
  if _VALUE_CONV1 in out and out[_VALUE_CONV1].shape[1] == 4:
    w = out[_VALUE_CONV1]
    out[_VALUE_CONV1] = np.concatenate([w, np.zeros_like(w[:, :1])], 1)
    notes.append(f'{_VALUE_CONV1}: 4 input channels (single-object); added a zero fifth')
  return out, notes


def port_state_dict(state_dict: Mapping[str, np.ndarray], **architecture
                    ) -> tuple[stcn.STCN, dict[str, Any], list[str]]:
  """STCN state_dict -> (model, Flax variables, notes). Raises porting.PortError naming every
  missing, unused or mis-shaped key."""
  model = stcn.STCN(**{**RELEASED, **architecture})
  cleaned, notes = clean_state_dict(state_dict)
  return model, porting.torch_to_flax(cleaned, abstract_variables(model)), notes


def port_checkpoint(torch_checkpoint: str, output_dir: str, **architecture) -> dict[str, Any]:
  """Reads, ports and writes; returns the metadata written next to the checkpoint."""
  if os.path.exists(os.path.join(output_dir, porting.ARRAYS_DIR)):
    raise FileExistsError(f'{output_dir} already holds a checkpoint; choose a new --output_dir')
  state_dict = porting.read_torch_checkpoint(torch_checkpoint)
  model, variables, notes = port_state_dict(state_dict, **architecture)
  for note in notes:
    logging.info('%s: %s', torch_checkpoint, note)
  leaves = jax.tree.leaves(variables)
  metadata = {
      'format': 'rvos_jax STCN: module path -> kernel/scale/bias/mean/var',
      'architecture': {f: getattr(model, f) for f in RELEASED},
      'source': os.path.abspath(torch_checkpoint),
      'sha256': porting.sha256(torch_checkpoint),
      'num_ported_arrays': len(leaves),
      'num_parameters': int(sum(x.size for x in leaves)),
      'notes': notes,
  }
  porting.save_backbone_checkpoint(porting.merge_collections(variables), output_dir, metadata)
  logging.info('Ported %d arrays (%d values) of STCN to %s', len(leaves),
               metadata['num_parameters'], output_dir)
  return metadata


def load_stcn(checkpoint_dir: str) -> tuple[stcn.STCN, dict[str, Any]]:
  """(model, variables) of a ported (or trained and exported) STCN checkpoint; the widths
  come from its port_metadata.json. Strict: a checkpoint of other shapes is refused by key."""
  path = os.path.join(checkpoint_dir, porting.METADATA_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{checkpoint_dir}: no {porting.METADATA_FILE} (expected the '
                            'output of `python -m rvos_jax.port_stcn` or of STCN training)')
  with open(path) as f:
    architecture = json.load(f).get('architecture', RELEASED)
  model = stcn.STCN(**architecture)
  variables = porting.load_backbone_checkpoint(abstract_variables(model), checkpoint_dir,
                                               subtree='')
  return model, jax.tree.map(jnp.asarray, variables)


FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.torch_checkpoint or not FLAGS.output_dir:
    raise app.UsageError('--torch_checkpoint and --output_dir are required.')
  port_checkpoint(FLAGS.torch_checkpoint, FLAGS.output_dir)


if __name__ == '__main__':
  flags.DEFINE_string('torch_checkpoint', None, 'torch.save file holding STCN\'s state_dict.')
  flags.DEFINE_string('output_dir', None, 'New directory for the Orbax checkpoint and metadata.')
  app.run(main)
