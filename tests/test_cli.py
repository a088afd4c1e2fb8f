"""The `camkit` command on temporary files: files written, aligned maps, one-line errors.

Most runs use a small random-weight ResNet-18 whose preset transform resizes
to 72 and center-crops 64 (``small`` fixture), so that the command is
exercised end to end in a fraction of the time of a 224 x 224 model.
"""
from __future__ import annotations

import dataclasses
import struct
import subprocess
import sys
import urllib.error
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from small_models import narrow_fcn_resnet50, narrow_resnet18

import camkit
from camkit import cli
from camkit import overlay as ov
from camkit.app import sample_images
from camkit.cli import outputs as cli_outputs
from camkit.geometry import to_original
from camkit.methods import cli_names

NAMES = ("daisy", "football helmet", "tulip", "pansy", "Lily of the valley")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for k, (h, w) in enumerate([(90, 120), (120, 80), (100, 100)]):
        p = d / f"img{k}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _small(model):
    from torchvision import transforms as T

    from camkit.adapters import resolve

    tf = T.Compose([T.Resize(72), T.CenterCrop(64), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406),
                                                                              (0.229, 0.224, 0.225))])
    preset = dataclasses.replace(resolve(model), transform=tf, input_size=(64, 64), categories=NAMES)
    return model, preset


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return _small(torchvision.models.resnet18(num_classes=len(NAMES)).eval())


@pytest.fixture(scope="module")
def narrow_small_model():
    """The same, on ResNet18 8 times narrower (tests/small_models.py; the same torchvision class, hence the
    same preset): for the methods that run the model once per channel of the layer (512 on ResNet18's layer4)."""
    torch.manual_seed(0)
    return _small(narrow_resnet18(num_classes=len(NAMES)).eval())


@pytest.fixture
def small(monkeypatch, small_model):
    """`camkit explain` builds the small model whatever --model says."""
    monkeypatch.setattr(camkit.adapters, "build", lambda name, weights: small_model)
    return small_model


