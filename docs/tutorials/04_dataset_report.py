# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---
# %% [markdown]
# # A whole dataset: export, then browse it in one page
#
# `camkit export` writes, per image, the maps (`cams/<name>.npz`), a pseudo-mask (`masks/<name>.png`)
# and a manifest line; `camkit report` turns the folder into `report.html`, one self-contained page
# (open it from the file system) with the overlays, the masks, filters, sorting and a summary. On the
# command line: `camkit export photos/ --out cams && camkit report cams`.

# %%
from importlib.resources import files

from camkit.export import run
from camkit.report import build_report

PHOTOS = files("camkit") / "samples"          # your folder of images (searched recursively)
summary = run(str(PHOTOS), "cams", topk=1, progress=False)
print(summary.line())

# %%
report = build_report("cams")
print(report.line())                          # open cams/report.html in a browser
