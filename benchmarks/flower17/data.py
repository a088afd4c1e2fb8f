"""Flower-17 images, labels and the train/val/test split.

Images: ``image_0001.jpg`` ... ``image_1360.jpg``, 80 consecutive images per class
(in the order of :data:`CLASSES`). The default data root is ``../shared/flower17``
relative to the repository root when it exists, else ``~/.cache/camkit/flower17``
(where :func:`download` puts the official archive on a machine with the internet).

Split: the official split 1 of ``datasplits.mat`` (``trn1``/``val1``/``tst1``)
when that file is in the data root; otherwise the committed deterministic
stratified split ``split_stratified_seed0.json`` (40/20/20 images per class,
the same sizes as the official split). :func:`load_split` says which one it
used in its ``name`` attribute.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SPLIT_JSON = HERE / "split_stratified_seed0.json"

#: The 17 class names, in label order (as in the dataset copy's ``labels.txt``).
CLASSES: Tuple[str, ...] = (
    "daffodil", "snowdrop", "lily_valley", "bluebell", "crocus", "iris", "tigerlily", "tulip",
    "fritillary", "sunflower", "daisy", "colts_foot", "dandelion", "cowslip", "buttercup",
    "windflower", "pansy",
)
NUM_CLASSES = 17
PER_CLASS = 80
NUM_IMAGES = NUM_CLASSES * PER_CLASS
SPLIT_SIZES = {"train": 40, "val": 20, "test": 20}  # per class

# Official files on the dataset's page (md5 as used by public loaders of this dataset;
# they cannot be checked offline here).
URL_PREFIX = "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/"
ARCHIVE = ("17flowers.tgz", "b59a65d8d1a99cd66944d474e1289eab")
SPLITS_MAT = ("datasplits.mat", "4828cddfd0d803c5abbdebcb1e148a1e")

Sample = Tuple[str, int]


class Split(dict):
    """``{"train": [(path, label), ...], "val": [...], "test": [...]}`` plus
    ``name`` (``"official-1"`` or ``"stratified-seed0"``) and ``source`` (the file read)."""

    name: str = ""
    source: str = ""


def default_data_root() -> Path:
    shared = REPO_ROOT.parent / "shared" / "flower17"
    if shared.is_dir():
        return shared
    return Path(os.environ.get("CAMKIT_CACHE", Path.home() / ".cache" / "camkit")) / "flower17"


def resolve_root(data_root: Optional[os.PathLike] = None) -> Path:
    return Path(data_root) if data_root is not None else default_data_root()


def image_dir(root: Path) -> Path:
    return root / "jpg" if (root / "jpg").is_dir() else root


def image_path(root: Path, index: int) -> Path:
    """Path of image ``index`` (1-based, as in the dataset's file names)."""
    return image_dir(root) / f"image_{index:04d}.jpg"


def label_of(index: int) -> int:
    """Label of image ``index`` (1-based): 80 consecutive images per class."""
    if not 1 <= index <= NUM_IMAGES:
        raise ValueError(f"image index must lie in [1, {NUM_IMAGES}], got {index}")
    return (index - 1) // PER_CLASS


def download(root: Optional[os.PathLike] = None, splits: bool = True) -> Path:
    """Download and check the official archive (and ``datasplits.mat``) into ``root``.

    Needs the internet; raises a RuntimeError naming the URL otherwise.
    """
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive, download_url

    root = resolve_root(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        if not image_path(root, NUM_IMAGES).exists():
            download_and_extract_archive(URL_PREFIX + ARCHIVE[0], str(root), md5=ARCHIVE[1])
        if splits and not check_integrity(str(root / SPLITS_MAT[0]), SPLITS_MAT[1]):
            download_url(URL_PREFIX + SPLITS_MAT[0], str(root), md5=SPLITS_MAT[1])
    except Exception as e:  # network errors come in many types
        raise RuntimeError(
            f"could not download Flower-17 from {URL_PREFIX} into {root} ({type(e).__name__}: {e}); "
            "without the internet, pass --data-root pointing at a folder holding jpg/image_0001.jpg ..."
        ) from e
    return root


def check_images(root: Path) -> None:
    missing = [i for i in (1, NUM_IMAGES) if not image_path(root, i).exists()]
    if missing:
        raise FileNotFoundError(
            f"Flower-17 images not found under {root} (looked for {image_path(root, missing[0])}); "
            "pass --data-root, or run `python -m benchmarks.flower17 prepare --download` with the internet"
        )


def make_stratified_split(seed: int = 0) -> Dict[str, List[int]]:
    """Deterministic stratified split of image indices (1-based): for each class,
    a seeded permutation of its 80 images gives 40 train, 20 val, 20 test."""
    rng = np.random.default_rng(seed)
    out: Dict[str, List[int]] = {k: [] for k in SPLIT_SIZES}
    for c in range(NUM_CLASSES):
        idx = rng.permutation(PER_CLASS) + 1 + c * PER_CLASS
        a, b = SPLIT_SIZES["train"], SPLIT_SIZES["train"] + SPLIT_SIZES["val"]
        out["train"] += sorted(int(i) for i in idx[:a])
        out["val"] += sorted(int(i) for i in idx[a:b])
        out["test"] += sorted(int(i) for i in idx[b:])
    return out


def write_split_json(path: os.PathLike = SPLIT_JSON, seed: int = 0) -> Path:
    split = make_stratified_split(seed)
    blob = {
        "name": f"stratified-seed{seed}",
        "description": "Deterministic stratified split of Flower-17 (image indices, 1-based): per class "
        "40 train / 20 val / 20 test, from numpy.random.default_rng(seed).permutation; generated by "
        "benchmarks.flower17.data.make_stratified_split because the official datasplits.mat is not "
        "available offline. Same sizes as the official split 1.",
        "seed": seed,
        **split,
    }
    path = Path(path)
    path.write_text(json.dumps(blob, indent=None, separators=(",", ":")) + "\n")
    return path


def _official_split(mat_path: Path, which: int = 1) -> Dict[str, List[int]]:
    from scipy.io import loadmat

    mat = loadmat(str(mat_path))
    keys = {"train": f"trn{which}", "val": f"val{which}", "test": f"tst{which}"}
    return {k: sorted(int(i) for i in np.asarray(mat[v]).ravel()) for k, v in keys.items()}


def split_indices(data_root: Optional[os.PathLike] = None) -> Tuple[str, str, Dict[str, List[int]]]:
    """``(name, source, {"train"|"val"|"test": [1-based image indices]})``."""
    root = resolve_root(data_root)
    mat = root / SPLITS_MAT[0]
    if mat.exists():
        return "official-1", str(mat), _official_split(mat, 1)
    blob = json.loads(SPLIT_JSON.read_text())
    return blob["name"], str(SPLIT_JSON.relative_to(REPO_ROOT)), {k: blob[k] for k in SPLIT_SIZES}


def load_split(data_root: Optional[os.PathLike] = None) -> Split:
    """The split as ``{"train"|"val"|"test": [(image path, label), ...]}``.

    Official split 1 when ``datasplits.mat`` is in the data root, else the
    committed stratified split; ``.name`` says which (``"official-1"`` or
    ``"stratified-seed0"``), ``.source`` the file it came from.
    """
    root = resolve_root(data_root)
    name, source, idx = split_indices(root)
    split = Split({k: [(str(image_path(root, i)), label_of(i)) for i in v] for k, v in idx.items()})
    split.name, split.source = name, source
    return split


def subset(samples: Sequence[Sample], per_class: int) -> List[Sample]:
    """The first ``per_class`` samples of each class (for --quick runs)."""
    seen: Dict[int, int] = {}
    out = []
    for p, y in samples:
        if seen.get(y, 0) < per_class:
            out.append((p, y))
            seen[y] = seen.get(y, 0) + 1
    return out


# ---------------------------------------------------------------- images and augmentation
IMAGE_SIZE = 256
NUM_COPIES = 9  # augmented copies per training image, besides the original


def load_image(path: str, size: int = IMAGE_SIZE) -> Image.Image:
    """RGB image resized to ``size`` x ``size`` (aspect ratio not kept, as in the study)."""
    with Image.open(path) as im:
        return im.convert("RGB").resize((size, size), Image.BILINEAR)


def augment_transform():
    """The study's offline augmentation: RandomAffine(+-20 degrees, 20% translation) then
    a horizontal flip with p = 0.5."""
    from torchvision import transforms as T

    return T.Compose([T.RandomAffine(degrees=20, translate=(0.2, 0.2)), T.RandomHorizontalFlip(0.5)])


def augmented_copies(img: Image.Image, image_index: int, seed: int, copies: int = NUM_COPIES) -> List[Image.Image]:
    """``[original] + copies`` augmented versions; copy k of image i depends only on
    (seed, i, k), so the result does not depend on processing order."""
    tf = augment_transform()
    out = [img]
    with torch.random.fork_rng(devices=[]):
        for k in range(copies):
            torch.manual_seed(seed * 10_000_000 + image_index * 100 + k)
            out.append(tf(img))
    return out


class ImageList(torch.utils.data.Dataset):
    """Tiny dataset over ``[(path, label)]``: returns ``(transform(image 256x256), label)``."""

    def __init__(self, samples: Sequence[Sample], transform=None, size: int = IMAGE_SIZE):
        self.samples = list(samples)
        self.transform = transform
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        p, y = self.samples[i]
        img = load_image(p, self.size)
        return (self.transform(img) if self.transform else img), y
