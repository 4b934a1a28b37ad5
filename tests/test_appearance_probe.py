"""rvos_jax.analysis.appearance_probe: parsing the attributes, and the readout (end to end in
test_main)."""

import numpy as np

from rvos_jax.analysis import appearance_probe, motion_probe


def test_attributes_of_names_one_colour_and_one_shape():
  colours, shapes = appearance_probe.ATTRIBUTES['colour'], appearance_probe.ATTRIBUTES['shape']
  got = appearance_probe.attributes_of('the White triangle')
  assert got == {'colour': colours.index('white'), 'shape': shapes.index('triangle')}
  assert appearance_probe.attributes_of('the red square moving to the left') == {
      'colour': colours.index('red'), 'shape': shapes.index('square')}
  # Ambiguous or incomplete: not an object the probe can label.
  assert appearance_probe.attributes_of('the small circle at the bottom') is None
  assert appearance_probe.attributes_of('the red circle and the blue square') is None
  assert appearance_probe.attributes_of('') is None


def test_decodability_takes_the_number_of_classes():
  # Seven colours: a planted one-hot code is read back; labels 5 and 6 need num_classes=7.
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 7, size=70)
  planted = [rng.normal(size=(3, 12)) + 5 * np.eye(12)[lab][None] for lab in labels]
  r = motion_probe.decodability(planted, labels, num_classes=7)
  assert r['accuracy'] > 0.9 and r['objects'] == 70 and r['frames'] == 210
  assert r['chance'] < 0.3
