"""The tutorials in docs/tutorials/ run as written (jupytext percent scripts, cell by cell in one
namespace, in a scratch folder), and what they produce holds: shapes, files, and the maps against a
hand computation with plain autograd where that is cheap.

``camkit.adapters.build("efficientnet_lite0")`` gives a narrow ResNet18 with random weights and
ImageNet's class names instead of the offline EfficientNet-Lite0 (what 01-04 print is then not the real
model's); the segmentation and detection tutorials build their torchvision models with random weights
(``weights="none"``, offline) as they are written to; the video tutorial builds r3d_18 itself; the
Flower-17 tutorial uses the study's real offline backbone, on nine Flower-17 photos where the data set
is present and on the bundled photos otherwise. The rendered pages (docs/tutorials/rendered/, made by
docs/tutorials/render.py) are checked to hold every tutorial's current code (default run)."""
from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from small_models import narrow_resnet18

import camkit.adapters

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
RENDERED = TUTORIALS / "rendered"
NAMES = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # no download: metadata
REAL_BUILD = camkit.adapters.build


def _fake_build(name, weights="imagenet"):
    if name != "efficientnet_lite0":  # the segmentation and detection tutorials: random torchvision models
        assert weights == "none", f"a tutorial asked for a download: build({name!r}, {weights!r})"
        return REAL_BUILD(name, weights)
    torch.manual_seed(0)
    model = narrow_resnet18(num_classes=1000, divisor=16).eval()
    return model, dataclasses.replace(camkit.adapters.resolve(model), categories=tuple(NAMES))


def _cells(path: Path):
    """The code cells of a percent-format script (the header and the ``# %% [markdown]`` cells left out)."""
    parts = re.split(r"^# %%(.*)$", path.read_text(), flags=re.M)
    return [body for marker, body in zip(parts[1::2], parts[2::2]) if "[markdown]" not in marker and body.strip()]


def _tutorial(number: str) -> Path:
    (path,) = TUTORIALS.glob(f"{number}_*.py")
    return path


@pytest.fixture
def run(tmp_path, monkeypatch):
    """``run("05")`` executes tutorial 05 cell by cell in ``tmp_path`` with the fake build; returns its namespace."""
    monkeypatch.setattr(camkit.adapters, "build", _fake_build)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the Flower-17 tutorial adds the checkout to it
    monkeypatch.chdir(tmp_path)

    def run_one(number: str) -> dict:
        path = _tutorial(number)
        ns: dict = {"__name__": "__main__"}
        for k, cell in enumerate(_cells(path)):
            exec(compile(cell, f"{path.name} (cell {k + 1})", "exec"), ns)
        return ns

    return run_one


def _layer_output_and_grads(model, layer, x, scores_of):
    """The layer's output A (hooked) and the gradient of each of ``scores_of(model(x))`` (a list of
    0-d tensors) with respect to it: plain forward hooks and torch.autograd.grad."""
    kept = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: kept.update(A=o))
    try:
        with torch.enable_grad():
            scores = scores_of(model(x))
            grads = [torch.autograd.grad(s, kept["A"], retain_graph=True)[0] for s in scores]
    finally:
        handle.remove()
    return kept["A"].detach(), grads


def _gradcam(A, g):
    """Grad-CAM (Selvaraju et al.): ReLU(sum_c mean over positions of dS/dA_c * A_c), image 0."""
    dims = tuple(range(2, A.dim()))
    return torch.relu((g.mean(dim=dims, keepdim=True) * A).sum(1))[0]


def _layercam(A, g):
    """LayerCAM (Jiang et al.): ReLU(sum_c ReLU(dS/dA_c) A_c) per position, image 0."""
    return torch.relu((g.clamp(min=0) * A).sum(1))[0]


def _close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    assert float(want.max()) > 0