#: Methods with one forward per channel of the layer: test_every_method_maps_equal_the_librarys runs them
#: (in the command and again in the library) on narrow_small_model.
PER_CHANNEL = ("scorecam", "ablationcam")


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the command builds a model (for errors that must come first)."""
    def build(name, weights):
        raise AssertionError("the model was built before the input was checked")
    monkeypatch.setattr(camkit.adapters, "build", build)


def _run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _png(path: Path, size=None):
    assert path.is_file(), path
    assert path.stat().st_size > 100, path
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        if size is not None:
            assert im.size == size, (path, im.size)
        return im.size


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("camkit: error: ") and "Traceback" not in err
    return lines[0]


def _size(path) -> tuple:
    with Image.open(path) as im:
        return im.size


def _wrote(stdout: str) -> int:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("wrote "))
    return int(line.split()[1])


# --------------------------------------------------------------------------- files written

def test_explain_writes_every_promised_file(images, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = _run(capsys, "explain", *images, "--model", "resnet18", "--weights", "none",
                           "--method", "gradcam", "layercam", "--out", str(out), "--threads", "1", "--batch-size", "2")
    assert rc == 0, err
    for k in range(3):
        for m in ("gradcam", "layercam"):
            _png(out / f"img{k}_{m}.png", _size(images[k]))  # on the photo itself, at its size
        w, h = _png(out / f"strip_img{k}.png")
        assert w < 300 and h > 3 * 224  # one column: input, gradcam, layercam
    for m in ("gradcam", "layercam"):
        gw, gh = _png(out / f"grid_{m}.png")
        assert gw > gh  # 3 tiles side by side with titles
        _png(out / f"compact_{m}.png", (3 * 224 + 4 * 2, 224 + 2 * 2))  # 3 tiles fit in one row of 4
    # one line per image with the top-3 predictions (ImageNet names: 1000 classes)
    lines = [ln for ln in stdout.splitlines() if ln.startswith(images[0])]
    assert len(lines) == 1 and lines[0].count("%") == 3
    assert _wrote(stdout) == 14 == sum(1 for p in out.iterdir())  # 6 overlays, 3 strips, 2 grids, 2 compact, explain.jsonl


def test_demo_runs_offline_on_the_bundled_photos(tmp_path, capsys):
    out = tmp_path / "demo"
    rc, stdout, err = _run(capsys, "explain", "--demo", "--out", str(out), "--method", "gradcam")
    assert rc == 0, err
    names = [p.stem for p in sample_images()]
    assert names == ["chelsea", "coffee", "rocket", "astronaut"]
    for p in sample_images():
        _png(out / f"{p.stem}_gradcam.png", _size(p))
        _png(out / f"strip_{p.stem}.png")
    _png(out / "grid_gradcam.png")
    chelsea = next(ln for ln in stdout.splitlines() if "chelsea.jpg" in ln)
    assert any(c in chelsea for c in ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"))
    coffee = next(ln for ln in stdout.splitlines() if "coffee.jpg" in ln)
    assert "espresso" in coffee.split(",")[0]


def test_samples_have_a_licence_note():
    root = sample_images()[0].parent
    text = (root / "README.md").read_text()
    for p in sample_images():
        assert p.name in text
        assert p.stat().st_size < 100_000
    assert "CC0" in text and "public domain" in text


def test_saved_maps_are_the_library_maps_on_the_original_photo(small, images, tmp_path, capsys):
    """--save-maps: float32 .npy at the photo's size = to_original(the method's map) (issue 11); also raw maps."""
    model, preset = small
    for norm in ("minmax", "none"):
        out = tmp_path / norm
        rc, _, err = _run(capsys, "explain", images[0], images[1], "--method", "gradcam", "--save-maps",
                          "--no-figures", "--normalize", norm, "--out", str(out))
        assert rc == 0, err
        assert sorted(p.name for p in out.iterdir()) == ["explain.jsonl", "img0_gradcam.npy", "img0_gradcam.png",
                                                          "img1_gradcam.npy", "img1_gradcam.png"]
        for p in images[:2]:
            photo = Image.open(p).convert("RGB")
            x = preset.transform(photo)[None]
            kw = preset.method_kwargs("gradcam")
            res = camkit.GradCAM(model, normalize=None if norm == "none" else "minmax", **kw)(x)
            ref = to_original(res.maps[0, 0], photo, preset.transform).numpy()
            got = np.load(out / f"{Path(p).stem}_gradcam.npy")
            assert got.dtype == np.float32 and got.shape == (photo.height, photo.width)
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
            if norm == "none":
                assert got.max() > 0 and not np.allclose(got.max(), 1.0)  # raw values, not rescaled to [0, 1]


# LeGrad explains vision transformers only: tests/test_methods_legrad.py runs its command on a ViT
@pytest.mark.parametrize("method", [m for m in cli_names() if m not in ("recam", "legrad")])
def test_every_method_maps_equal_the_librarys(method, small_model, narrow_small_model, monkeypatch, images, tmp_path,
                                              capsys):
    """Each --method name is the registry's method with the preset's default layers (ReCAM needs a
    head: test_recam_with_a_saved_head); the saved map is that method's map on the photo."""
    model, preset = narrow_small_model if method in PER_CHANNEL else small_model
    monkeypatch.setattr(camkit.adapters, "build", lambda name, weights: (model, preset))
    rc, _, err = _run(capsys, "explain", images[0], "--method", method, "--save-maps", "--no-figures",
                      "--out", str(tmp_path))
    assert rc == 0, err
    photo = Image.open(images[0]).convert("RGB")
    x = preset.transform(photo)[None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FullGrad: layers= ignored
        res = camkit.METHODS[method](model, normalize="minmax", **preset.method_kwargs(method))(x)
    ref = to_original(res.maps[0, 0], photo, preset.transform).numpy()
    np.testing.assert_allclose(np.load(tmp_path / f"img0_{method}.npy"), ref, rtol=1e-5, atol=1e-5)


def test_folder_input_recursive_sorted_images_only_mirrored(small, tmp_path, capsys):
    src = tmp_path / "photos"
    rng = np.random.default_rng(3)
    for rel in ["b/z.png", "a/x.jpg", "a/deeper/y.png", "top.png", ".hidden/h.png", "a/.dot.png"]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(src / rel)
    (src / "notes.txt").write_text("not an image")
    out = src / "cams"  # inside the folder: its own outputs are not explained on a rerun
    for _ in range(2):
        rc, stdout, err = _run(capsys, "explain", str(src), "--method", "cam", "--out", str(out), "--no-figures")
        assert rc == 0, err
    order = [ln.split(":")[0] for ln in stdout.splitlines() if ln.startswith(str(src))]
    assert order == [str(src / r) for r in ["a/deeper/y.png", "a/x.jpg", "b/z.png", "top.png"]]
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert got == ["a/deeper/y_cam.png", "a/x_cam.png", "b/z_cam.png", "explain.jsonl", "top_cam.png"]
    assert _wrote(stdout) == 5
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    rc, _, err = _run(capsys, "explain", str(empty), "--out", str(tmp_path / "o"))
    assert rc == 2 and f"no image files in folder {empty}" in _error_line(err)


def test_topk_names_captions_grids_and_strips_per_target(small, images, tmp_path, capsys, monkeypatch):
    grids, strips = [], []
    real_grid, real_strip = ov.save_labelled_grid, ov.strip
    monkeypatch.setattr(ov, "save_labelled_grid", lambda p, t, n, **kw: (grids.append((t, n, kw)),
                                                                          real_grid(p, t, n, **kw)))
    monkeypatch.setattr(ov, "strip", lambda t, labels=None, **kw: (strips.append(labels), real_strip(t, labels, **kw))[1])
    out = tmp_path / "topk"
    rc, stdout, err = _run(capsys, "explain", images[0], images[2], "--method", "cam", "--target", "top2",
                           "--out", str(out), "--colorbar")
    assert rc == 0, err
    model, preset = small
    for p in (images[0], images[2]):
        x = preset.transform(Image.open(p).convert("RGB"))[None]
        top = model(x).topk(2, dim=1).indices[0].tolist()
        stem = Path(p).stem
        for k, c in enumerate(top):
            slug = NAMES[c].lower().replace(" ", "_")
            w, h = _size(images[0] if stem == "img0" else images[2])
            bw, bh = _png(out / f"{stem}_cam_{k + 1}-{slug}.png")
            assert bw == w and bh > h  # the colour bar below the aligned overlay
        assert not (out / f"{stem}_cam.png").exists()
    (tiles, titles, kw), = grids
    assert len(tiles) == 4 and kw["cols"] == 2  # one row per image, one column per target
    assert kw["colorbar"] == ("jet", 0.0, 1.0, "map value")
    assert titles[0].splitlines()[-1].startswith("map 1: ") and titles[1].splitlines()[-1].startswith("map 2: ")
    assert all(any(n[:20] in t for n in NAMES) for t in titles)
    assert len(strips) == 2 and strips[0][0] == "input" and len(strips[0]) == 3
    assert all(lab.startswith("cam: ") and lab[5:] in NAMES for lab in strips[0][1:])
    _png(out / "compact_cam.png", (2 * 64 + 3 * 2, 2 * 64 + 3 * 2))  # 2 images x 2 targets
    # a class target: its name in the file name
    rc, _, err = _run(capsys, "explain", images[0], "--method", "cam", "--target", "football helmet",
                      "--out", str(out / "one"), "--no-figures")
    assert rc == 0, err
    _png(out / "one" / "img0_cam_football_helmet.png", _size(images[0]))


def test_progress_bar_does_not_break_the_per_image_lines(small, images, tmp_path, monkeypatch):
    """As on a terminal, where stdout and stderr are one screen: each image's line starts a line of its own."""
    import io

    import tqdm

    class Shown(tqdm.tqdm):  # a bar even though the test's stderr is not a terminal
        def __init__(self, *a, **k):
            k["disable"] = False
            super().__init__(*a, **k)

    screen = io.StringIO()
    monkeypatch.setattr(tqdm, "tqdm", Shown)
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)
    rc = cli.main(["explain", *images, "--method", "cam", "--no-figures", "--out", str(tmp_path), "--batch-size", "1"])
    text = screen.getvalue()
    assert rc == 0, text
    assert "3/3" in text and "image" in text  # the bar was drawn
    shown = [seg.split("\r")[-1] for seg in text.split("\n")]  # what is left on each line of the screen
    for p in images:
        assert sum(ln.startswith(f"{p}: ") and ln.count("%") == 3 for ln in shown) == 1, text


