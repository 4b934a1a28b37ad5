"""Refer-DAVIS17: converts the DAVIS 2017 release plus its text annotations into the
Refer-YouTube-VOS layout, as the RVOS community does.

Inputs (as published, nothing downloaded):
  <davis_root>/JPEGImages/480p/<video>/<frame>.jpg
  <davis_root>/Annotations/480p/<video>/<frame>.png        palette PNG, pixel = object id
  <davis_root>/ImageSets/2017/{train,val}.txt              one video per line
  <text_dir>/Davis17_annot1.txt, Davis17_annot1_full_video.txt,
             Davis17_annot2.txt, Davis17_annot2_full_video.txt
      one expression per line: `<video> <obj_id> "<expression>"` (quotes optional)

Output: the Refer-YouTube-VOS layout with splits train (ImageSets train.txt) and valid
(val.txt), both with Annotations, and expression ids fixed by object and annotation:

  exp_id = 4 * (obj_id - 1) + j,  j = 0 annotator-1 first-frame, 1 annotator-1 full-video,
                                      2 annotator-2 first-frame, 3 annotator-2 full-video

so evaluation can average per annotator (`annotation_of`). The paper (§4.1) trains and
evaluates on the full-video expressions only: `full_video_only=True` keeps j in {1, 3}.

  python -m data_pipelines.davis17 --davis_root DAVIS --text_dir davis_text_annotations \
      --output_dir refer_davis17 [--symlink]
"""

import os
import re
import shutil
from collections.abc import Sequence

from absl import app, flags, logging

from data_pipelines import ytvos_layout

TEXT_FILES = ('Davis17_annot1.txt', 'Davis17_annot1_full_video.txt',
              'Davis17_annot2.txt', 'Davis17_annot2_full_video.txt')
SPLITS = {'train': 'train.txt', 'valid': 'val.txt'}
_LINE = re.compile(r'^(\S+)\s+(\d+)\s+(.*)$')


def exp_id_of(obj_id: int, annotation: int) -> str:
  """annotation j in 0..3 as TEXT_FILES; object ids start at 1."""
  return str(4 * (obj_id - 1) + annotation)


def annotation_of(exp_id: str | int) -> dict:
  """exp_id -> {'obj_id', 'annotator' (1|2), 'full_video' (bool)}."""
  k, j = divmod(int(exp_id), 4)
  return {'obj_id': k + 1, 'annotator': 1 + j // 2, 'full_video': bool(j % 2)}


def read_text_annotations(text_dir: str) -> dict[str, dict[str, str]]:
  """{video: {exp_id: expression}} from the four annotation files."""
  out: dict[str, dict[str, str]] = {}
  for j, name in enumerate(TEXT_FILES):
    path = os.path.join(text_dir, name)
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path}: missing Refer-DAVIS17 text annotation file')
    with open(path, encoding='utf-8', errors='replace') as f:
      for n, line in enumerate(f, 1):
        line = line.strip()
        if not line:
          continue
        m = _LINE.match(line)
        if not m:
          raise ValueError(f'{path}:{n}: expected `<video> <obj_id> "<expression>"`, '
                           f'got {line!r}')
        video, obj, exp = m.group(1), int(m.group(2)), m.group(3).strip().strip('"').strip()
        out.setdefault(video, {})[exp_id_of(obj, j)] = exp
  return out


def convert(davis_root: str, text_dir: str, output_dir: str, *, resolution: str = '480p',
            symlink: bool = False, full_video_only: bool = False) -> dict[str, int]:
  """Writes the converted layout; returns {split: number of expressions}."""
  texts = read_text_annotations(text_dir)
  summary = {}
  for split, list_name in SPLITS.items():
    list_path = os.path.join(davis_root, 'ImageSets', '2017', list_name)
    if not os.path.exists(list_path):
      raise FileNotFoundError(f'{list_path}: missing DAVIS 2017 split list')
    with open(list_path) as f:
      videos = [v.strip() for v in f if v.strip()]
    meta_exp, meta = {}, {}
    for video in videos:
      if video not in texts:
        logging.warning('%s: no expression for video %r; left out', text_dir, video)
        continue
      for kind, ext in (('JPEGImages', '.jpg'), ('Annotations', '.png')):
        src = os.path.join(davis_root, kind, resolution, video)
        dst = os.path.join(output_dir, split, kind, video)
        if not os.path.isdir(src):
          raise FileNotFoundError(f'video {video!r}: missing directory {src}')
        os.makedirs(dst, exist_ok=True)
        for name in sorted(os.listdir(src)):
          if not name.endswith(ext) or os.path.exists(os.path.join(dst, name)):
            continue
          if symlink:
            os.symlink(os.path.abspath(os.path.join(src, name)), os.path.join(dst, name))
          else:
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
      frames = sorted(os.path.splitext(n)[0] for n in os.listdir(
          os.path.join(output_dir, split, 'JPEGImages', video)) if n.endswith('.jpg'))
      exps = {e: t for e, t in texts[video].items()
              if not full_video_only or annotation_of(e)['full_video']}
      meta_exp[video] = {
          'expressions': {e: {'exp': t, 'obj_id': str(annotation_of(e)['obj_id'])}
                          for e, t in sorted(exps.items(), key=lambda x: int(x[0]))},
          'frames': frames,
      }
      meta[video] = {'objects': {str(annotation_of(e)['obj_id']): {'frames': frames}
                                 for e in exps}}
    ytvos_layout.write_json(ytvos_layout.meta_expressions_path(output_dir, split),
                            {'videos': meta_exp})
    ytvos_layout.write_json(os.path.join(output_dir, split, 'meta.json'), {'videos': meta})
    summary[split] = sum(len(v['expressions']) for v in meta_exp.values())
  return summary


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  summary = convert(f.davis_root, f.text_dir, f.output_dir, resolution=f.resolution,
                    symlink=f.symlink, full_video_only=f.full_video_only)
  print(f'wrote {f.output_dir}: expressions per split {summary}')


if __name__ == '__main__':
  flags.DEFINE_string('davis_root', None, 'DAVIS 2017 release root.', required=True)
  flags.DEFINE_string('text_dir', None, 'Folder of the Davis17_annot*.txt files.',
                      required=True)
  flags.DEFINE_string('output_dir', None, 'Where to write the converted layout.',
                      required=True)
  flags.DEFINE_string('resolution', '480p', 'DAVIS resolution folder.')
  flags.DEFINE_bool('symlink', False, 'Symlink frames and masks instead of copying them.')
  flags.DEFINE_bool('full_video_only', False, 'Keep only the full-video expressions (§4.1).')
  app.run(main)