@pytest.mark.slow  # four tutorials: five methods, an export (its decoding process), a report: 5.7 s on 2 cores (load 8)
def test_the_first_four_tutorials_run_as_written(run, tmp_path, capsys):
    spaces = {n: run(n) for n in ("01", "02", "03", "04")}
    out = capsys.readouterr().out
    assert (tmp_path / "first_map.png").is_file() and (tmp_path / "compare_methods.png").is_file()
    assert spaces["01"]["res"]._repr_png_()[:4] == b"\x89PNG" and out.count("%") >= 3
    assert len(spaces["02"]["maps"]) == 5 and "agreement of the 5 methods" in out
    assert tuple(spaces["03"]["res"].maps.shape) == (2, 2, 224, 224)
    assert spaces["03"]["multi"].valid.tolist() == [[True, False], [True, True]]
    assert (tmp_path / "cams" / "report.html").is_file() and "camkit report: 4 images (0 failed)" in out
    # evaluate-masks on the stand-in boxes: the background IoU at the best threshold, counted by hand
    best = spaces["04"]["scores"]["best"]
    inter = union = 0
    for z_path in sorted((tmp_path / "cams" / "cams").glob("*.npz")):
        z = np.load(z_path)
        m = z["high_res"].astype(np.float64)
        pred = np.where(m.max(0) >= best["threshold"], z["keys"][m.argmax(0)] + 1, 0)
        gt = np.asarray(Image.open(tmp_path / "gt" / f"{z_path.stem}.png")).astype(np.int64)
        inter, union = inter + ((pred == 0) & (gt == 0)).sum(), union + ((pred == 0) | (gt == 0)).sum()
    assert abs(best["iou"][0] - inter / union) < 1e-9 and "mIoU" in out


@pytest.mark.slow  # LR-ASPP MobileNetV3 (random weights) at 160 px, 2 methods, 4 hand checks: 2.0 s on 2 cores (load 8)
def test_the_segmentation_tutorial_explains_classes_and_regions(run, tmp_path, capsys):
    ns = run("05")
    assert "segmentation out" in capsys.readouterr().out
    model, preset, x, top, face = ns["model"], ns["preset"], ns["x"], ns["top"], ns["face"]
    assert tuple(ns["own"].maps.shape) == (1, 1, 160, 160) and tuple(ns["boxed"].maps.shape) == (1, 2, 160, 160)
    assert ns["boxed"].targets.tolist() == [[top, 15]]
    with torch.no_grad():
        pred = model(x)["out"].argmax(1)[0]
    # LayerCAM of the predicted region: the class-`top` scores summed over the pixels predicted as top
    for layer in preset.layers:
        A, (g,) = _layer_output_and_grads(model, layer, x, lambda o: [(o["out"][0, top] * (pred == top)).sum()])
        _close(ns["own"].layer_maps[layer][0, 0], _layercam(A, g))
    # Grad-CAM of the two classes over the face box
    layer = preset.gradcam_layer
    A, grads = _layer_output_and_grads(model, layer, x, lambda o: [(o["out"][0, c] * face).sum() for c in (top, 15)])
    for k, g in enumerate(grads):
        _close(ns["boxed"].layer_maps[layer][0, k], _gradcam(A, g))
    figure = Image.open(tmp_path / "segmentation.png")
    assert figure.width > 4 * 512 and figure.height > 512  # four tiles at the photo's 512 x 512


@pytest.mark.slow  # Faster R-CNN MobileNetV3-320 (random weights) at 320 x 480, 5 forwards: 5.4 s on 2 cores (load 8)
def test_the_detection_tutorial_gives_one_map_per_box(run, tmp_path, capsys):
    ns = run("06")
    model, preset, x, res, det, best = ns["model"], ns["preset"], ns["x"], ns["res"], ns["det"], ns["best"]
    assert tuple(x.shape) == (1, 3, 320, 480) and tuple(res.maps.shape) == (1, 3, 320, 480)
    assert res.targets[0].tolist() == det["labels"][best].tolist()
    # the model's own boxes match themselves (IoU 1): each column is that detection's score
    torch.testing.assert_close(res.scores[0], det["scores"][best])
    assert len(capsys.readouterr().out.splitlines()) == 5  # the shape line, 3 boxes, the maps line

    def box_score(k):
        def scores_of(out):
            d = out[0]
            same = (d["labels"] == det["labels"][best[k]]).nonzero()[:, 0]
            iou = torchvision.ops.box_iou(det["boxes"][best[k]][None], d["boxes"][same].detach())[0]
            return [d["scores"][same[int(iou.argmax())]]]
        return scores_of

    layer = preset.gradcam_layer
    for k in range(3):
        A, (g,) = _layer_output_and_grads(model, layer, x, box_score(k))
        _close(res.layer_maps[layer][0, k], _gradcam(A, g))
    assert Image.open(tmp_path / "detection.png").size == (3 * 480 + 4 * 2, 320 + 2 * 2)