# --------------------------------------------------------------------------- issue 10: items 5, 6, 8, 9, 10

def test_high_depth_images_are_scaled_by_their_value_range(small, tmp_path, capsys):
    """Item 5: a 16-bit PNG gradient and a float TIFF are not clipped to white by convert('RGB')."""
    g16 = tmp_path / "g16.png"
    Image.fromarray((np.arange(64 * 80).reshape(64, 80) * 9 + 1000).astype(np.uint16)).save(g16)
    ftif = tmp_path / "f.tif"
    Image.fromarray(np.linspace(-2.0, 3.0, 64 * 80, dtype=np.float32).reshape(64, 80)).save(ftif)
    with Image.open(g16) as im:
        assert im.mode == "I;16" and (np.asarray(im.convert("RGB")) == 255).mean() > 0.95  # the bug
    notes = []
    for p in (g16, ftif):
        a = np.asarray(camkit.load_image(str(p), notes.append))
        assert a.dtype == np.uint8 and a.shape == (64, 80, 3)
        assert a.min() == 0 and a.max() == 255
        row_major = a[..., 0].reshape(-1).astype(int)
        assert (np.diff(row_major) >= 0).all()  # the gradient survives, monotonic
        assert abs(a.mean() - 127.5) < 2
    assert "16-bit image (values 1000 to 47071)" in notes[0] and "floating-point image (values -2 to 3)" in notes[1]
    rc, stdout, err = _run(capsys, "explain", str(g16), str(ftif), "--method", "cam", "--no-figures",
                           "--out", str(tmp_path / "o"))
    assert rc == 0, err
    assert "scaled to 8 bits" in err and _wrote(stdout) == 3  # 2 overlays, explain.jsonl
    nan = tmp_path / "nan.tif"
    Image.fromarray(np.full((20, 20), np.nan, dtype=np.float32)).save(nan)
    rc, _, err = _run(capsys, "explain", str(nan), "--out", str(tmp_path / "o"))
    assert rc == 2 and "holds NaN or infinite values" in _error_line(err)


