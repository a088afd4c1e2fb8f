# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---
# %% [markdown]
# # Video: maps over time
#
# A video model takes clips `(B, C, T, H, W)` through `nn.Conv3d` layers (torchvision's r3d_18, mc3_18,
# r2plus1d_18, or your own; a 3-D scan is the same with C = 1 and its depth as T). Every gradient method
# takes the same call; the maps are `(B, K, T, H, W)`, each normalized over its whole clip, and
# `layer_maps` are `(B, K, t, h, w)` at the layer's resolution. Name the layers (`layers=[...]`).
# This tutorial builds r3d_18 with random weights (offline; the maps mean nothing) at a tiny input;
# `weights="DEFAULT"` downloads its Kinetics-400 weights (then use 16 frames at 112 px).

# %%
from importlib.resources import files

import torch
import torchvision
from torchvision.transforms.functional import to_tensor

import camkit
from camkit.video import frame_strip, save_gif

weights = torchvision.models.video.R3D_18_Weights.DEFAULT   # its class names and normalization (no download)
torch.manual_seed(0)                                        # the random weights: the same every run
model = torchvision.models.video.r3d_18(weights=None).eval()
photo = camkit.load_image(files("camkit") / "samples" / "coffee.jpg").resize((96, 64))
# a clip in [0, 1]: a 64-pixel window panning across the photo, 8 frames, (C, T, H, W)
clip = torch.stack([to_tensor(photo.crop((4 * t, 0, 4 * t + 64, 64))) for t in range(8)], dim=1)
mean, std = (torch.tensor(v).view(3, 1, 1, 1) for v in (weights.transforms().mean, weights.transforms().std))
x = ((clip - mean) / std)[None]                              # (1, 3, 8, 64, 64), as the weights expect
print(tuple(x.shape))

# %% [markdown]
# Grad-CAM of the two best classes at `layer3` (its output: 2 time steps of 8 x 8 for this clip),
# then LayerCAM fusing `layer2` (4 x 16 x 16) and `layer3` for a finer map in time and space.

# %%
with camkit.GradCAM(model, layers=["layer3"]) as cam:
    res = cam(x, topk=2)
print(tuple(res.maps.shape), tuple(res.layer_maps["layer3"].shape))   # (1, 2, 8, 64, 64) (1, 2, 2, 8, 8)
for k in range(2):
    print(f"{weights.meta['categories'][int(res.targets[0, k])]}: {float(res.target_probs[0, k]):.2%}")
with camkit.LayerCAM(model, layers=["layer2", "layer3"]) as cam:
    fine = cam(x, targets=res.targets[:, :1])                         # the best class
print(tuple(fine.maps.shape))

# %% [markdown]
# Frames with their maps: a strip (left to right in time, `t=` above each frame) and an animated GIF.

# %%
strip = frame_strip(clip, fine.maps[0, 0], frames=8)
strip.save("video_strip.png")
save_gif("video.gif", clip, fine.maps[0, 0], fps=4)
strip  # noqa: B018 (the cell's output in Jupyter)