@pytest.mark.slow  # r3d_18 (random weights), 8 x 64 x 64 clip, Grad-CAM, LayerCAM, 3 hand checks, a GIF: 7.2 s (load 8)
def test_the_video_tutorial_gives_maps_over_time_a_strip_and_a_gif(run, tmp_path):
    ns = run("07")
    model, x, res, fine = ns["model"], ns["x"], ns["res"], ns["fine"]
    assert tuple(x.shape) == (1, 3, 8, 64, 64)
    assert tuple(res.maps.shape) == (1, 2, 8, 64, 64) and tuple(res.layer_maps["layer3"].shape) == (1, 2, 2, 8, 8)
    assert tuple(fine.maps.shape) == (1, 1, 8, 64, 64)
    with torch.no_grad():
        logits = model(x)
    assert res.targets[0].tolist() == logits[0].topk(2).indices.tolist()
    A, grads = _layer_output_and_grads(model, "layer3", x, lambda o: [o[0, int(c)] for c in res.targets[0]])
    for k, g in enumerate(grads):
        _close(res.layer_maps["layer3"][0, k], _gradcam(A, g))
    for layer in ("layer2", "layer3"):
        A, (g,) = _layer_output_and_grads(model, layer, x, lambda o: [o[0, int(res.targets[0, 0])]])
        _close(fine.layer_maps[layer][0, 0], _layercam(A, g))
    gif = Image.open(tmp_path / "video.gif")
    assert gif.n_frames == 8 and gif.size == (64, 64)
    assert Image.open(tmp_path / "video_strip.png").width == 8 * (64 + 2) + 2


@pytest.mark.slow  # the real Lite0 at 256 px on 9 photos (3 bundled ones), 2 heads trained: 6.3 s (3.3 s), load 8
@pytest.mark.parametrize("images", ["flower17", "bundled"])
def test_the_flower17_tutorial_trains_heads_and_maps_them(run, tmp_path, images, monkeypatch, capsys):
    sys.path.insert(0, str(TUTORIALS.parents[1]))
    from benchmarks.flower17 import data

    if images == "bundled":
        monkeypatch.setattr(data, "default_data_root", lambda: tmp_path / "no_flower17")
    elif not data.image_path(data.default_data_root(), 1).exists():
        pytest.skip(f"Flower-17 images not found under {data.default_data_root()}")
    ns = run("08")
    out = capsys.readouterr().out
    n_val = 3
    assert len(ns["val"]) == n_val and tuple(ns["feats"].shape) == (3 * len(ns["train"]), 1280, 7, 7)
    assert all(Path(p).name.startswith("image_") == (images == "flower17") for p, _ in ns["val"])
    for losses in ns["history"].values():  # the training loss falls at every epoch
        assert len(losses) == 10 and all(b < a for a, b in zip(losses, losses[1:])), losses
    cams, recams, truth = ns["cams"], ns["recams"], ns["truth"]
    assert tuple(cams.maps.shape) == (n_val, 1, 256, 256) and cams.targets[:, 0].tolist() == truth.tolist()
    with torch.no_grad():
        f = ns["backbone"](ns["x"])
        for name, maps in (("CAM", cams.layer_maps["head.relu"]), ("ReCAM minmax", recams.layer_maps["head"])):
            head = ns["heads"][name]
            M = torch.relu(head.conv(f))                       # the head's class maps (B, N, 7, 7)
            w = head.fc.weight[truth]                          # (B, N): the true class's row of W
            cam = torch.einsum("bn,bnhw->bhw", w, M)           # CAM: sum_k W[c, k] M_k
            if name == "CAM":
                want = cam
            else:  # the study's ReCAM: M masked by the min-max normalized CAM of c, then W[c] again
                lo, hi = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
                want = torch.einsum("bn,bnhw->bhw", w, M * ((cam - lo) / (hi - lo))[:, None])
            torch.testing.assert_close(maps[:, 0], want, rtol=1e-4, atol=1e-5)
    assert out.count("the CAM head says") == n_val
    assert Image.open(tmp_path / "flower17_maps.png").width == 3 * (256 + 4) + 4 * 2


def test_every_tutorial_is_tested_and_rendered_with_its_current_code():
    """Each tutorial has its test above and a rendered page that holds its code as it is now, with
    every picture the page links (`python docs/tutorials/render.py NN` renders tutorial NN again)."""
    numbers = sorted(p.name[:2] for p in TUTORIALS.glob("[0-9][0-9]_*.py"))
    assert numbers == ["01", "02", "03", "04", "05", "06", "07", "08"]
    for n in numbers:
        path = _tutorial(n)
        page = RENDERED / f"{path.stem}.md"
        assert page.is_file(), f"{page} is missing: python docs/tutorials/render.py {n}"
        text = page.read_text()
        for cell in _cells(path):
            assert cell.strip() in text, f"{page.name} is older than {path.name}: python docs/tutorials/render.py {n}"
        links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
        assert all((RENDERED / link).is_file() for link in links), (page.name, links)
        assert links or n == "04", f"{page.name} shows no picture"  # 04 prints its export and report lines