def test_output_names_are_unique_and_the_count_true(small, tmp_path, capsys):
    """Item 6: same stems in two folders, a stem that looks like a de-duplicated one, stems like the figures'."""
    d = tmp_path / "in"
    sizes = {"a/x.png": (30, 40), "b/x.png": (31, 41), "x-2.png": (32, 42), "grid.png": (33, 43),
             "compact.png": (34, 44), "strip_x.png": (35, 45)}
    rng = np.random.default_rng(1)
    paths = []
    for rel, (h, w) in sizes.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / rel)
        paths.append(str(d / rel))
    out = tmp_path / "out"
    out.mkdir()
    precious = out / "grid_cam.png"  # an input that lives where a figure would go
    Image.fromarray(rng.integers(0, 256, (36, 46, 3), dtype=np.uint8)).save(precious)
    before = precious.read_bytes()
    rc, stdout, err = _run(capsys, "explain", *paths, str(precious), "--method", "cam", "--out", str(out))
    assert rc == 0, err
    files = sorted(p for p in out.iterdir() if p.is_file() and p != precious)
    assert _wrote(stdout) == len(files) == 7 + 7 + 1 + 1 + 1  # 7 overlays, 7 strips, grid, compact, explain.jsonl
    assert precious.read_bytes() == before
    assert "(grid_cam-3.png shows them all)" in stdout  # grid_cam.png is an input, grid_cam-2.png grid.png's map
    # every overlay has the size of its own photo: none was overwritten by another
    expect = {"x_cam.png": "a/x.png", "x_cam-2.png": "b/x.png", "x-2_cam.png": "x-2.png", "grid_cam-2.png": "grid.png",
              "compact_cam.png": "compact.png", "strip_x_cam.png": "strip_x.png"}
    for name, rel in expect.items():
        assert _size(out / name) == _size(d / rel), name
    assert _size(out / "grid_cam_cam.png") == (46, 36)
    assert {p.name for p in files} == set(expect) | {
        "grid_cam_cam.png", "grid_cam-3.png", "compact_cam-2.png", "strip_x.png", "strip_x-2.png",
        "strip_x-2-2.png", "strip_grid.png", "strip_compact.png", "strip_strip_x.png", "strip_grid_cam.png",
        "explain.jsonl"}
    o = cli_outputs.Outputs(tmp_path, inputs=[str(tmp_path / "in.png")])
    assert [p.name for p in o.reserve("x", ".png", ".npy")] == ["x.png", "x.npy"]
    assert [p.name for p in o.reserve("X", ".png")] == ["X-2.png"]  # also on case-insensitive file systems
    assert [p.name for p in o.reserve("x", ".npy")] == ["x-2.npy"]
    assert [p.name for p in o.reserve("in", ".png")] == ["in-2.png"]


