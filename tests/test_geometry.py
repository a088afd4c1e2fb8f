"""Maps put back on the original photo: a bright square must come back where it was."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from camkit.errors import InputError
from camkit.geometry import crop_box, input_size, to_original


def _photo(h: int, w: int, box: tuple) -> Image.Image:
    """A dark photo with one bright square at box = (top, left, size)."""
    a = np.full((h, w, 3), 20, dtype=np.uint8)
    t, left, s = box
    a[t:t + s, left:left + s] = 235
    return Image.fromarray(a)


def _tv_transform():
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.IMAGENET1K_V2.transforms()  # ImageClassification: resize 232, crop 224


def _timm_transform(mode: str = "center"):
    import timm.data

    return timm.data.create_transform(input_size=(3, 224, 224), crop_pct=0.875, crop_mode=mode,
                                      interpolation="bicubic")


TRANSFORMS = {
    "torchvision": _tv_transform,
    "timm": _timm_transform,
    "timm-squash": lambda: _timm_transform("squash"),
    "timm-border": lambda: _timm_transform("border"),
    "compose": lambda: T.Compose([T.Resize(200), T.CenterCrop((160, 180)), T.ToTensor()]),
    "v2": lambda: _v2(),
}


def _v2():
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.Resize(190), v2.CenterCrop(170), v2.ToDtype(torch.float32, scale=True)])
# (photo H, W), square (top, left, size): inside the center crop of every transform above
PHOTOS = {"portrait": ((330, 210), (150, 60, 40)), "landscape": ((200, 320), (70, 170, 36))}


def _bright_box(m: torch.Tensor, thr: float = 0.5):
    ys, xs = torch.nonzero(m > thr, as_tuple=True)
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


@pytest.mark.parametrize("photo", sorted(PHOTOS))
@pytest.mark.parametrize("tf", sorted(TRANSFORMS))
def test_the_square_seen_by_the_network_maps_back_onto_the_square(tf, photo):
    (h, w), (top, left, s) = PHOTOS[photo]
    transform = TRANSFORMS[tf]()
    img = _photo(h, w, (top, left, s))
    x = transform(img)  # what the network sees: (3, h', w'), normalized
    cam = (x - x.amin()) / (x.amax() - x.amin())  # the map "is the square" on the network input
    cam = cam.mean(0)
    back = to_original(cam, img, transform)
    assert back.shape == (h, w)
    y0, x0, y1, x1 = _bright_box(back)
    for got, want in zip((y0, x0, y1, x1), (top, left, top + s, left + s)):
        assert abs(got - want) <= 2, (tf, photo, (y0, x0, y1, x1), (top, left, top + s, left + s))
    peak = divmod(int(back.argmax()), w)
    assert top <= peak[0] < top + s and left <= peak[1] < left + s
    # a naive stretch of the crop's map over the whole photo misses the square by far
    naive = torch.nn.functional.interpolate(cam[None, None], size=(h, w), mode="bilinear")[0, 0]
    assert max(abs(a - b) for a, b in zip(_bright_box(naive), (top, left, top + s, left + s))) > 2


def test_a_cam_of_a_model_whose_map_is_the_square_lands_on_it():
    """End to end with camkit.CAM: conv 1x1 = brightness, GAP, linear; its class-0 CAM is the bright square."""
    import camkit

    class Bright(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Conv2d(3, 1, 1)
            self.fc = nn.Linear(1, 2)
            with torch.no_grad():
                self.features.weight.fill_(1 / 3)
                self.features.bias.fill_(0)
                self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
                self.fc.bias.zero_()

        def forward(self, x):
            return self.fc(self.features(x).mean(dim=(2, 3)))

    transform = _tv_transform()
    img = _photo(300, 420, (120, 250, 40))
    x = transform(img)[None]
    res = camkit.CAM(Bright().eval(), layers="features", fc="fc")(x, targets=[0])
    back = to_original(res.maps[0, 0], img, transform)
    peak = divmod(int(back.argmax()), 420)
    assert 120 <= peak[0] < 160 and 250 <= peak[1] < 290
    y0, x0, y1, x1 = _bright_box(back)
    assert max(abs(a - b) for a, b in zip((y0, x0, y1, x1), (120, 250, 160, 290))) <= 2


def test_crop_box_by_hand():
    # Resize(256) of 480x640 -> 256x341; CenterCrop(224): top round(16) = 16, left round(58.5) = 58 (torchvision)
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    top, left, bh, bw = crop_box((480, 640), tf)
    assert top == pytest.approx(16 * 480 / 256) and bh == pytest.approx(224 * 480 / 256)
    assert left == pytest.approx(58 * 640 / 341) and bw == pytest.approx(224 * 640 / 341)
    assert input_size((480, 640), tf) == (224, 224)
    # padding: a 10x5 image center-cropped to 224 sits in the middle of the input
    assert crop_box((10, 5), T.CenterCrop(224)) == (-107.0, -109.0, 224.0, 224.0)
    assert crop_box(Image.new("RGB", (640, 480)), None) == (0.0, 0.0, 480.0, 640.0)
    assert crop_box(np.zeros((480, 640, 3)), tf) == crop_box((480, 640), tf)


def test_leading_dims_layer_resolution_fill_and_dtype():
    tf = _timm_transform()
    maps = torch.rand(2, 3, 224, 224, dtype=torch.float64)
    out = to_original(maps, (150, 260), tf, fill=float("nan"))
    assert out.shape == (2, 3, 150, 260) and out.dtype == torch.float64
    for b in range(2):
        for k in range(3):
            assert torch.equal(out[b, k].nan_to_num(-1), to_original(maps[b, k], (150, 260), tf, fill=-1))
    top, left, bh, bw = crop_box((150, 260), tf)
    inside = out[0, 0, int(top) + 1:int(top + bh) - 1, int(left) + 1:int(left + bw) - 1]
    assert torch.isfinite(inside).all()
    assert torch.isnan(out[0, 0, :, : int(left) - 1]).all()  # left of the crop: not seen
    # a 7x7 layer map covers the same field of view
    coarse = torch.zeros(7, 7)
    coarse[3, 3] = 1
    back = to_original(coarse, (150, 260), tf)
    py, px = divmod(int(back.argmax()), 260)
    assert abs(py - (top + bh / 2)) <= 2 and abs(px - (left + bw / 2)) <= 2
    assert to_original(np.ones((5, 5), dtype=np.float32), (20, 30), None).shape == (20, 30)


@pytest.mark.parametrize("bad", [
    T.Compose([T.RandomResizedCrop(224), T.ToTensor()]),
    T.Compose([T.Resize(256), T.Lambda(lambda im: im), T.CenterCrop(224)]),
    T.RandomHorizontalFlip(),
    lambda im: im,
])
def test_a_transform_that_cannot_be_inverted_is_refused(bad):
    with pytest.raises(InputError, match="cannot map a map back through the transform step"):
        to_original(torch.zeros(224, 224), (300, 400), bad)


def test_random_timm_resize_and_bad_sizes_are_refused():
    from timm.data.transforms import ResizeKeepRatio

    with pytest.raises(InputError, match="random resize"):
        crop_box((100, 100), ResizeKeepRatio(224, random_scale_prob=0.5))
    with pytest.raises(InputError, match="must be positive"):
        crop_box((0, 10), None)
    with pytest.raises(InputError, match=r"\(\.\.\., h, w\)"):
        to_original(torch.zeros(5), (10, 10), None)
    with pytest.raises(TypeError, match="original image"):
        to_original(torch.zeros(5, 5), "photo.jpg", None)
