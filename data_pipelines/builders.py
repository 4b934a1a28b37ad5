"""TFDS builders that turn a Refer-YouTube-VOS-style layout into records (one per video).

The layout is the builder's `manual_dir` (nothing is downloaded). A record holds the video's
frames as the original JPEG bytes and its masks as grayscale PNG bytes of object ids (compact;
decoded in the pipeline, at reduced DCT scale for frames), plus every expression:

  video: str, frame_names: [str], frames: [JPEG bytes], masks: [PNG bytes] (empty when the
  split has no Annotations), height, width: int (original size),
  expressions: {exp_id: [str], exp: [str], obj_id: [int32]}   (obj_id 0 = unknown)

The expressions are also stored in the dataset's metadata (metadata.json), so a vocabulary can
be built and long expressions checked without reading a single frame.

Network: TFDS would look for prepared data and dataset info on GCS (gs://tfds-data). We never
want that (pods may have no route out, and these datasets are not there): the GCS switch
`tfds.core.utils.gcs_utils._is_gcs_disabled` is forced on at import, and `prepare()` passes
`DownloadConfig(try_download_gcs=False)` and `download_mode=REUSE_DATASET_IF_EXISTS`.
"""

import os

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from data_pipelines import layouts, mevis_layout, ytvos_layout

tfds.core.utils.gcs_utils._is_gcs_disabled = True  # no GCS lookups, ever (see module doc)

FEATURES = tfds.features.FeaturesDict({
    'video': tfds.features.Text(),
    'frame_names': tfds.features.Sequence(tfds.features.Text()),
    'frames': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=tf.string)),
    'masks': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=tf.string)),
    'height': tfds.features.Scalar(dtype=np.int32),
    'width': tfds.features.Scalar(dtype=np.int32),
    'expressions': tfds.features.Sequence({
        'exp_id': tfds.features.Text(),
        'exp': tfds.features.Text(),
        'obj_id': tfds.features.Scalar(dtype=np.int32),
    }),
})


# MeViS records: masks are label maps (mevis_layout.label_maps: a label per set of overlapping
# objects), and each expression says which labels make its target (`members`, indexed by the
# label: the union of its objects, all False for no target). obj_id: the one object's id, -1 for
# several objects, 0 for none.
MEVIS_FEATURES = tfds.features.FeaturesDict({
    **{k: v for k, v in FEATURES.items() if k != 'expressions'},
    'expressions': tfds.features.Sequence({
        'exp_id': tfds.features.Text(),
        'exp': tfds.features.Text(),
        'obj_id': tfds.features.Scalar(dtype=np.int32),
        'members': tfds.features.Tensor(shape=(256,), dtype=np.bool_),
    }),
})


