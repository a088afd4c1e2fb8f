"""Reliability, round 3 (issue 20): an export never mixes two models, labels or classes; damaged
outputs are redone; no hang, no traceback, no silently wrong map. Each test names its item.

Most exports here run in-process on a small random ResNet-18 (5 classes, 40 px input) that
``camkit.adapters.build`` is patched to return whatever --model says; the subprocess tests
(file-size limit, Ctrl-C) build ``resnet18 --weights none`` (seeded: the same weights everywhere).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms as T

import camkit
from camkit import cli
from camkit.adapters import resolve
from camkit.app import ExplainSpec, MethodSpec, ModelSpec
from camkit.errors import InputError, InputTypeError
from camkit.export import output_paths, read_manifest, run

NAMES = ("daisy", "tulip", "rose", "pansy", "iris")
TF = T.Compose([T.Resize(44), T.CenterCrop(40), T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])


def _small(seed: int = 0):
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=len(NAMES)).eval()
    return model, dataclasses.replace(resolve(model), transform=TF, input_size=(40, 40), categories=NAMES)


@pytest.fixture(scope="module")
def small():
    return _small(0)


@pytest.fixture
def built(monkeypatch, small):
    """`camkit ... --model X --weights W` builds the small model; weights file W (if any) seeds it."""
    def build(name, weights="imagenet"):
        if weights not in ("imagenet", "none") and os.path.isfile(weights):
            model, preset = _small(0)
            model.load_state_dict(torch.load(weights))
            return model, preset
        return small
    monkeypatch.setattr(camkit.adapters, "build", build)
    return small


def _images(root: Path, names=("a/x.png", "b/x.png", "c/y.jpg"), size=(40, 52)) -> list:
    rng = np.random.default_rng(0)
    out = []
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def _export(src, out, *extra):
    return cli.main(["export", str(src), "--out", str(out), "--method", "gradcam", "--threads", "1",
                     "--workers", "0", "--no-progress", "--batch-size", "2", *map(str, extra)])


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("camkit: error: ") and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- labels (1, 2, 19, 21)


def test_labels_match_by_path_never_by_file_name(built, tmp_path, capsys):
    """1: b/x.png must not borrow a/x.png's label."""
    _images(tmp_path / "src")
    csv = tmp_path / "labels.csv"
    csv.write_text(f"{tmp_path}/src/a/x.png,1\n{tmp_path}/src/c/y.jpg,2\n")
    assert _export(tmp_path / "src", tmp_path / "o", "--labels", csv) == 2
    err = _one_line(capsys.readouterr().err)
    assert "has no row for 1 of 3 images" in err and "src/b/x.png" in err


def test_two_rows_for_one_image_are_refused(built, tmp_path, capsys):
    """2: x.png,1 and x.png,4 is a conflict; the message says how to give several classes."""
    _images(tmp_path / "src", ("x.png",))
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nsrc/x.png,1\nsrc/x.png,4\n")
    assert _export(tmp_path / "src", tmp_path / "o", "--labels", csv) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"{csv}:2 and {csv}:3 both label src/x.png (1 and 4)" in err and "src/x.png,1;4" in err


def test_a_superscript_digit_is_not_a_class_index(built, tmp_path, capsys):
    """19: '²' passes str.isdigit(); it must be reported as neither an index nor a name."""
    _images(tmp_path / "src", ("x.png",))
    csv = tmp_path / "labels.csv"
    csv.write_text("src/x.png,²\n")
    assert _export(tmp_path / "src", tmp_path / "o", "--labels", csv) == 2
    assert "'²' is neither a class index nor a class name" in _one_line(capsys.readouterr().err)


