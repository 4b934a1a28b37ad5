"""Research instruments: where masks land and what the embeddings encode.

Not part of training or inference (nothing under rvos_jax imports this package); each module is
a command line over a trained workdir or a folder of predicted masks:

  python -m rvos_jax.analysis.distractors       # target, look-alike twin, other objects, bg
  python -m rvos_jax.analysis.motion_probe      # is motion decodable, level by level
  python -m rvos_jax.analysis.appearance_probe  # are colour and shape decodable
"""
