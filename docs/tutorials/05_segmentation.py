# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---
# %% [markdown]
# # Segmentation: maps of chosen classes and pixel regions
#
# A segmentation model scores every pixel for every class. `output="out"` (the preset gives it) picks
# torchvision's `(B, C, H, W)` scores out of the model's dict, and `camkit.targets.SegmentationRegion(c,
# mask)` explains the sum of class c's scores over a region: the pixels the model predicts as c (no
# mask), or any pixels you choose. This tutorial builds LR-ASPP MobileNetV3 with random weights
# (`WEIGHTS = "none"`: offline, and the maps mean nothing); `WEIGHTS = "imagenet"` downloads
# torchvision's weights with the 21 VOC classes (0 background, 15 person). DeepLabV3 and FCN
# (`tv:deeplabv3_mobilenet_v3_large`, `tv:deeplabv3_resnet50`, `tv:fcn_resnet50`) take the same code.

# %%
from importlib.resources import files

import torch
from PIL import ImageDraw
from torchvision import transforms as T

import camkit
from camkit.targets import SegmentationRegion

WEIGHTS = "none"
model, preset = camkit.adapters.build("tv:lraspp_mobilenet_v3_large", weights=WEIGHTS)
print(preset.task, preset.output, preset.layers)   # LayerCAM's layers: the ends of the backbone's stages
photo = camkit.load_image(files("camkit") / "samples" / "astronaut.jpg")
# the preset's transform resizes the short side to 520 px; 160 px keeps this quick on a CPU
transform = T.Compose([T.Resize(160), T.ToTensor(), T.Normalize(preset.mean, preset.std)])
x = transform(photo)[None]                          # (1, 3, 160, 160)

# %% [markdown]
# What does the model predict, and where?

# %%
with torch.no_grad():
    pred = model(x)["out"].argmax(1)[0]             # (160, 160): the class of each pixel
top = int(pred.flatten().mode().values)             # the class predicted at the most pixels
for c in pred.unique().tolist():
    print(f"{preset.categories[c]}: {float((pred == c).float().mean()):.0%} of the pixels")

# %% [markdown]
# The class predicted at the most pixels, explained over those pixels (no mask): one forward, one
# backward. Then two chosen classes over a region of your choice, a box around the face (a bool mask
# `(H, W)` in the input's pixels, or `(B, H, W)` per image): one map per class from the same call.

# %%
with camkit.LayerCAM(model, **preset.method_kwargs("layercam")) as cam:
    own = cam(x, targets=SegmentationRegion(top))
face = torch.zeros(x.shape[-2:], dtype=torch.bool)
face[10:70, 40:100] = True                          # rows, columns of the 160 x 160 input
chosen = [top, 15]                                  # and class 15 (person, in VOC's numbering)
with camkit.GradCAM(model, **preset.method_kwargs("gradcam")) as cam:
    boxed = cam(x, targets=SegmentationRegion(chosen, mask=face))
print(tuple(own.maps.shape), tuple(boxed.maps.shape))   # (1, 1, 160, 160) (1, 2, 160, 160)

# %%
names = [preset.categories[c] for c in chosen]
tiles = [camkit.overlay.overlay(photo, (pred == top).float(), transform=transform),
         camkit.overlay.overlay(photo, own.maps[0, 0], transform=transform),
         *(camkit.overlay.overlay(photo, boxed.maps[0, k], transform=transform) for k in range(2))]
scale = photo.width / x.shape[-1]                  # the face box on the photo's pixels
for tile in tiles[2:]:
    ImageDraw.Draw(tile).rectangle([40 * scale, 10 * scale, 100 * scale, 70 * scale], outline="white", width=4)
labels = [f"predicted {names[0]}", f"LayerCAM, {names[0]}", f"{names[0]}, face box", f"{names[1]}, face box"]
figure = camkit.overlay.grid([camkit.overlay.strip([t], [lb]) for t, lb in zip(tiles, labels)], cols=4)
figure.save("segmentation.png")
figure  # noqa: B018 (the cell's output in Jupyter)