@pytest.mark.parametrize("case", ["under_a_file", "at_a_file", "uncreatable"])
def test_bad_out_is_refused_before_the_model_is_built(case, no_model, images, tmp_path, capsys):
    """Item 8."""
    f = tmp_path / "file.txt"
    f.write_text("x")
    target, expect = {
        "under_a_file": (f / "sub", "cannot create the output folder"),
        "at_a_file": (f, "exists and is not a folder"),
        "uncreatable": (Path("/proc/camkit-no/such"), "cannot create the output folder"),
    }[case]
    rc, _, err = _run(capsys, "explain", images[0], "--out", str(target))
    assert rc == 2 and expect in _error_line(err)


def _bomb_png(path: Path, w: int = 20000, h: int = 20000) -> None:
    """A PNG whose header says w x h (nothing else is decoded to refuse it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))


@pytest.mark.parametrize("argv,expect", [
    (["--cmap", "nosuch"], "unknown colormap 'nosuch'"),
    (["--cmap", "viridiss"], "did you mean viridis"),
    (["--threads", "-1"], "argument --threads: must be >= 0 (0: torch's default), got -1 (see camkit explain --help)"),
    (["--threads", "two"], "argument --threads: expected an integer"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["--alpha", "1.5"], "argument --alpha: must lie in [0, 1]"),
    (["--normalize", "softmax"], "--normalize: unknown normalizer 'softmax'"),
    (["--method", "nosuchcam"], "unknown method"),
    (["--target", "top0"], "k must be at least 1"),
    (["--target", "-1"], "a class index is >= 0"),
    (["--target", ""], "--target is empty"),
    (["--target-class", "top3"], "--target-class takes one class"),
    (["--target", "3", "--target-class", "4"], "not both"),
    (["BOMB"], "exceeds limit of 178956970 pixels"),
    (["MISSING.jpg"], "no such image file or folder: MISSING.jpg"),
    (["BADFILE"], "cannot read image"),
])
def test_option_values_are_checked_before_the_model(argv, expect, no_model, images, tmp_path, capsys):
    """Item 9 (and bad images): one line, status 2, no model built."""
    bomb = tmp_path / "bomb.png"
    _bomb_png(bomb)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    argv = [{"BOMB": str(bomb), "BADFILE": str(bad)}.get(a, a) for a in argv]
    img = [] if argv[0] in (str(bomb), str(bad), "MISSING.jpg") else [images[0]]
    rc, _, err = _run(capsys, "explain", *img, *argv, "--out", str(tmp_path / "o"))
    assert rc == 2
    assert expect in _error_line(err)


@pytest.mark.parametrize("argv,expect", [
    (["--input-size", "0", "0"], "argument --input-size: must be >= 1"),
    (["--input-size", "-5", "10"], "argument --input-size: must be >= 1"),
    (["--model", "vit_tiny_patch16_224", "--input-size", "64", "64"],
     "vit_tiny_patch16_224 takes only 224x224 inputs"),
    (["--model", "vgg11", "--input-size", "8", "8"], "vgg11 cannot run on this size"),
])
def test_layers_input_size_is_checked(argv, expect, capsys):
    rc, _, err = _run(capsys, "layers", *argv)
    assert rc == 2 and expect in _error_line(err)


def test_only_camkit_user_errors_are_one_line(monkeypatch, capsys):
    """Item 10: an InputError is the user's (one line, 2); any other exception is a bug (traceback, 1)."""
    from camkit.errors import InputError

    def boom(exc):
        def cmd(args):
            raise exc
        return cmd

    for exc in (ValueError("internal shape bug"), TypeError("bad call"), KeyError("k")):
        monkeypatch.setattr(cli.layers, "cmd_layers", boom(exc))
        rc, _, err = _run(capsys, "layers")
        assert rc == 1
        assert "Traceback (most recent call last)" in err and type(exc).__name__ in err
        assert err.strip().splitlines()[-1] == cli.REPORT
    monkeypatch.setattr(cli.layers, "cmd_layers", boom(InputError("your layer is wrong")))
    rc, _, err = _run(capsys, "layers")
    assert rc == 2 and _error_line(err) == "camkit: error: your layer is wrong"


