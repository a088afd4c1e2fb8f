"""Small export folders written as ``camkit export`` writes them (manifest.jsonl, export.json,
cams/*.npz, masks/*.png), with odd file and class names, for the report tests."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

from camkit.export.files import write_outputs

CLASSES = ["daisy", 'tulip <b>&"red"</b>', "sun flower"]
# (rel name, true class, predicted class): odd names on purpose (spaces, #, %, quotes, markup, non-ASCII)
IMAGES: List[Tuple[str, int, int]] = [
    ("plain/a0", 0, 0), ("plain/a1", 0, 1), ("plain/b2", 1, 1), ("odd/with space #1 %20", 1, 1),
    ("odd/<script>alert(1)</script>", 2, 2), ("odd/façade ß \"q\" 'q'", 2, 0), ("plain/c6", 2, 2), ("plain/c7", 0, 0),
]
BROKEN = "plain/broken"
ERROR = "cannot read plain/broken.jpg: <img src=x onerror=alert(1)> truncated"


def blob(h: int, w: int, cy: float, cx: float, s: float) -> np.ndarray:
    """A Gaussian bump ``(h, w)`` in [0, 1] centred at (cy, cx) (fractions of the size), width s."""
    y, x = np.mgrid[0:h, 0:w]
    return np.exp(-(((y / h - cy) ** 2) + ((x / w - cx) ** 2)) / (2 * s * s)).astype(np.float32)


def make_export(root: Path, photos: Path, method: str = "layercam", shift: float = 0.0) -> Path:
    """An export folder of the IMAGES (their photos written once in ``photos``) and one failed image, made
    without labels (the maps explain the predicted classes); ``photos/labels.csv`` has the true ones.

    Image i's map is a bump whose width grows with i (so the foreground shares differ); ``shift``
    moves every bump (another method's maps, less in agreement)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    recs = []
    truth = []
    for i, (rel, t, c) in enumerate(IMAGES):
        photo = photos / f"{rel}.jpg"
        if not photo.exists():
            photo.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photo)
        truth.append([str(photo), CLASSES[t]])
        high = blob(48, 64, 0.3 + 0.05 * i, 0.5 + shift, 0.05 + 0.03 * i)[None]
        write_outputs(root, rel, np.array([c]), high[:, ::4, ::4], high, 0.15, len(CLASSES))
        recs.append({"path": str(photo), "rel": rel, "status": "ok", "keys": [c], "scores": [10.0 - i],
                     "size": [48, 64], "error": None, "iou": 0.1 * i})
    recs.append({"path": str(photos / f"{BROKEN}.jpg"), "rel": BROKEN, "status": "error", "keys": [],
                 "error": ERROR})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with open(photos / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label"], *truth])
    settings = {"model": "tiny", "method": method, "labels": None, "topk": 1, "bg_threshold": 0.15,
                "categories": CLASSES}
    (root / "export.json").write_text(json.dumps({"settings": settings, "categories": CLASSES}))
    return root