class _LayoutBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Reads `<manual_dir>` in the Refer-YouTube-VOS layout; one split per meta_expressions/."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Point manual_dir (config.data.root) at the dataset in the Refer-YouTube-VOS layout: '
      '{train,valid}/JPEGImages/<video>/*.jpg, {train,valid}/Annotations/<video>/*.png, '
      'meta_expressions/{train,valid}/meta_expressions.json.')
  SPLITS = ('train', 'valid')

  def __init__(self, *, skip_bad_samples: bool = False, verify_jpeg: bool = True, **kwargs):
    """skip_bad_samples, verify_jpeg: as config.data (data_pipelines/config.py). With
    verify_jpeg=False a frame that is damaged but keeps its header and end-of-image marker is
    written as is, and a decode failure then names no file (it happens inside tf.data)."""
    self._skip_bad_samples = skip_bad_samples
    self._verify_jpeg = verify_jpeg
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=FEATURES, metadata=tfds.core.MetadataDict(),
        description=self.__doc__)

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    # Splits present in the layout and not empty (a generated dataset may have 0 valid videos).
    splits = [s for s in self.SPLITS
              if os.path.exists(ytvos_layout.meta_expressions_path(root, s))
              and ytvos_layout.read_meta_expressions(ytvos_layout.meta_expressions_path(root, s))]
    if not splits:
      raise FileNotFoundError(f'{root}: no meta_expressions/<split>/meta_expressions.json for '
                              f'any of {self.SPLITS}. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    return {s: self._generate_examples(root, s) for s in splits}

  def _iter_split(self, root, split):
    return ytvos_layout.iter_split(root, split, verify_jpeg=self._verify_jpeg,
                                   skip_bad_samples=self._skip_bad_samples)

  def _generate_examples(self, root, split):
    expressions = {}
    self.info.metadata[f'expressions/{split}'] = expressions
    for video, record in self._iter_split(root, split):
      e = record['expressions']
      expressions[video] = dict(zip(e['exp_id'], e['exp'], strict=True))
      yield video, record


class ReferShapes(_LayoutBuilder):
  """Synthetic referring-video dataset written by data_pipelines.refer_shapes."""
  name = 'refer_shapes'


class ReferYoutubeVos(_LayoutBuilder):
  """Refer-YouTube-VOS (Seo et al., ECCV 2020) as published."""
  name = 'refer_youtube_vos'


class ReferDavis17(_LayoutBuilder):
  """Refer-DAVIS17 (Khoreva et al.) converted to the Refer-YouTube-VOS layout by
  data_pipelines.davis17; exp_id = 4*(obj_id-1) + {0: annotator-1 first-frame, 1: annotator-1
  full-video, 2: annotator-2 first-frame, 3: annotator-2 full-video}."""
  name = 'refer_davis17'


class _MevisLayoutBuilder(_LayoutBuilder, skip_registration=True):
  """Reads `<manual_dir>` in the MeViS layout (data_pipelines.mevis_layout); splits train,
  valid_u (both with mask_dict.json) and valid (without: predicted and zipped)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Point manual_dir (config.data.root) at the dataset in the MeViS layout: '
      '{train,valid_u,valid}/JPEGImages/<video>/*.jpg, <split>/meta_expressions.json, '
      '{train,valid_u}/mask_dict.json.')
  SPLITS = mevis_layout.SPLITS

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=MEVIS_FEATURES, metadata=tfds.core.MetadataDict(), description=self.__doc__)

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    splits = [s for s in self.SPLITS if os.path.exists(
        layouts.meta_expressions_path(root, s, layouts.MEVIS))]
    if not splits:
      raise FileNotFoundError(f'{root}: no <split>/meta_expressions.json for any of '
                              f'{self.SPLITS}. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    return {s: self._generate_examples(root, s) for s in splits}

  def _iter_split(self, root, split):
    return mevis_layout.iter_split(root, split, verify_jpeg=self._verify_jpeg,
                                   skip_bad_samples=self._skip_bad_samples)


class Mevis(_MevisLayoutBuilder):
  """MeViS (Ding et al., ICCV 2023): motion expressions, several or no objects per expression."""
  name = 'mevis'


class ReferShapesMevis(_MevisLayoutBuilder):
  """refer_shapes written in the MeViS layout, with multi-object and no-target expressions
  (data_pipelines.refer_shapes, layout='mevis')."""
  name = 'refer_shapes_mevis'


BUILDERS = {b.name: b for b in (ReferShapes, ReferYoutubeVos, ReferDavis17, Mevis,
                                ReferShapesMevis)}
SYNTHETIC = ('refer_shapes', 'refer_shapes_mevis')  # generated on first use


def prepare(config: ml_collections.ConfigDict) -> _LayoutBuilder:
  """Builds (once) and returns the TFDS builder for `config.data`.

  For refer_shapes (and refer_shapes_mevis, its MeViS layout), a root without a dataset is
  first filled by the generator at config.generate's scale, so that every command works out
  of the box. Records go to config.tfds_data_dir
  (default <root>/tfds); delete that folder after changing the layout.
  """
  if config.name not in BUILDERS:
    raise ValueError(f'config.data.name={config.name!r}; expected one of {sorted(BUILDERS)}')
  if not config.root:
    raise ValueError('config.data.root is empty: set it to the dataset layout directory')
  root = os.path.abspath(os.path.expanduser(config.root))
  layout = layouts.layout_of(config.name)
  if config.name in SYNTHETIC and not os.path.exists(
      layouts.meta_expressions_path(root, 'train', layout)):
    from data_pipelines import refer_shapes  # noqa: PLC0415 -- only needed here
    logging.info('no %s dataset at %s: generating one (seed %d)', config.name, root,
                 config.seed)
    scale = config.generate.to_dict() if 'generate' in config else {}
    scale['layout'] = layout
    refer_shapes.generate(root, seed=config.seed, **scale)
  cls = BUILDERS[config.name]
  if not os.path.isdir(root):
    raise FileNotFoundError(f'config.data.root={root} does not exist. '
                            f'{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}')
  data_dir = config.get('tfds_data_dir') or os.path.join(root, 'tfds')
  builder = cls(data_dir=data_dir, skip_bad_samples=config.skip_bad_samples,
                verify_jpeg=config.get('verify_jpeg', True))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=root, try_download_gcs=False,
          download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return builder


def expressions_of(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, dict[str, str]]:
  """{video: {exp_id: expression}} of a split, from the metadata (no frame is read)."""
  key = f'expressions/{split}'
  if key not in builder.info.metadata:
    raise KeyError(f'{builder.name}: split {split!r} not in {builder.data_dir} '
                   f'(have {sorted(k for k in builder.info.metadata)})')
  return builder.info.metadata[key]