# --------------------------------------------------------------------------- errors with a real model

@pytest.mark.parametrize("argv,expect", [
    (["explain", "TRUNC", "--model", "resnet18", "--weights", "none"], "cannot read image"),
    (["explain", "IMG", "--model", "resnet181", "--weights", "none"], "unknown model 'resnet181'"),
    (["explain", "IMG", "--model", "resnet18", "--weights", "none", "--layers", "layer9"], "unknown layer 'layer9'"),
    (["explain", "IMG", "--model", "mobilenet_v3_small", "--weights", "none", "--method", "cam"],
     "CAM needs global average pooling"),
    (["explain", "IMG", "--model", "resnet18", "--weights", "none", "--method", "recam"], "ReCAMHead"),
    (["explain", "IMG", "--model", "resnet18", "--weights", "none", "--target", "zebraa"], "did you mean 'zebra'"),
    (["explain", "IMG", "--model", "resnet18", "--weights", "none", "--target", "not a class"],
     "neither top1/topK, a class index nor a class name"),
    (["explain", "IMG", "--model", "resnet18", "--weights", "none", "--target", "1000"], "out of range 0..999"),
    (["explain", "IMG", "--model", "resnet18", "--weights", "none", "--fusion", "weighted",
      "--layer-weights", "0.5", "0.5"], "one weight per layer"),
    (["explain", "IMG", "--model", "resnet18", "--weights", "NOFILE.pt"], "weights file not found"),
    (["explain", "IMG", "--model", "resnet18", "--weights", "WRONGKEYS"], "122 of the model's 122 keys missing"),
    (["explain", "IMG", "--model", "resnet18", "--weights", "NANWEIGHTS"], "NaN or Inf"),
    (["layers", "--model", "nosuchnet"], "unknown model"),
])
def test_bad_input_gives_one_line_and_status_2(argv, expect, images, tmp_path, capsys):
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(Path(images[0]).read_bytes()[:200])  # a valid header, then nothing
    wrong, nan = tmp_path / "wrong.pt", tmp_path / "nan.pt"
    torch.save({"foo.weight": torch.zeros(2)}, wrong)
    state = torchvision.models.resnet18().state_dict()
    state["fc.bias"][:] = float("nan")
    torch.save(state, nan)
    subst = {"IMG": images[0], "TRUNC": str(trunc), "WRONGKEYS": str(wrong), "NANWEIGHTS": str(nan)}
    argv = [subst.get(a, a) for a in argv]
    rc, _, err = _run(capsys, *argv, *(["--out", str(tmp_path / "o")] if argv[0] == "explain" else []))
    assert rc == 2
    assert expect in _error_line(err)