def test_a_utf8_bom_labels_file_reads(built, tmp_path):
    """21: spreadsheet programs write a byte-order mark before the header."""
    _images(tmp_path / "src", ("x.png", "y.png"))
    csv = tmp_path / "labels.csv"
    csv.write_bytes("\ufeffpath,label\nsrc/x.png,tulip\nsrc/y.png,3\n".encode("utf-8"))
    assert _export(tmp_path / "src", tmp_path / "o", "--labels", csv) == 0
    assert [r["keys"] for r in read_manifest(tmp_path / "o")] == [[1], [3]]


# --------------------------------------------------------------------------- resume and overwrite (3-5, 7, 8)


def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")


def test_overwrite_leaves_no_stale_output(built, tmp_path, capsys):
    """3: gradcam, then a corrupt image and --method layercam --overwrite: the image fails, its
    gradcam outputs are gone, the failure is counted."""
    src = tmp_path / "src"
    imgs = _images(src, ("im1.png", "im2.png"))
    assert _export(src, tmp_path / "o") == 0
    _corrupt(imgs[0])
    rc = cli.main(["export", str(src), "--out", str(tmp_path / "o"), "--method", "layercam", "--overwrite",
                   "--threads", "1", "--workers", "0", "--no-progress"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 1 and "1 ok" in line and "1 failed" in line, line
    assert not any(p.exists() for p in output_paths(tmp_path / "o", "im1"))
    recs = {r["rel"]: r for r in read_manifest(tmp_path / "o")}
    assert recs["im1"]["status"] == "error" and recs["im2"]["status"] == "ok"


def test_other_weights_are_refused_on_resume(built, tmp_path, capsys):
    """4: the file behind --weights is replaced, one output deleted: the rerun refuses instead of
    mixing two models; in Python, two modules likewise."""
    src = tmp_path / "src"
    _images(src)
    w = tmp_path / "w.pt"
    torch.save(_small(0)[0].state_dict(), w)
    assert _export(src, tmp_path / "o", "--weights", w) == 0
    torch.save(_small(1)[0].state_dict(), w)
    output_paths(tmp_path / "o", "c/y")[0].unlink()
    assert _export(src, tmp_path / "o", "--weights", w) == 2
    assert "other settings (weights_sha256)" in _one_line(capsys.readouterr().err)
    spec = lambda m: ExplainSpec(ModelSpec(m, transform=TF), MethodSpec("gradcam"))  # noqa: E731
    run(src, tmp_path / "p", spec(_small(0)[0]), workers=0, progress=False)
    with pytest.raises(InputError, match="weights_sha256"):
        run(src, tmp_path / "p", spec(_small(1)[0]), workers=0, progress=False)


def test_reordered_classes_are_refused_on_resume(built, tmp_path, capsys):
    """5: labels by name, classes.txt reordered, one output deleted: refused (the class list is a setting)."""
    src = tmp_path / "src"
    _images(src, ("x.png", "y.png"))
    classes, csv = tmp_path / "classes.txt", tmp_path / "labels.csv"
    classes.write_text("\n".join(NAMES))
    csv.write_text("src/x.png,tulip\nsrc/y.png,tulip\n")
    assert _export(src, tmp_path / "o", "--labels", csv, "--classes", classes) == 0
    classes.write_text("\n".join(reversed(NAMES)))
    output_paths(tmp_path / "o", "y")[1].unlink()
    assert _export(src, tmp_path / "o", "--labels", csv, "--classes", classes) == 2
    assert "categories" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("damage", ["truncated npz", "empty png", "foreign npz"])
def test_damaged_outputs_are_recomputed(built, tmp_path, capsys, damage):
    """7: a truncated .npz, a 0-byte mask, an npz without the arrays: redone on resume."""
    src = tmp_path / "src"
    _images(src, ("x.png", "y.png"))
    assert _export(src, tmp_path / "o") == 0
    good = {p: p.read_bytes() for p in output_paths(tmp_path / "o", "x")}
    npz, png = output_paths(tmp_path / "o", "x")
    if damage == "truncated npz":
        npz.write_bytes(good[npz][: len(good[npz]) // 2])
    elif damage == "empty png":
        png.write_bytes(b"")
    else:
        with zipfile.ZipFile(npz, "w") as z:
            z.writestr("other.npy", b"")
    capsys.readouterr()
    assert _export(src, tmp_path / "o") == 0
    assert "1 computed, 1 already done" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in good} == good


def test_a_changed_image_is_recomputed(built, tmp_path, capsys):
    """8: a new picture at the same path gets new maps (size and mtime recorded in the manifest)."""
    src = tmp_path / "src"
    (x,) = _images(src, ("x.png",))
    assert _export(src, tmp_path / "o") == 0
    rec = read_manifest(tmp_path / "o")[0]
    st = x.stat()
    assert rec["stat"] == [st.st_size, st.st_mtime_ns]
    old = output_paths(tmp_path / "o", "x")[0].read_bytes()
    Image.fromarray(np.full((40, 52, 3), 200, np.uint8)).save(x)
    os.utime(x, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    capsys.readouterr()
    assert _export(src, tmp_path / "o") == 0
    assert "1 computed, 0 already done" in capsys.readouterr().out
    assert output_paths(tmp_path / "o", "x")[0].read_bytes() != old


# --------------------------------------------------------------------------- state (6, 11)


def test_random_weights_are_the_same_in_every_build_and_leave_the_rng(tmp_path):
    """6: --weights none is seeded (camkit.adapters.INIT_SEED) from a forked RNG."""
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, _ = camkit.adapters.build("tv:resnet18", "none")
    b, _ = camkit.adapters.build("tv:resnet18", "none")
    assert torch.equal(torch.get_rng_state(), state)
    for (k, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(u, v), k
    from camkit.adapters.build import INIT_SEED

    torch.manual_seed(INIT_SEED)
    ref = torchvision.models.resnet18()
    assert torch.equal(ref.conv1.weight, a.conv1.weight)


@pytest.mark.parametrize("workers", [0, 1])
def test_export_leaves_the_global_rng(small, tmp_path, workers):
    """11: the DataLoader draws its base seed from its own generator."""
    _images(tmp_path / "src", ("x.png", "y.png"))
    torch.manual_seed(7)
    state = torch.get_rng_state()
    run(tmp_path / "src", tmp_path / "o", ExplainSpec(ModelSpec(small[0], transform=TF), MethodSpec("gradcam")),
        workers=workers, progress=False)
    assert torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------------------- targets and maps (12, 22, 27, 29)


def test_non_finite_target_values_name_the_images(small):
    """12: a target function returning NaN gave all-NaN maps and no error."""
    model = small[0]
    x = torch.randn(3, 3, 40, 40)
    with pytest.raises(InputError, match=r"the target values are NaN or Inf for image\(s\) \[1\]"):
        camkit.GradCAM(model, "layer4")(x, targets=lambda s: s[:, 0] * torch.tensor([1.0, float("nan"), 1.0]))


def test_empty_target_lists_say_so():
    """22: targets=[] and SegmentationRegion([]) named a dtype, not the empty list."""
    model = torchvision.models.resnet18(num_classes=3).eval()
    with pytest.raises(InputError, match="the list of class indices is empty"):
        camkit.GradCAM(model, "layer4")(torch.randn(1, 3, 32, 32), targets=[])
    with pytest.raises(InputError, match="the list of class indices is empty"):
        camkit.targets.SegmentationRegion([])


def test_a_channels_last_layer_is_never_read_as_channels_first():
    """27: torchvision swin_t's norm outputs (B, 7, 7, 768); without reshape it was read as 7 channels."""
    torch.manual_seed(0)
    model = torchvision.models.swin_t(num_classes=4).eval()
    x = torch.randn(1, 3, 224, 224)
    with pytest.raises(InputError, match=r"channels last \(B, h, w, C\), with C = 768.*reshape="):
        camkit.GradCAM(model, layers=["norm"])(x)
    preset = resolve(model)
    res = camkit.GradCAM(model, **preset.method_kwargs("gradcam"))(x)
    assert res.layer_maps["norm"].shape == (1, 1, 7, 7)
    # the preset's map is the hand Grad-CAM of norm's output read as (B, C, h, w)
    acts = {}
    h = model.norm.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    y = model(x)
    h.remove()
    a = acts["a"]
    (g,) = torch.autograd.grad(y[0, int(res.targets[0, 0])], a)
    A, G = a.permute(0, 3, 1, 2), g.permute(0, 3, 1, 2)
    ref = (G.mean((2, 3), keepdim=True) * A).sum(1).clamp(min=0)
    torch.testing.assert_close(res.layer_maps["norm"][:, 0], ref.detach(), rtol=1e-4, atol=1e-6)


def test_zero_gradients_everywhere_warn():
    """29: a torchvision ViT built with weights=None has a zero head: blank maps, now with a word
    (torchvision's VisionTransformer class, small: vit_b_16's head is initialized the same way)."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=3).eval()
    assert not model.heads.head.weight.any()
    preset = resolve(model)
    x = torch.randn(1, 3, 64, 64)
    with pytest.warns(UserWarning, match="gradients are exactly zero at every hooked layer"):
        camkit.GradCAM(model, **preset.method_kwargs("gradcam"))(x)
    with torch.no_grad():
        model.heads.head.weight.normal_()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        camkit.GradCAM(model, **preset.method_kwargs("gradcam"))(x)


# --------------------------------------------------------------------------- SS-CAM (23)


def test_sscam_noise_does_not_depend_on_the_chunking():
    """23: noise drawn per chunk made batch_size=3 and 64 differ by up to 0.0055."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).eval()
    x = torch.randn(2, 3, 12, 12)
    a = camkit.SSCAM(model, "3", num_samples=3, std=0.5, batch_size=2, normalize=None)(x, targets=[0, 1])
    b = camkit.SSCAM(model, "3", num_samples=3, std=0.5, batch_size=64, normalize=None)(x, targets=[0, 1])
    torch.testing.assert_close(a.layer_maps["3"], b.layer_maps["3"], rtol=0, atol=0)
    # the definition, by hand: channel c of image i gets its own generator, seeded as documented
    with torch.no_grad():
        A = model[:4](x)
        out = torch.zeros(2, 12, 12)
        for i, cls in enumerate((0, 1)):
            lo = A[i].flatten(1).amin(1)[:, None, None]
            hi = A[i].flatten(1).amax(1)[:, None, None]
            masks = torch.where(hi > lo, (A[i] - lo) / (hi - lo).clamp(min=1e-30), torch.zeros_like(A[i]))
            masks = nn.functional.interpolate(masks[:, None], size=(12, 12), mode="bilinear")[:, 0]
            up_lo, up_hi = masks.flatten(1).amin(1)[:, None, None], masks.flatten(1).amax(1)[:, None, None]
            masks = torch.where(up_hi > up_lo, (masks - up_lo) / (up_hi - up_lo).clamp(min=1e-30), 0 * masks)
            s = []
            for c in range(5):
                g = torch.Generator().manual_seed((0 * 1_000_003 + i) * 65_537 + c)
                noisy = [masks[c] + 0.5 * torch.randn((12, 12), generator=g) for _ in range(3)]
                s.append(torch.stack([model(x[i:i + 1] * m)[0, cls] for m in noisy]).mean())
            w = torch.stack(s).softmax(0)
            out[i] = (w[:, None, None] * A[i]).sum(0).clamp(min=0)
    torch.testing.assert_close(a.layer_maps["3"][:, 0], out, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- validation (18, 24, 33)


def test_load_head_checks_its_metadata_before_allocating(tmp_path):
    """18: a file claiming in_channels = num_classes = 10**6 would allocate 4 TB; bool sizes were a TypeError."""
    camkit.save_head(camkit.CAMHead(8, 3), tmp_path / "h.pt")
    blob = torch.load(tmp_path / "h.pt")
    blob["meta"].update(in_channels=10**6, num_classes=10**6)
    torch.save(blob, tmp_path / "big.pt")
    with pytest.raises(InputError, match=r"do not fit a CAMHead\(1000000, 1000000\), as its metadata say"):
        camkit.load_head(tmp_path / "big.pt")
    blob["meta"].update(in_channels=True, num_classes=3)
    torch.save(blob, tmp_path / "bool.pt")
    with pytest.raises(InputError, match="in_channels is True, not a positive int"):
        camkit.load_head(tmp_path / "bool.pt")


def test_one_rule_for_class_indices_and_types(small):
    """24: methods and metrics read class indices alike; wrong types are InputTypeErrors."""
    from camkit import metrics

    model = small[0]
    x = torch.rand(2, 3, 40, 40)
    maps = torch.rand(2, 40, 40)
    for bad in ([False, 0], torch.tensor([True, False])):
        with pytest.raises(InputTypeError, match="class indices must be integers"):
            metrics.average_drop_increase(model, x, maps, bad)
        with pytest.raises(InputTypeError, match="class indices must be integers"):
            camkit.GradCAM(model, "layer4")(x, targets=bad)
    one = metrics.average_drop_increase(model, x, maps, 1, reduce=False)  # one int: every image, as in the methods
    both = metrics.average_drop_increase(model, x, maps, [1, 1], reduce=False)
    torch.testing.assert_close(one["drop"], both["drop"])
    with pytest.raises(InputTypeError, match="steps must be a positive int"):
        metrics.deletion_insertion(model, x, maps, [0, 1], steps=1.5)
    with pytest.raises(InputTypeError, match="batch_size must be a positive int"):
        metrics.average_drop_increase(model, x, maps, [0, 1], batch_size=1.5)
    with pytest.raises(InputTypeError, match="batch_size must be a positive int"):
        camkit.ScoreCAM(model, "layer4", batch_size=1.5)
    with pytest.raises(InputTypeError, match="targets must be class indices"):
        camkit.GradCAM(model, "layer4")(x, targets="0")
    with pytest.raises(InputTypeError, match="reshape must be a function"):
        camkit.GradCAM(model, "layer4", reshape=1)
    with pytest.raises(InputTypeError, match="fusion takes a list of maps"):
        camkit.fusion.fuse_max(torch.rand(2, 1, 4, 4))


def test_overlay_refuses_what_it_would_draw_wrong():
    """24, 33: an unknown colormap, a string alpha, a normalized input tensor."""
    from camkit import overlay as ov

    photo = Image.new("RGB", (8, 8))
    cam = torch.rand(8, 8)
    with pytest.raises(InputError, match="unknown colormap 'nosuch'"):
        ov.overlay(photo, cam, cmap="nosuch")
    with pytest.raises(InputTypeError, match="alpha must be a number"):
        ov.overlay(photo, cam, alpha="0.5")
    x = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(torch.rand(3, 8, 8))
    with pytest.raises(InputError, match="looks like a normalized network input"):
        ov.overlay(x, cam)
    ov.overlay(ov.denormalize(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), cam)  # the way out works
    import matplotlib

    assert ov.overlay(photo, cam, cmap=matplotlib.colormaps["viridis"]).size == (8, 8)


# --------------------------------------------------------------------------- the command line (14, 17, 28, 30)


@pytest.mark.parametrize("extra,expect", [
    (["--threads", "-1"], "argument --threads: must be >= 0"),
    (["--device", "meta"], "--device meta: camkit export runs on cpu, cuda or mps devices, not meta"),
    (["--device", "mps"], "--device mps: no Apple MPS device is available here"),
    (["--bg-threshold", "nan"], "argument --bg-threshold"),
])
def test_export_option_mistakes_are_one_line(built, tmp_path, capsys, extra, expect):
    """14: these were tracebacks."""
    _images(tmp_path / "src", ("x.png",))
    assert _export(tmp_path / "src", tmp_path / "o", *extra) == 2
    assert expect in _one_line(capsys.readouterr().err)


def test_export_out_at_a_file_is_one_line(built, tmp_path, capsys):
    _images(tmp_path / "src", ("x.png",))
    (tmp_path / "file").write_text("x")
    assert _export(tmp_path / "src", tmp_path / "file") == 2
    assert "exists and is not a folder" in _one_line(capsys.readouterr().err)


def test_workers_are_capped_with_a_note(built, tmp_path, capsys):
    """17: --workers 1000 for one image asked for 1000 processes."""
    _images(tmp_path / "src", ("x.png",))
    rc = cli.main(["export", str(tmp_path / "src"), "--out", str(tmp_path / "o"), "--workers", "1000",
                   "--threads", "1", "--no-progress"])
    assert rc == 0
    assert "camkit: note: --workers 1000 capped at 1" in capsys.readouterr().err


def test_layers_of_a_swin_and_of_a_model_without_preset(capsys):
    """28: `camkit layers --model tv:swin_t` failed, advising `camkit layers`."""
    assert cli.main(["layers", "--model", "tv:swin_t", "--weights", "none", "--defaults-only"]) == 0
    out = capsys.readouterr().out
    assert "torchvision-swin" in out and "norm" in out and "* layercam" in out
    assert cli.main(["layers", "--model", "tv:mnasnet0_5", "--weights", "none"]) == 0
    out, err = capsys.readouterr()
    # MNASNet has no preset: the automatic layer (the last spatial layer before global pooling), said in a note
    assert "(auto)" in out and "camkit layers" not in err
    assert "camkit: note: camkit has no preset for torchvision.models.mnasnet.MNASNet: using layer 'layers'" in err


def test_explain_goes_on_past_an_unreadable_image(built, tmp_path, capsys):
    """30: a truncated JPEG in a folder aborted the run and wrote nothing for the good images."""
    src = tmp_path / "src"
    _images(src, ("a.png", "b.png"))
    good = src / "a.png"
    data = (src / "b.png").read_bytes()
    (src / "c.jpg").write_bytes(b"\xff\xd8\xff\xe0" + data[:20])
    Image.open(good).save(src / "d.jpg")
    (src / "d.jpg").write_bytes((src / "d.jpg").read_bytes()[:200])  # a header, then nothing
    rc = cli.main(["explain", str(src), "--method", "gradcam", "--out", str(tmp_path / "o"), "--no-figures"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert (tmp_path / "o" / "a_gradcam.png").is_file() and (tmp_path / "o" / "b_gradcam.png").is_file()
    assert "camkit: 2 of 4 images could not be read; the others were explained" in err
    assert err.count("camkit: error: cannot read image") == 2 and "Traceback" not in err


# --------------------------------------------------------------------------- evaluate-masks (9, 10, 15, 16, 32)


def _gt(root: Path, rel: str, value: int, size=(40, 52), mode="L") -> None:
    p = root / f"{rel}.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    a = np.full(size, value, np.uint16 if mode == "I;16" else np.uint8)
    Image.fromarray(a).save(p)


@pytest.fixture
def exported(built, tmp_path):
    src = tmp_path / "src"
    imgs = _images(src, ("x.png", "y.png", "z.png"))
    _corrupt(imgs[2])
    assert _export(src, tmp_path / "o", "--bg-threshold", "0") == 1
    gt = tmp_path / "gt"
    for rel in ("x", "y", "z"):
        _gt(gt, rel, 2)
    return tmp_path / "o", gt


def test_masks_hold_one_plus_the_class_and_evaluate_reads_them(exported):
    """32: masks held 1 + the position in keys; now 0 background, 1 + class id (VOC's convention)."""
    out, gt = exported
    for rec in read_manifest(out):
        if rec["status"] == "ok":
            with Image.open(output_paths(out, rec["rel"])[1]) as im:
                assert im.mode == "P"
                assert set(np.unique(np.asarray(im))) == {1 + rec["keys"][0]}  # threshold 0: all foreground
    from camkit.export import evaluate

    res = evaluate(out, gt)
    assert res["images"] == 2 and res["failed"] == 1 and res["num_classes"] == len(NAMES) + 1


def test_masks_of_many_classes_are_16_bit():
    from camkit.export.files import mask_image

    assert mask_image(np.array([[0, 254]]), 254).mode == "P"
    im = mask_image(np.array([[0, 300]]), 400)
    assert im.mode in ("I;16", "I") and np.asarray(im).max() == 300


def test_evaluate_reports_failed_images_and_refuses_bad_thresholds(exported, capsys):
    """9, 10: the failed image was dropped silently; nan, 2 and -1 were accepted."""
    out, gt = exported
    assert cli.main(["evaluate-masks", str(out), "--gt", str(gt)]) == 0
    assert "2 images scored (0 exported without ground truth; 1 failed in the export, not scored)" in \
        capsys.readouterr().out
    for bad in ("nan", "2", "-1"):
        assert cli.main(["evaluate-masks", str(out), "--gt", str(gt), "--threshold", bad]) == 2
        assert "argument --threshold" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("case,expect", [
    ("empty mask", "cannot read"), ("truncated npz", "cannot read"), ("missing mask", "is missing"),
    ("torn manifest", "is not a manifest record"), ("json folder", "does not exist"),
    ("sweep nan", "must be finite"), ("sweep inf", "must be finite"), ("sweep step nan", "must be finite"),
    ("sweep tiny step", "at most 1000"), ("void 65535", "label 65535, outside 0..5"),
])
def test_evaluate_on_damaged_outputs_is_one_line(exported, capsys, case, expect):
    """15, 16: damaged outputs, a torn manifest, an unwritable --json, unbounded sweeps, 16-bit void."""
    out, gt = exported
    npz, png = output_paths(out, "x")
    argv = ["evaluate-masks", str(out), "--gt", str(gt)]
    if case == "empty mask":
        png.write_bytes(b"")
    elif case == "truncated npz":
        npz.write_bytes(npz.read_bytes()[:100])
        argv += ["--sweep", "0.1:0.5:0.1"]
    elif case == "missing mask":
        png.unlink()
    elif case == "torn manifest":
        (out / "manifest.jsonl").write_text((out / "manifest.jsonl").read_text() + '{"rel": "w", "sta')
    elif case == "json folder":
        argv += ["--json", str(out / "no" / "such" / "r.json")]
    elif case.startswith("sweep"):
        argv += ["--sweep", {"sweep nan": "nan:1:0.1", "sweep inf": "0:inf:0.1", "sweep step nan": "0:1:nan",
                             "sweep tiny step": "0.1:0.2:1e-7"}[case]]
    else:
        _gt(gt, "x", 65535, mode="I;16")
    assert cli.main(argv) == 2
    out_text, err = capsys.readouterr()
    assert expect in _one_line(err)
    if case == "json folder":
        assert out_text == ""  # refused before anything was printed
    if case == "void 65535":
        assert "pass --ignore 65535" in err


# --------------------------------------------------------------------------- concurrency (13, 20, 31)


def test_a_second_export_into_the_same_folder_is_refused(built, tmp_path, capsys):
    """20: the second export's end-of-run cleanup deleted the first one's in-flight files."""
    from camkit.export.lock import folder_lock

    _images(tmp_path / "src", ("x.png",))
    (tmp_path / "o").mkdir()
    with folder_lock(tmp_path / "o", True):  # an export in flight
        assert _export(tmp_path / "src", tmp_path / "o") == 2
        assert "another camkit export is writing to" in _one_line(capsys.readouterr().err)
    assert _export(tmp_path / "src", tmp_path / "o") == 0


def _subprocess_env():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CAMKIT_DEBUG")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from camkit.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_full_disk_stops_the_run_in_one_line_and_resumes(tmp_path, capsys):
    """13: the writer thread died and the main thread blocked forever on a full queue."""
    _images(tmp_path / "src", [f"im{i}.png" for i in range(3)], size=(200, 200))  # npz: 80 kB of maps
    argv = ["export", str(tmp_path / "src"), "--out", str(tmp_path / "o"), "--model", "tv:resnet18", "--weights",
            "none", "--method", "gradcam", "--threads", "1", "--workers", "0", "--no-progress", "--batch-size", "2"]
    r = subprocess.run([sys.executable, "-c", _LIMITED, "60000", *argv], capture_output=True, text=True,
                       timeout=300, env=_subprocess_env())
    assert r.returncode == 2, r.stderr
    line = _one_line(r.stderr)
    assert "file too large writing" in line and "the same command resumes it" in line
    assert cli.main(argv) == 0  # the same command, without the limit (here: the same seeded weights)
    assert "3 ok" in capsys.readouterr().out


def test_ctrl_c_stops_the_workers_quietly(tmp_path):
    """31: `camkit: interrupted` came tangled with a multiprocessing traceback from the workers."""
    _images(tmp_path / "src", [f"im{i:02d}.png" for i in range(40)], size=(200, 200))
    argv = [sys.executable, "-m", "camkit", "export", str(tmp_path / "src"), "--out", str(tmp_path / "o"),
            "--model", "tv:resnet18", "--weights", "none", "--method", "gradcam", "--threads", "1", "--workers", "1",
            "--no-progress", "--batch-size", "2"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_subprocess_env(),
                         start_new_session=True)
    parts = tmp_path / "o" / "parts"
    deadline = time.time() + 240
    while time.time() < deadline and not (parts.is_dir() and any(f.stat().st_size for f in parts.iterdir())):
        time.sleep(0.2)  # wait until images are being written: the workers are running
    os.killpg(p.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole process group, workers included
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "camkit: interrupted", err


# --------------------------------------------------------------------------- the peers' fusion rules (25)


def test_the_peers_fusion_rules_reproduce_them():
    """25: fused LayerCAM differs from both peers by definition; fusion="mean" is pytorch-grad-cam's
    rule and fusion="tanh_max" torchcam's, each equal to the peer's own output."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    tcm = pytest.importorskip("torchcam.methods")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    layers = ["layer2", "layer3", "layer4"]
    c = [1, 3]
    mean = camkit.LayerCAM(model, layers, fusion="mean")(x, targets=c).maps[:, 0]
    with pgc.LayerCAM(model, [getattr(model, n) for n in layers]) as cam:
        theirs = torch.as_tensor(cam(x, [ClassifierOutputTarget(k) for k in c]))
    torch.testing.assert_close(mean, theirs, rtol=0, atol=2e-5)  # pytorch-grad-cam's 1e-7 eps
    tanh_max = camkit.LayerCAM(model, layers, fusion="tanh_max")(x, targets=c)
    for i, k in enumerate(c):
        with tcm.LayerCAM(model, layers, input_shape=(3, 64, 64)) as ex:
            fused = tcm.LayerCAM.fuse_cams(ex(class_idx=k, scores=model(x[i:i + 1])))
        torch.testing.assert_close(tanh_max.maps_at(tuple(fused.shape[-2:]))[i, 0], fused[0], rtol=0, atol=1e-5)
    plain = camkit.LayerCAM(model, layers)(x, targets=c).maps[:, 0]
    assert (plain - theirs).abs().max() > 0.05  # the paper's max is neither peer's rule
    with pytest.raises(InputError, match="fusion='mean' takes no weights"):
        camkit.LayerCAM(model, layers, fusion="mean", weights=[0.4, 0.4, 0.2])
