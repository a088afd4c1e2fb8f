# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---
# %% [markdown]
# # The Flower-17 study, in brief
#
# The study (a student report; its code is public as `KelvinHong/DL-assignment`) trains a CAM head and
# ReCAM heads on a frozen ImageNet backbone for the 17 classes of Oxford's Flower-17 and compares their
# maps with LayerCAM's. `benchmarks/flower17` reproduces it with the study's protocol; its README has
# every detail and the results. From the root of a checkout:
#
# ```
# python -m benchmarks.flower17 prepare           # the frozen backbone's features, once (train: + 9 augmented copies)
# python -m benchmarks.flower17 train --jobs 3    # CAM, 3 ReCAM and paper-ReCAM heads, 4 lrs x 3 seeds, on the cache
# python -m benchmarks.flower17 evaluate          # test split, diagnostics, table.md (the study's Table 2)
# python -m benchmarks.flower17 figures           # loss curves, maps.png (Figure 8), figure20/
# python -m benchmarks.flower17 quality           # the maps of every camkit method, scored
# python -m benchmarks.flower17 all --quick       # all of it on 2 images per class and split part
# ```
#
# This tutorial does the same in miniature: the study's backbone (the offline EfficientNet-Lite0 up to
# its features, pooled to the 7 x 7 grid of the study's VGG16), a feature cache of a handful of
# images, a `camkit.CAMHead` and a `camkit.ReCAMHead` trained on it for a few epochs, and their maps.
# The images come from `../shared/flower17` (next to the checkout) or `~/.cache/camkit/flower17`
# (`python -m benchmarks.flower17 prepare --download` fetches them); without them it uses the bundled
# photos, each its own class.

# %%
import sys
from importlib.resources import files
from pathlib import Path

import torch
import torch.nn.functional as F

import camkit

sys.path.insert(0, str(Path(camkit.__file__).resolve().parents[1]))  # the checkout (benchmarks/ is not installed)
from benchmarks.flower17 import data, models  # noqa: E402

backbone, preprocess, channels = models.build_backbone("tf_efficientnet_lite0")  # (B, 3, 256, 256) -> (B, 1280, 7, 7)
root = data.resolve_root()
if data.image_path(root, 1).exists():
    split = data.load_split(root)        # the committed stratified split (the official one where datasplits.mat is)
    names = data.CLASSES
    shown = [names.index(c) for c in ("daffodil", "sunflower", "pansy")]
    train = [s for c in shown for s in [s for s in split["train"] if s[1] == c][:2]]   # 2 training images per class
    val = [next(s for s in split["val"] if s[1] == c) for c in shown]                  # 1 validation image per class
else:
    names = ("cat", "coffee cup", "rocket")
    train = val = [(str(files("camkit") / "samples" / f), k) for k, f in enumerate(["chelsea.jpg", "coffee.jpg",
                                                                                      "rocket.jpg"])]
print(f"{len(train)} training images, {len(val)} to explain, {len(names)} classes")

# %% [markdown]
# The feature cache: every training image and 2 augmented copies (the study makes 9: rotation,
# translation, flip; copy k of image i is seeded by the seed, i and k) through the frozen backbone,
# once, kept in float16 as the benchmark keeps it. Every head then trains on these rows alone.

# %%
rows = [(im, label) for i, (path, label) in enumerate(train)
        for im in data.augmented_copies(data.load_image(path), i, seed=0, copies=2)]
with torch.no_grad():
    feats = backbone(torch.stack([preprocess(im) for im, _ in rows])).half()
y = torch.tensor([label for _, label in rows])
print(tuple(feats.shape))                        # (rows, 1280, 7, 7)

# %% [markdown]
# The study's training: Adam, batches of 8, cross-entropy of each head's output (a ReCAM head's output
# is its re-activated logits: its class maps masked by the normalized CAM of the plain head's top-1
# class). The study trains up to 40 epochs at lr 1e-5 to 2e-4 on 6,800 rows; 10 epochs at 2e-3 here.

# %%
def train_head(head, epochs=10, lr=2e-3, batch=8):
    """Train ``head`` on the cached rows; returns the mean training loss of each epoch."""
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    order = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(y), generator=order).split(batch):
            loss = F.cross_entropy(head(feats[idx].float()), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(y))
    return losses


torch.manual_seed(0)
heads = {"CAM": camkit.CAMHead(channels, len(names)),
         "ReCAM minmax": camkit.ReCAMHead(channels, len(names), normalize="minmax")}
history = {name: train_head(head) for name, head in heads.items()}
for name, losses in history.items():
    print(f"{name}: training loss per epoch", " ".join(f"{v:.3f}" for v in losses))

# %% [markdown]
# Joined to the frozen backbone (`camkit.CAMModel`), each head is a model camkit explains: `camkit.CAM`
# reads the head's class maps (`head.relu`) and its linear layer, `camkit.ReCAM` the ReCAM head's
# re-activated maps, here for each image's true class. (`camkit.save_head` / `camkit.load_head` keep a
# trained head's weights; the benchmark's checkpoints are such files.)

# %%
photos = [data.load_image(path) for path, _ in val]          # 256 x 256, as the study sees them
x = torch.stack([preprocess(im) for im in photos])            # (3, 3, 256, 256)
truth = torch.tensor([label for _, label in val])
cam_model = camkit.CAMModel(backbone, heads["CAM"]).eval()
recam_model = camkit.CAMModel(backbone, heads["ReCAM minmax"]).eval()
with camkit.CAM(cam_model) as cam:
    cams = cam(x, targets=truth)
with camkit.ReCAM(recam_model) as recam:
    recams = recam(x, targets=truth)
print(tuple(cams.maps.shape), tuple(cams.layer_maps["head.relu"].shape))  # at the input's size, at 7 x 7
for (path, label), top in zip(val, cams.logits.argmax(1).tolist()):
    print(f"{Path(path).name}: {names[label]}, the CAM head says {names[top]}")

# %%
tiles, labels = [], []
for i, photo in enumerate(photos):
    tiles += [photo, camkit.overlay.overlay(photo, cams.maps[i, 0]), camkit.overlay.overlay(photo, recams.maps[i, 0])]
    labels += [names[int(truth[i])], "CAM", "ReCAM minmax"]
figure = camkit.overlay.grid([camkit.overlay.strip([t], [lb]) for t, lb in zip(tiles, labels)], cols=3)
figure.save("flower17_maps.png")
figure  # noqa: B018 (the cell's output in Jupyter)