def test_offline_download_failure_names_the_offline_model(images, tmp_path, capsys, monkeypatch):
    import torchvision.models._api as api

    def no_net(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", no_net)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    rc, _, err = _run(capsys, "explain", images[0], "--model", "vgg16", "--out", str(tmp_path / "o"))
    assert rc == 2
    line = _error_line(err)
    assert "could not download the" in line and "weights of vgg16" in line
    assert "--model efficientnet_lite0" in line and "--weights PATH" in line


def test_layers_lists_shapes_and_marks_defaults(capsys):
    rc, out, err = _run(capsys, "layers", "--model", "resnet18", "--input-size", "64", "64")
    assert rc == 0, err
    lines = out.splitlines()
    assert "input (1, 3, 64, 64)" in lines[0]
    row = {ln.split()[0]: ln for ln in lines[1:]}
    marked = [i.name for i in camkit.methods.registered() if i.cli and i.layers in ("cam", "last", "stages")
              and i.name != "legrad"]  # LeGrad: vision transformers only
    assert row["layer4"].split()[1:] == ["Sequential", "1x512x2x2", "*", *[m + "," for m in marked[:-1]], marked[-1]]
    stages = [i.name for i in camkit.methods.registered() if i.cli and i.layers == "stages" and i.name != "legrad"]
    assert row["layer2"].split()[2:] == ["1x128x8x8", "*", *[m + "," for m in stages[:-1]], stages[-1]]
    assert row["fc"].split()[1:] == ["Linear", "1x1000"]
    assert len(row) == sum(1 for _ in __import__("torchvision").models.resnet18().named_modules()) - 1
    rc, out, _ = _run(capsys, "layers", "--model", "vgg16", "--input-size", "64", "64", "--defaults-only")
    names = [ln.split()[0] for ln in out.splitlines()[1:]]
    assert names == ["features.15", "features.16", "features.22", "features.23", "features.29", "features.30"]


def test_console_entry_point_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "camkit.cli", "explain", str(tmp_path / "nope.png"), "--weights", "none"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip() == f"camkit: error: no such image file or folder: {tmp_path / 'nope.png'}"


def test_recam_with_a_saved_head(images, tmp_path, capsys):
    """--head on a model with a 'features' Sequential of 512 channels (SqueezeNet's, as VGG16's in the
    README: the same code path, a hundredth of the weights to build)."""
    torch.manual_seed(0)
    head = camkit.ReCAMHead(512, 5)
    camkit.save_head(head, tmp_path / "head.pt")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(["daisy", "iris", "tulip", "pansy", "lily"]) + "\n")
    out = tmp_path / "recam"
    rc, stdout, err = _run(capsys, "explain", images[0], "--model", "squeezenet1_0", "--weights", "none",
                           "--head", str(tmp_path / "head.pt"), "--classes", str(classes),
                           "--method", "recam", "cam", "--out", str(out))
    assert rc == 0, err
    _png(out / "img0_recam.png", _size(images[0]))
    _png(out / "img0_cam.png", _size(images[0]))
    line = next(ln for ln in stdout.splitlines() if ln.startswith(images[0]))
    assert sum(name in line for name in ["daisy", "iris", "tulip", "pansy", "lily"]) == 3
    rc, _, err = _run(capsys, "explain", images[0], "--model", "resnet18", "--weights", "none",
                      "--head", str(tmp_path / "head.pt"), "--out", str(out))
    assert rc == 2 and "'features' Sequential" in _error_line(err)
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    rc, _, err = _run(capsys, "explain", images[0], "--model", "squeezenet1_0", "--weights", "none",
                      "--head", str(tmp_path / "head.pt"), "--classes", str(tmp_path / "three.txt"), "--out", str(out))
    assert rc == 2 and "names 3 classes, the model has 5" in _error_line(err)


