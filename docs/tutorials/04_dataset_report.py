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
import json
from importlib.resources import files
from pathlib import Path

import numpy as np
from PIL import Image

from camkit.export import evaluate, format_evaluation, run
from camkit.report import build_report

PHOTOS = files("camkit") / "samples"          # your folder of images (searched recursively)
summary = run(str(PHOTOS), "cams", topk=1, progress=False)
print(summary.line())

# %%
report = build_report("cams")
print(report.line())                          # open cams/report.html in a browser

# %% [markdown]
# ## Scoring the pseudo-masks against ground truth
#
# With ground-truth masks (PNGs named as the photos, relative to the same folder: 0 background, 1 + the
# class index, 255 left out), `camkit evaluate-masks cams --gt MASKS --sweep 0.05:0.95:0.05` gives the
# per-class IoU, mIoU, precision and recall (as ReCAM's `eval_cam`), and with `--sweep` the background
# threshold that scores best. The bundled photos have no masks, so here a stand-in is drawn: a box over the
# middle half of each photo, labelled with the class the export explained. Use your dataset's real masks.

# %%
Path("gt").mkdir(exist_ok=True)
for line in Path("cams/manifest.jsonl").read_text().splitlines():
    rec = json.loads(line)
    h, w = rec["size"]
    gt = np.zeros((h, w), dtype=np.uint16)                 # 16-bit: 1000 ImageNet classes + background
    gt[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1 + rec["keys"][0]
    Image.fromarray(gt).save(f"gt/{rec['rel']}.png")
scores = evaluate("cams", "gt", thresholds=np.arange(0.05, 1.0, 0.05).round(2).tolist())
print(format_evaluation(scores))
