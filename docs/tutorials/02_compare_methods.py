# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---
# %% [markdown]
# # Comparing methods
#
# Every method takes the same call; the preset gives each its default layers. Here five methods explain
# the same class on the same photo, side by side, with how much each agrees with the others (the mean
# Pearson correlation of the maps, the number `camkit report` sorts by).

# %%
from importlib.resources import files

import camkit
from camkit.report.thumbs import agreement

model, preset = camkit.adapters.build("efficientnet_lite0")
photo = camkit.load_image(files("camkit") / "samples" / "coffee.jpg")
x = preset.transform(photo)[None]
METHODS = ["gradcam", "gradcampp", "layercam", "xgradcam", "eigencam"]

# %%
maps, tiles = {}, []
for name in METHODS:
    with camkit.METHODS[name](model, **preset.method_kwargs(name)) as cam:
        res = cam(x)                       # the top-1 class
    maps[name] = res.maps[0, 0].numpy()
    tiles.append(camkit.overlay.overlay(photo, res.maps[0, 0], transform=preset.transform))
print("class:", preset.categories[int(res.targets[0, 0])])
print(f"agreement of the {len(METHODS)} methods: {agreement(list(maps.values())):.2f}")

# %%
side_by_side = camkit.overlay.grid([camkit.overlay.strip([t], [n]) for t, n in zip(tiles, METHODS)],
                                   cols=len(METHODS))
side_by_side.save("compare_methods.png")
side_by_side  # noqa: B018 (the cell's output in Jupyter)
