# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---
# %% [markdown]
# # Many classes and targets
#
# `targets=` takes class indices, `topk=k`, `"all"` or any function of the scores; each column is one
# map, all from one forward and one batched backward.

# %%
from importlib.resources import files

import torch

import camkit

model, preset = camkit.adapters.build("efficientnet_lite0")
photos = [camkit.load_image(files("camkit") / "samples" / n) for n in ("chelsea.jpg", "astronaut.jpg")]
x = torch.stack([preset.transform(p) for p in photos])          # (2, 3, 224, 224)
cam = camkit.GradCAM(model, **preset.method_kwargs("gradcam"))

# %%
tabby, helmet = preset.categories.index("tabby"), preset.categories.index("football helmet")
res = cam(x, targets=[[tabby, helmet], [tabby, helmet]])           # the same two classes for both photos
res.categories = preset.categories
print(tuple(res.maps.shape))                                       # (2 images, 2 targets, 224, 224)
res  # noqa: B018 (the cell's output in Jupyter: the overlays with their classes)

# %% [markdown]
# The usual targets are in `camkit.targets`: a class's softmax probability instead of its logit, or
# every positive class of a multi-label annotation (padded columns are all zeros, `res.valid` False).

# %%
soft = cam(x, targets=camkit.targets.Softmax(tabby))
multi = cam(x, targets=camkit.targets.MultiLabel([[tabby], [helmet, tabby]]))
print(soft.scores.shape, multi.valid.tolist())
cam.remove()
