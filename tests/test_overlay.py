"""Overlays and layouts: exact pixel arithmetic, sizes, and the matplotlib-free path."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from camkit import overlay as ov
from camkit.normalize import postprocess


def _img(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _ramp(h=20, w=30):
    return torch.linspace(0, 1, w).expand(h, w).clone()


def test_alpha_zero_is_the_image_and_alpha_one_the_colormap():
    img, m = _img(), _ramp()
    assert np.array_equal(np.asarray(ov.overlay(img, m, alpha=0.0)), img)
    assert np.array_equal(np.asarray(ov.overlay(img, m, alpha=1.0)), ov.colorize(m))


def test_blend_arithmetic():
    img, m = _img(), _ramp()
    heat = ov.colorize(m).astype(np.float64)
    ref = np.clip(np.floor(0.3 * heat + 0.7 * img + 0.5), 0, 255)
    out = np.asarray(ov.overlay(img, m, alpha=0.3)).astype(np.float64)
    assert np.abs(out - ref).max() <= 1  # float32 rounding at .5 boundaries


def test_colorize_endpoints_follow_matplotlib_jet():
    import matplotlib

    c = ov.colorize(torch.tensor([[0.0, 0.5, 1.0]]))
    ref = (matplotlib.colormaps["jet"](np.array([0.0, 0.5, 1.0]))[:, :3] * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(c[0], ref)
    assert c[0, 0, 2] > 100 and c[0, 0, 0] == 0  # dark blue at 0
    assert c[0, 2, 0] > 100 and c[0, 2, 2] == 0  # dark red at 1


def test_without_matplotlib_builtin_jet_and_clear_error(monkeypatch):
    import matplotlib

    v = np.linspace(0, 1, 101)
    ref = matplotlib.colormaps["jet"](v)[:, :3]
    assert np.abs(ov._jet(v) - ref).max() < 0.02  # the same ramp; matplotlib quantizes it to 256 levels
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed, even when other tests imported it
    c = ov.colorize(torch.tensor([[0.0, 1.0]]))
    assert np.array_equal(c[0], (ov._jet(np.array([0.0, 1.0])) * 255 + 0.5).astype(np.uint8))
    with pytest.raises(ImportError, match=r"camkit\[plot\]"):
        ov.colorize(torch.zeros(2, 2), cmap="viridis")
    with pytest.raises(ImportError, match=r"camkit\[plot\]"):
        ov.labelled_grid([_img()], ["t"])


def test_small_map_is_resized_to_the_image():
    img = _img(32, 48)
    small = torch.full((7, 7), 0.3)
    full = torch.full((32, 48), 0.3)
    ref = np.asarray(ov.overlay(img, full)).astype(int)
    assert np.abs(np.asarray(ov.overlay(img, small)).astype(int) - ref).max() <= 1
    batched = small[None, None]  # (1, 1, h, w) is accepted too
    assert np.abs(np.asarray(ov.overlay(img, batched)).astype(int) - ref).max() <= 1
    # a left-to-right ramp keeps its direction after resizing: red channel grows to the right
    r = np.asarray(ov.overlay(img, torch.linspace(0, 1, 5).expand(5, 5), alpha=1.0)).astype(int)
    assert r[:, -1, 0].min() > r[:, 0, 0].max() and r.shape == (32, 48, 3)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        ov.overlay(img, torch.zeros(2, 7, 7))


def test_postprocess_option_matches_the_study_postprocess():
    img = _img()
    m = torch.rand(20, 30, generator=torch.Generator().manual_seed(1))
    a = np.asarray(ov.overlay(img, m, postprocess=True))
    b = np.asarray(ov.overlay(img, postprocess(m)))
    assert np.array_equal(a, b)
    low = np.asarray(ov.overlay(img, torch.full((20, 30), 0.2), postprocess=True))
    zero = np.asarray(ov.overlay(img, torch.zeros(20, 30)))
    assert np.array_equal(low, zero)  # below the 0.3 cut


def test_inputs_accepted():
    arr = _img()
    t = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    assert np.array_equal(ov.to_uint8(t), arr)
    assert np.array_equal(ov.to_uint8(Image.fromarray(arr)), arr)
    gray = ov.to_uint8(arr[..., 0])
    assert gray.shape == (20, 30, 3) and np.array_equal(gray[..., 2], arr[..., 0])
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        ov.to_uint8(torch.zeros(5, 4, 4))
    with pytest.raises(ValueError, match="alpha"):
        ov.overlay(arr, _ramp(), alpha=1.5)


def test_denormalize_inverts_normalize():
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    n = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(ov.denormalize(n, mean, std), x, rtol=0, atol=1e-6)


def test_grid_geometry_and_placement():
    tiles = [np.full((10, 16, 3), 20 * k, np.uint8) for k in range(6)]
    g = ov.grid(tiles, cols=4, pad=2)
    assert g.size == (4 * 16 + 5 * 2, 2 * 10 + 3 * 2)
    a = np.asarray(g)
    # tile 5 sits in row 1, column 1
    assert np.all(a[2 + 10 + 2: 2 + 10 + 2 + 10, 2 + 16 + 2: 2 + 16 + 2 + 16] == 100)
    assert np.all(a[0, :] == 255)  # padding is white


def test_compact_grid_pages():
    tiles = [np.full((8, 8, 3), k, np.uint8) for k in range(13)]
    pages = ov.compact_grid(tiles, rows=3, cols=4, pad=1)
    assert len(pages) == 2
    assert pages[0].size == (4 * 8 + 5, 3 * 8 + 4)
    assert pages[1].size == (8 + 2, 8 + 2)  # the 13th tile alone
    assert np.asarray(pages[1])[1, 1, 0] == 12


def test_strip_is_one_column_with_labels():
    tiles = [np.full((12, 20, 3), 50, np.uint8)] * 3
    s = ov.strip(tiles, pad=2)
    assert s.size == (20 + 4, 3 * (12 + 2) + 2)
    labelled = ov.strip(tiles, labels=["input", "gradcam", "layercam"], pad=2)
    assert labelled.size[0] == 24 and labelled.size[1] > s.size[1]
    with pytest.raises(ValueError, match="2 labels for 3 tiles"):
        ov.strip(tiles, labels=["a", "b"])
    with pytest.raises(ValueError, match="no tiles"):
        ov.strip([])


def test_tile_title_and_labelled_grid_file(tmp_path):
    t = ov.tile_title([("tabby", 0.391), ("tiger cat", 0.2)], truth="cat")
    assert t == "truth: cat\n1. tabby 39%\n2. tiger cat 20%"
    assert ov.tile_title([("a" * 40, 1.0)], width=10) == "1. aaaaaaaaa~ 100%"
    tiles = [_img(40, 40, k) for k in range(5)]
    titles = [ov.tile_title([("x", 0.5)], truth=f"t{k}") for k in range(5)]
    path = tmp_path / "grid.png"
    ov.save_labelled_grid(path, tiles, titles, cols=3, suptitle="demo")
    with Image.open(path) as im:
        w, h = im.size
        assert im.format == "PNG"
    assert w > h > 0  # 3 columns, 2 rows of square tiles plus titles
    with pytest.raises(ValueError, match="titles"):
        ov.labelled_grid(tiles, titles[:2])


# --------------------------------------------------------------------------- on the user's photo

def test_overlay_with_the_transform_is_aligned_on_the_photo():
    from torchvision import transforms as T

    from camkit.geometry import to_original

    assert ov.to_original is to_original
    photo = _img(60, 90, seed=3)  # landscape: Resize(40) -> 40 x 60, CenterCrop(32) keeps the middle
    tf = T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor()])
    cam = torch.rand(32, 32, generator=torch.Generator().manual_seed(4))
    aligned = np.asarray(ov.overlay(photo, cam, transform=tf, alpha=0.6)).astype(int)
    back = to_original(cam, photo, tf, fill=float("nan"))
    ref = np.asarray(ov.overlay(photo, back, alpha=0.6)).astype(int)
    assert np.array_equal(aligned, ref)
    top, left, h, w = ov.crop_box(photo.shape[:2], tf)
    assert (top, h) == (6.0, 48.0) and left == pytest.approx(14 * 1.5) and w == pytest.approx(48.0)
    # outside the network's field of view the photo is untouched; inside it is coloured
    assert np.array_equal(aligned[:, :20], photo[:, :20]) and np.array_equal(aligned[:5], photo[:5])
    assert (aligned[10:50, 25:65] != photo[10:50, 25:65]).any(axis=-1).mean() > 0.95
    # the stretched overlay (no transform) differs: it pretends the crop is the whole photo
    assert not np.array_equal(np.asarray(ov.overlay(photo, cam, alpha=0.6)).astype(int), aligned)


def test_nan_is_transparent_and_vmin_vmax_span_the_colormap():
    img = _img()
    m = _ramp() * 4 - 1  # -1 .. 3
    a = np.asarray(ov.overlay(img, m, vmin=-1, vmax=3))
    b = np.asarray(ov.overlay(img, (m + 1) / 4))
    assert np.array_equal(a, b)
    holes = _ramp().clone()
    holes[:, :5] = float("nan")
    c = np.asarray(ov.overlay(img, holes, alpha=1.0))
    assert np.array_equal(c[:, :5], img[:, :5]) and np.array_equal(c[:, 5:], ov.colorize(holes.nan_to_num())[:, 5:])
    with pytest.raises(ValueError, match="vmax must be greater than vmin"):
        ov.overlay(img, m, vmin=1, vmax=1)


def test_colorbar_and_with_colorbar():
    bar = ov.colorbar(100, "jet", 0.0, 2.5, height=10)
    a = np.asarray(bar)
    assert bar.size[0] == 100 and bar.size[1] > 10
    assert np.array_equal(a[:10], ov.colorize(torch.linspace(0, 1, 100).expand(10, 100)))
    assert (a[10:] < 128).any()  # the end values are written under the ramp
    img = ov.overlay(_img(40, 60), _ramp(40, 60))
    framed = ov.with_colorbar(img, "jet", 0, 1)
    assert framed.size[0] == 60 and framed.size[1] > 40
    assert np.array_equal(np.asarray(framed)[:40], np.asarray(img))  # the overlay's pixels are unchanged
    fig = ov.labelled_grid([_img(20, 20)] * 3, ["a", "b", "c"], cols=3, colorbar=("viridis", None, None, "rel"))
    cb = fig.axes[-1]
    assert len(fig.axes) == 4 and [t.get_text() for t in cb.get_xticklabels()] == ["min", "max"]


def test_tiles_of_another_aspect_are_fitted_not_stretched():
    square = np.full((20, 20, 3), 10, np.uint8)
    wide = np.full((10, 40, 3), 200, np.uint8)
    g = np.asarray(ov.grid([square, wide], cols=2, pad=0))
    assert g.shape == (20, 40, 3)
    right = g[:, 20:]
    assert np.all(right[:7] == 255) and np.all(right[13:] == 255)  # 20 x 5, letterboxed in the background
    assert np.all(right[8:12] == 200)
