"""Inference from a checkpoint: `main.py --mode eval` and `--mode predict`.

  evaluate_checkpoint  J, F, J&F and prec@X of the latest checkpoint on config.data.eval_split
  predict_checkpoint   one video + expression (masks, overlays), or the eval split as a
                       submission zip

Both restore the latest checkpoint of a workdir strictly (restore_for_inference: the vocabulary
and the config must match) and hand the variables to rvos_jax.predict, which does the work
without knowing about checkpoints. With config.inference.propagation='stcn' both propagate
each expression's most confident mask with STCN (rvos_jax.propagation; §3.4).
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
from absl import logging

from data_pipelines import builders
from data_pipelines.vocabulary import Vocabulary
from rvos_jax import checkpointing, evaluation, predict, propagation, sharding, train
from rvos_jax.models import mlrl_sa


def restore_for_inference(config: ml_collections.ConfigDict, workdir: str):
  """(model, variables, vocab) of the latest checkpoint in workdir, strictly checked."""
  workdir = os.path.abspath(workdir)
  vocab_path = config.data.get('vocab_path') or os.path.join(workdir, 'vocab.txt')
  if not os.path.exists(vocab_path):
    raise FileNotFoundError(f'{vocab_path} does not exist: train in {workdir} first')
  vocab = Vocabulary.load(vocab_path)
  model = mlrl_sa.build_model(config.model, len(vocab))
  mesh = sharding.make_mesh(config)
  abstract_state, _ = train.abstract_train_state(config, model, train.make_optimizer(config),
                                                 mesh)
  manager = checkpointing.make_manager(workdir, max_to_keep=config.train.max_to_keep,
                                       save_interval_steps=config.train.checkpoint_every)
  restored = checkpointing.restore_latest(manager, abstract_state, config=config)
  if restored is None:
    raise FileNotFoundError(f'no checkpoint under {workdir}/checkpoints: train first')
  state, meta = restored
  checkpointing.check_vocabulary(meta, vocab.fingerprint, len(vocab))
  logging.info('restored step %d from %s', int(state.step), workdir)
  return model, state.variables(), vocab


def evaluate_checkpoint(config, workdir: str, output_dir: str | None = None) -> dict[str, Any]:
  """`--mode eval`: J, F, J&F, prec@X of the latest checkpoint on config.data.eval_split."""
  model, variables, vocab = restore_for_inference(config, workdir)
  builder = builders.prepare(config.data)
  output_dir = output_dir or os.path.join(os.path.abspath(workdir), 'eval', 'latest')
  results = evaluation.evaluate_model(predict.make_predict_fn(model), variables, config,
                                      builder, vocab, output_dir,
                                      propagator=propagation.from_config(config))
  print(evaluation.format_table(results))
  return results


def predict_checkpoint(config, workdir: str, *, video=None, expression=None,
                       output_dir=None) -> dict[str, Any]:
  """`--mode predict`: one video + expression (masks and overlays), or the eval split as a
  submission zip."""
  model, variables, vocab = restore_for_inference(config, workdir)
  return predict.predict_main(config, workdir, variables=variables, vocab=vocab, model=model,
                              video=video, expression=expression, output_dir=output_dir,
                              propagator=propagation.from_config(config))
