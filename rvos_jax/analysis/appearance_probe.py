"""Does a trained network see colour and shape? A readout of both from each embedding.

refer_shapes' appearance expressions name an object by colour and shape ("the white triangle"),
with other objects of the same colour or the same shape in the clip, so a network that sees
only colour can do no better than hedge between the objects of the named colour. This measures
what each embedding holds, at the objects that an appearance expression names:

  decodable   Per frame, the embedding averaged over the object's cells (weighted by
              coverage); ridge regression, one-vs-rest, of the colour (7 classes) and of the
              shape (6 classes), trained on half the objects and scored on the other half
              (2 folds over objects, never frames of one object on both sides); chance is the
              majority answer of the training folds.

It is how we found that the ResNet stem's max-pool was costing shape on 64x96 frames
(docs/model_choices.md, `model.backbone_stem_pool`).

  python -m rvos_jax.analysis.appearance_probe --config configs/refer_shapes.py --workdir W \\
      [--split train] [--config.model.X=...]   # the run's config, as for --mode eval
"""


import ml_collections
import numpy as np

from data_pipelines.refer_shapes import COLOURS, SHAPES
from rvos_jax.analysis import motion_probe

ATTRIBUTES = {'colour': tuple(COLOURS), 'shape': SHAPES}


def attributes_of(expression: str) -> dict[str, int] | None:
  """{'colour': i, 'shape': j} (indices into ATTRIBUTES) from an expression that names exactly
  one colour and one shape, else None."""
  words = expression.lower().split()
  out = {}
  for name, values in ATTRIBUTES.items():
    found = [values.index(w) for w in words if w in values]
    if len(found) != 1:
      return None
    out[name] = found[0]
  return out


def probe(config: ml_collections.ConfigDict, workdir: str, split: str = 'train',
          max_videos: int | None = None) -> dict:
  """Colour and shape decodability for the latest checkpoint in workdir (module docstring)."""
  from rvos_jax import predict  # noqa: PLC0415 -- JAX model code only when probing

  data = config.data
  ps = motion_probe.setup_probe(config, workdir, split, 'appearance expressions')
  meta, kinds, vocab = ps.meta, ps.kinds, ps.vocab
  T = data.num_frames
  names_of = motion_probe.EMBEDDINGS

  features = {k: [] for k in names_of}
  labels = {name: [] for name in ATTRIBUTES}
  skipped = 0
  videos = [v for v in sorted(meta) if 'appearance' in kinds.get(v, {}).values()]
  for video in videos[:max_videos]:
    entry = meta[video]
    named = {}  # obj_id -> attributes, from the video's appearance expressions
    for e, kind in kinds[video].items():
      exp = entry['expressions'].get(e)
      if kind != 'appearance' or exp is None:
        continue
      attrs = attributes_of(exp['exp'])
      if attrs is not None:
        named[int(exp['obj_id'])] = attrs
    if not named:
      continue
    clip, ids, n = motion_probe.probe_clip(data, split, video, entry, ps.meta_path)
    # The embeddings do not depend on the words: any expression of the video will do.
    tokens, token_mask = predict.encode_expression(
        next(iter(entry['expressions'].values()))['exp'], vocab, data.max_words)
    _, inter = ps.forward(clip, tokens[None], token_mask[None])
    for obj, attrs in sorted(named.items()):
      if not (ids == obj).any():  # hidden in every probed frame: nothing to read
        skipped += 1
        continue
      for k, f in inter.items():
        f = np.asarray(f)
        f = f.reshape(T, *f.shape[-3:])[:n]
        features[k].append(motion_probe.object_features(
            f, motion_probe.cell_coverage(ids == obj, *f.shape[1:3])))
      for name in ATTRIBUTES:
        labels[name].append(attrs[name])
  objects = len(labels['colour'])
  if objects < 4:
    raise ValueError(f'{split}: {objects} objects named by colour and shape, too few to probe')
  return {
      'split': split, 'objects': objects, 'skipped_not_visible': skipped,
      'decodable': {motion_probe.EMBEDDINGS[k]: {
          name: motion_probe.decodability(v, labels[name], num_classes=len(values))
          for name, values in ATTRIBUTES.items()} for k, v in features.items() if v},
  }


def format_table(result: dict) -> str:
  lines = [f"{result['split']}: {result['objects']} objects named by colour and shape",
           'held-out accuracy of a linear readout at the object (2 folds), chance in brackets',
           f"{'embedding':32s} {'colour':>13s} {'shape':>13s}"]
  for name, r in result['decodable'].items():
    cells = [f"{r[a]['accuracy']:.2f} ({r[a]['chance']:.2f})" for a in ATTRIBUTES]
    lines.append(f'{name:32s} ' + ' '.join(f'{c:>13s}' for c in cells))
  return '\n'.join(lines)


if __name__ == '__main__':
  motion_probe.run_tool('appearance_probe', probe, format_table, 'appearance expressions')
