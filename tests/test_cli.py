"""The `camkit` command on temporary files: files written, one-line errors."""
from __future__ import annotations

import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camkit import cli


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


def _run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _png(path: Path, size=None):
    assert path.is_file(), path
    assert path.stat().st_size > 1000, path
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


def test_explain_writes_every_promised_file(images, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = _run(capsys, "explain", *images, "--model", "resnet18", "--weights", "none",
                           "--method", "gradcam", "layercam", "--out", str(out), "--threads", "2", "--batch-size", "2")
    assert rc == 0, err
    for k in range(3):
        for m in ("gradcam", "layercam"):
            _png(out / f"img{k}_{m}.png", (224, 224))
        w, h = _png(out / f"strip_img{k}.png")
        assert w < 300 and h > 3 * 224  # one column: input, gradcam, layercam
    for m in ("gradcam", "layercam"):
        gw, gh = _png(out / f"grid_{m}.png")
        assert gw > gh  # 3 tiles side by side with titles
        _png(out / f"compact_{m}.png", (3 * 224 + 4 * 2, 224 + 2 * 2))  # 3 tiles fit in one row of 4
    # one line per image with the top-3 predictions (ImageNet names: 1000 classes)
    lines = [ln for ln in stdout.splitlines() if ln.startswith(images[0])]
    assert len(lines) == 1 and lines[0].count("%") == 3
    assert "wrote 13 files" in stdout  # 6 overlays, 3 strips, 2 grids, 2 compact grids


def test_explain_topk_and_class_targets(images, tmp_path, capsys):
    out = tmp_path / "topk"
    rc, _, err = _run(capsys, "explain", images[0], "--model", "resnet18", "--weights", "none",
                      "--method", "cam", "--target", "top2", "--out", str(out))
    assert rc == 0, err
    _png(out / "img0_cam_top1.png", (224, 224))
    _png(out / "img0_cam_top2.png", (224, 224))
    assert not (out / "img0_cam.png").exists()
    cats = [f"c{k}" for k in range(10)]
    assert cli._parse_target("top3", cats) == (None, 3)
    assert cli._parse_target("7", cats) == (7, None)
    assert cli._parse_target("C4", cats) == (4, None)
    for bad, msg in [("top0", "1..10"), ("12", "out of range"), ("zebra", "class name")]:
        with pytest.raises(cli.CLIError, match=msg):
            cli._parse_target(bad, cats)


def test_demo_runs_offline_on_the_bundled_photos(tmp_path, capsys):
    out = tmp_path / "demo"
    rc, stdout, err = _run(capsys, "explain", "--demo", "--out", str(out), "--method", "gradcam", "--threads", "2")
    assert rc == 0, err
    names = [p.stem for p in cli.sample_images()]
    assert names == ["chelsea", "coffee", "rocket", "astronaut"]
    for n in names:
        _png(out / f"{n}_gradcam.png", (224, 224))
        _png(out / f"strip_{n}.png")
    _png(out / "grid_gradcam.png")
    chelsea = next(ln for ln in stdout.splitlines() if "chelsea.jpg" in ln)
    assert any(c in chelsea for c in ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"))
    coffee = next(ln for ln in stdout.splitlines() if "coffee.jpg" in ln)
    assert "espresso" in coffee.split(",")[0]


def test_samples_have_a_licence_note():
    root = cli.sample_images()[0].parent
    text = (root / "README.md").read_text()
    for p in cli.sample_images():
        assert p.name in text
        assert p.stat().st_size < 100_000
    assert "CC0" in text and "public domain" in text


@pytest.mark.parametrize("argv,expect", [
    (["explain", "MISSING.jpg", "--weights", "none"], "no such image file: MISSING.jpg"),
    (["explain", "BADFILE", "--weights", "none"], "cannot read image"),
    (["explain", "TRUNC", "--model", "resnet18", "--weights", "none"], "cannot read image"),
    (["explain", "IMG", "--model", "resnet181", "--weights", "none"], "unknown model 'resnet181'"),
    (["explain", "IMG", "--model", "resnet18", "--weights", "none", "--layers", "layer9"], "unknown layer 'layer9'"),
    (["explain", "IMG", "--model", "vgg16", "--weights", "none", "--method", "cam"], "CAM needs global average pooling"),
    (["explain", "IMG", "--model", "resnet18", "--weights", "none", "--method", "recam"], "ReCAMHead"),
    (["explain", "IMG", "--model", "resnet18", "--weights", "none", "--method", "scorecam"], "unknown method"),
    (["explain", "IMG", "--model", "resnet18", "--weights", "none", "--target", "zebraa"], "did you mean 'zebra'"),
    (["explain", "IMG", "--model", "resnet18", "--weights", "none", "--fusion", "weighted",
      "--layer-weights", "0.5", "0.5"], "one weight per layer"),
    (["explain", "IMG", "--model", "resnet18", "--weights", "NOFILE.pt"], "weights file not found"),
    (["layers", "--model", "nosuchnet"], "unknown model"),
])
def test_bad_input_gives_one_line_and_status_2(argv, expect, images, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(Path(images[0]).read_bytes()[:200])  # a valid header, then nothing
    subst = {"IMG": images[0], "BADFILE": str(bad), "TRUNC": str(trunc)}
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
    assert "could not download the ImageNet weights of vgg16" in line
    assert "--model efficientnet_lite0" in line and "--weights PATH" in line


def test_layers_lists_shapes_and_marks_defaults(capsys):
    rc, out, err = _run(capsys, "layers", "--model", "resnet18", "--input-size", "64", "64")
    assert rc == 0, err
    lines = out.splitlines()
    assert "input (1, 3, 64, 64)" in lines[0]
    row = {ln.split()[0]: ln for ln in lines[1:]}
    assert row["layer4"].split()[1:] == ["Sequential", "1x512x2x2", "*", "cam,", "gradcam,", "gradcampp,", "layercam"]
    assert row["layer2"].split()[2:] == ["1x128x8x8", "*", "layercam"]
    assert row["fc"].split()[1:] == ["Linear", "1x1000"]
    assert len(row) == sum(1 for _ in __import__("torchvision").models.resnet18().named_modules()) - 1
    rc, out, _ = _run(capsys, "layers", "--model", "vgg16", "--input-size", "64", "64", "--defaults-only")
    names = [ln.split()[0] for ln in out.splitlines()[1:]]
    assert names == ["features.15", "features.16", "features.22", "features.23", "features.29", "features.30"]


def test_console_entry_point_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "camkit.cli", "explain", str(tmp_path / "nope.png"), "--weights", "none"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip() == f"camkit: error: no such image file: {tmp_path / 'nope.png'}"


def test_recam_with_a_saved_head(images, tmp_path, capsys):
    import torch

    import camkit

    torch.manual_seed(0)
    head = camkit.ReCAMHead(512, 5)
    camkit.save_head(head, tmp_path / "head.pt")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(["daisy", "iris", "tulip", "pansy", "lily"]) + "\n")
    out = tmp_path / "recam"
    rc, stdout, err = _run(capsys, "explain", images[0], "--model", "vgg16", "--weights", "none",
                           "--head", str(tmp_path / "head.pt"), "--classes", str(classes),
                           "--method", "recam", "cam", "--out", str(out), "--threads", "2")
    assert rc == 0, err
    _png(out / "img0_recam.png", (224, 224))
    _png(out / "img0_cam.png", (224, 224))
    line = next(ln for ln in stdout.splitlines() if ln.startswith(images[0]))
    assert sum(name in line for name in ["daisy", "iris", "tulip", "pansy", "lily"]) == 3
    rc, _, err = _run(capsys, "explain", images[0], "--model", "resnet18", "--weights", "none",
                      "--head", str(tmp_path / "head.pt"), "--out", str(out))
    assert rc == 2 and "'features' Sequential" in _error_line(err)
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    rc, _, err = _run(capsys, "explain", images[0], "--model", "vgg16", "--weights", "none",
                      "--head", str(tmp_path / "head.pt"), "--classes", str(tmp_path / "three.txt"), "--out", str(out))
    assert rc == 2 and "names 3 classes, the model has 5" in _error_line(err)
