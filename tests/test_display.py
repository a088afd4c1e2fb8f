"""Notebook habits: a CAMResult shows itself (``_repr_png_``, ``res.show``), ``overlay(cmap=)`` takes
matplotlib Colormap objects, ``camkit.overlay.show``, short reprs of the method objects, and no pyplot
import when camkit is imported."""
from __future__ import annotations

import ast
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from PIL import Image
from small_models import narrow_resnet18

import camkit
from camkit.display import input_view, result_picture, target_label
from camkit.errors import InputError
from camkit.methods import CAMResult

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return narrow_resnet18(num_classes=5).eval()


def _result(maps: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> CAMResult:
    return CAMResult(maps=maps, targets=targets, logits=logits, scores=logits.gather(1, targets))


def test_a_result_shows_its_overlays_in_jupyter(model):
    """One column per image, one tile per target; where a map is 1 the tile is red (jet's top), where it is
    0 blue (its bottom), drawn over the input: the picture shows the maps, not just their shapes."""
    maps = torch.zeros(2, 3, 32, 32)
    maps[:, :, :, :16] = 1.0  # left half hot
    res = _result(maps, torch.randn(2, 5), torch.tensor([[0, 1, 2], [3, 4, 0]]))
    res.inputs = torch.zeros(2, 3, 32, 32)  # a constant input: the overlay colours alone differ
    png = res._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pic = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    one = np.asarray(result_picture(_result(maps[:1, :1], res.logits[:1], res.targets[:1, :1]))).shape
    assert pic.shape[1] > 1.8 * one[1] and pic.shape[0] > 2.5 * (one[0] - 40)  # 2 columns, 3 rows
    red = (pic[..., 0] > 40) & (pic[..., 1] < 10) & (pic[..., 2] < 10)   # jet(1) = (128, 0, 0), half opaque
    blue = (pic[..., 2] > 40) & (pic[..., 0] < 10) & (pic[..., 1] < 10)  # jet(0) = (0, 0, 128)
    assert red.sum() > 6 * 60 * 100 and blue.sum() > 6 * 60 * 100  # six tiles, each half red, half blue
    assert res._repr_png_ is not None and "CAMResult(" in repr(res)


def test_labels_name_the_class_and_its_probability():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    res = _result(torch.zeros(1, 2, 4, 4), logits, torch.tensor([[0, 2]]))
    p = np.exp([2.0, 0.0, -1.0]) / np.exp([2.0, 0.0, -1.0]).sum()
    assert target_label(res, 0, 0) == f"class 0 {100 * p[0]:.1f}%"
    res.categories = ["tabby", "dog", "owl"]
    assert target_label(res, 0, 1) == f"owl {100 * p[2]:.1f}%"
    res.targets = torch.tensor([[0, -1]])  # a target that is not one class
    assert target_label(res, 0, 1) == "target 1"


def test_a_method_call_keeps_its_input_for_the_picture_and_show(model):
    x = torch.randn(2, 3, 32, 32)
    with camkit.GradCAM(model, layers="layer4") as cam:
        res = cam(x, topk=2)
    assert torch.equal(res.inputs, x) and res._repr_png_()[:4] == b"\x89PNG"
    view = input_view(x[0])  # the input min-max scaled, as the network saw it
    assert view.dtype == np.uint8 and view.min() == 0 and view.max() == 255
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    fig = Figure()
    axes = fig.subplots(1, 2)
    res.categories = [f"flower {i}" for i in range(5)]
    got = res.show(photo, axes=axes, cmap=colormaps["viridis"])
    assert got is fig and [a.get_title() for a in axes] == [target_label(res, 0, k) for k in range(2)]
    assert all(t.startswith("flower ") for t in (a.get_title() for a in axes))
    assert axes[0].images[0].get_array().shape == (40, 50, 3)  # drawn on the photo, at its size
    with pytest.raises(InputError, match="out of range"):
        res.show(b=5, axes=axes)


def test_overlay_takes_colormap_objects_and_shows_on_an_axes():
    cam = np.linspace(0, 1, 20, dtype=np.float32)[None].repeat(10, 0)
    img = np.zeros((10, 20, 3), np.uint8)
    by_name = np.asarray(camkit.overlay.overlay(img, cam, cmap="viridis"))
    by_object = np.asarray(camkit.overlay.overlay(img, cam, cmap=colormaps["viridis"]))
    assert np.array_equal(by_name, by_object)
    two = ListedColormap([(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)])  # matplotlib's own colours: red then blue
    out = np.asarray(camkit.overlay.overlay(img, cam, alpha=1.0, cmap=two))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, -1]) == (0, 0, 255)
    ax = Figure().subplots()
    assert camkit.overlay.show(img, cam, ax=ax, title="t", alpha=1.0, cmap=two) is ax and ax.get_title() == "t"
    assert np.array_equal(np.asarray(ax.images[0].get_array()), out)
    bar = np.asarray(camkit.overlay.colorbar(20, two, height=4))
    assert tuple(bar[0, 0]) == (255, 0, 0)


def test_every_method_object_has_a_short_repr(model):
    preset = camkit.adapters.resolve(model)
    shown = 0
    for name in camkit.METHODS:
        try:
            kw = preset.method_kwargs(name)
            m = camkit.METHODS[name](model, **kw)
        except InputError:  # a head method (CAMModel only) or one this model cannot take
            continue
        text = repr(m)
        m.remove()
        assert text.startswith(f"{type(m).__name__}(layers=[") and len(text) < 300, text
        assert repr(m.layer_names[0]) in text and repr(m.layer_names[-1]) in text
        shown += 1
    assert shown >= 10
    m = camkit.GradCAM(model, layers="layer4", aug_smooth=True)
    assert repr(m) == "GradCAM(layers=['layer4'], aug_smooth=True)"
    names = [n for n, _ in model.named_modules() if n.endswith("bn1")]  # many layers: first, last, count
    m = camkit.GradCAM(model, layers=names, output=lambda out: out)
    assert repr(m) == f"GradCAM(layers=['{names[0]}', '{names[1]}', ..., '{names[-1]}'] ({len(names)} layers), " \
                      "output=<lambda>)"


def test_no_camkit_module_imports_pyplot_when_imported():
    """pyplot picks a backend when imported: camkit imports it only inside the functions that draw."""
    top = []
    for p in sorted((ROOT / "camkit").rglob("*.py")):
        text = p.read_text()
        if "pyplot" not in text:
            continue
        for node in ast.parse(text).body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else [])
            top += [f"{p.name}: {n}" for n in names if n.startswith("matplotlib.pyplot")]
    assert not top, top


def test_a_preset_has_a_short_repr():
    """14,024 characters before (all 1000 class names): now the fields that differ from the defaults,
    long ones shortened."""
    p = camkit.adapters.Preset(family="x", layers=("a", "b"), gradcam_layer="b",
                               categories=tuple(f"c{i}" for i in range(1000)), transform=lambda im: im)
    assert repr(p) == ("Preset(family='x', layers=('a', 'b'), gradcam_layer='b', transform=<lambda>, "
                       "categories=('c0', 'c1', ..., 'c999') (1000 items))")
    assert len(repr(camkit.adapters.resolve(narrow_resnet18(num_classes=5)))) < 400