# --------------------------------------------------------------------------- segmentation

@pytest.fixture(scope="module")
def small_fcn():
    """torchvision's FCN-ResNet50 8 times narrower (tests/small_models.py: the FCN class, hence the
    tv-segmentation preset; 21 classes as `build("tv:fcn_resnet50", "none")` gives, random weights), its
    preset, and a small 64-pixel transform.
    `camkit explain --model tv:fcn_resnet50` on the full model: test_segmentation_example_from_the_issue
    (slow) and test_adapters.py (build, presets, the preset end to end)."""
    from torchvision import transforms as T

    from camkit.adapters import resolve

    torch.manual_seed(0)
    model = narrow_fcn_resnet50(num_classes=21).eval()
    preset = resolve(model)
    tf = T.Compose([T.Resize(64), T.ToTensor(), T.Normalize(preset.mean, preset.std)])
    return model, dataclasses.replace(preset, transform=tf)


def test_segmentation_region_of_a_class(small_fcn, images, tmp_path, capsys, monkeypatch):
    """--target-class on a segmentation model: output='out', SegmentationRegion (the predicted region)."""
    model, preset = small_fcn
    assert preset.task == "segmentation" and preset.output == "out"
    monkeypatch.setattr(camkit.adapters, "build", lambda name, weights: (model, preset))
    photo = Image.open(images[1]).convert("RGB")  # portrait 80 x 120: no crop, an input of 64 x 96
    x = preset.transform(photo)[None]
    with torch.no_grad():
        pred = model(x)["out"].argmax(1)
    c = int(pred.flatten().mode().values)  # a class with pixels
    out = tmp_path / "seg"
    rc, stdout, err = _run(capsys, "explain", images[1], images[0], "--target-class", str(c), "--method", "gradcam",
                           "--save-maps", "--out", str(out))
    assert rc == 0, err
    name = cli_outputs.slug(preset.categories[c]) if preset.categories else f"class_{c}"
    got = np.load(out / f"img1_gradcam_{name}.npy")
    from camkit.targets import SegmentationRegion

    res = camkit.GradCAM(model, **preset.method_kwargs("gradcam"))(x, targets=SegmentationRegion(c))
    ref = to_original(res.maps[0, 0], photo, preset.transform).numpy()
    assert got.shape == (120, 80) and got.max() > 0
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    share = float((pred == c).float().mean())
    assert f"at {100 * share:.1f}% of the pixels" in next(ln for ln in stdout.splitlines() if ln.startswith(images[1]))
    for f in ("grid_gradcam.png", "strip_img1.png", f"img0_gradcam_{name}.png"):
        _png(out / f)
    rc, _, err = _run(capsys, "explain", images[1], "--out", str(out))
    assert rc == 2 and "is a segmentation model: give --target-class C" in _error_line(err)


@pytest.mark.slow  # FCN-ResNet50 at its 520-pixel preset size: about a minute on 2 CPU cores
def test_segmentation_example_from_the_issue(tmp_path, capsys):
    """`camkit explain PHOTO --model tv:fcn_resnet50 --weights none --target-class 3`, verbatim."""
    photo = sample_images()[3]  # astronaut.jpg, 512 x 512
    out = tmp_path / "seg"
    rc, stdout, err = _run(capsys, "explain", str(photo), "--model", "tv:fcn_resnet50", "--weights", "none",
                           "--target-class", "3", "--save-maps", "--out", str(out))
    assert rc == 0, err
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == _wrote(stdout) == 6, files  # with explain.jsonl
    npy = next(out / f for f in files if f.endswith(".npy"))
    assert np.load(npy).shape == (512, 512)
