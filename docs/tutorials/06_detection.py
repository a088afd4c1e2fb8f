# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---
# %% [markdown]
# # Detection: one map per box
#
# The `detection` preset turns a torchvision detector's list of dicts into detections `(B, N, 4 + C)`
# (a box, then its score in its label's column) and gives the layers. `camkit.targets.BoxScore(boxes,
# labels)` explains, for each reference box, the score of the detection of its label that overlaps it
# most (IoU above 0.5): K boxes, K maps, one forward and one batched backward.
# `camkit.targets.TopDetections(k)` explains the k best detections without giving boxes. This tutorial
# builds Faster R-CNN MobileNetV3-320 with random weights (`WEIGHTS = "none"`: offline; the boxes and
# maps mean nothing); `WEIGHTS = "imagenet"` downloads torchvision's COCO weights.

# %%
from importlib.resources import files

import torch
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes

import camkit
from camkit.targets import BoxScore

WEIGHTS = "none"
model, preset = camkit.adapters.build("tv:fasterrcnn_mobilenet_v3_large_320_fpn", weights=WEIGHTS)
photo = camkit.load_image(files("camkit") / "samples" / "chelsea.jpg")
x = preset.transform(photo)[None]      # (1, 3, 320, 480) in [0, 1]: the detector's own size, so no padding
print(tuple(x.shape), preset.method_kwargs("gradcam"))

# %% [markdown]
# The detector's own boxes, best first (any boxes will do: ground truth, or boxes drawn by hand).

# %%
with torch.no_grad():
    det = model(x)[0]                  # boxes (n, 4) as x1, y1, x2, y2 in x's pixels, scores (n,), labels (n,)
best = det["scores"].argsort(descending=True)[:3]
boxes, labels = det["boxes"][best], det["labels"][best]
for box, label, score in zip(boxes, labels, det["scores"][best]):
    print(f"{preset.categories[int(label)]} {float(score):.3f} at {box.round().int().tolist()}")

# %% [markdown]
# One map per box. `res.scores` holds each box's matched score (0 where no detection matched).

# %%
with camkit.GradCAM(model, **preset.method_kwargs("gradcam")) as cam:
    res = cam(x, targets=BoxScore(boxes, labels))
print(tuple(res.maps.shape), [round(float(s), 3) for s in res.scores[0]])   # (1, 3, 320, 480): 3 boxes

# %%
tiles = []
for k in range(len(boxes)):
    tile = pil_to_tensor(camkit.overlay.overlay(x[0], res.maps[0, k]))    # (3, H, W) uint8
    caption = f"{preset.categories[int(labels[k])]} {float(res.scores[0, k]):.2f}"
    tiles.append(to_pil_image(draw_bounding_boxes(tile, boxes[k:k + 1], [caption], colors="white", width=3)))
figure = camkit.overlay.grid(tiles, cols=len(tiles))
figure.save("detection.png")
figure  # noqa: B018 (the cell's output in Jupyter)
