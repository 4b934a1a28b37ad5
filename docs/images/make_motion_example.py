"""The README's picture: both motion expressions of one valid clip, segmented by a :motion run.

  python main.py --config configs/refer_shapes.py:motion --workdir workdirs/motion
  PYTHONPATH=. python docs/images/make_motion_example.py workdirs/motion \
      data/refer_shapes/valid/JPEGImages/valid_00021 docs/images/motion_example.png \
      "the purple circle moving to the left" "the purple circle that is not moving"
"""
import sys
import numpy as np
from PIL import Image
from configs import refer_shapes
from rvos_jax import inference, predict

workdir, video, out = sys.argv[1], sys.argv[2], sys.argv[3]
expressions = sys.argv[4:]
config = refer_shapes.get_config('motion')
model, variables, vocab = inference.restore_for_inference(config, workdir)
fn = predict.make_predict_fn(model)
frames, _ = predict.read_video(video)
strips = []
for text in expressions:
  masks = predict.segment_video(fn, variables, frames, text, vocab, config)
  strips.append(predict.overlay_strip(frames, masks, text))
gap = np.full((8, strips[0].shape[1], 3), 255, np.uint8)
Image.fromarray(np.concatenate([strips[0], gap, *strips[1:]])).save(out)
print(out)
