"""`camkit export` and `camkit explain` on model families they do not take (issue 21): a detector is
refused by export in one line that names `camkit explain` (which draws its boxes and one map per box);
a video model (clips (B, C, T, H, W)) is refused by explain and export, which read images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from test_detection import tiny_faster_rcnn

from camkit import InputError, adapters, cli
from camkit.app import ExplainSpec, ModelSpec, spec
from camkit.export import run as export


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("camkit: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray((np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    return folder


def test_export_refuses_a_detector_naming_camkit_explain(photos, tmp_path, monkeypatch, capsys):
    model = tiny_faster_rcnn()
    monkeypatch.setattr(spec.adapters, "build", lambda name, weights: (model, adapters.resolve(model)))
    out = tmp_path / "out"
    rc = cli.main(["export", str(photos), "--out", str(out), "--model", "tv:fasterrcnn_resnet50_fpn",
                   "--weights", "none", "--no-progress"])
    line = _error_line(capsys.readouterr().err)
    assert rc == 2 and "tv:fasterrcnn_resnet50_fpn is a detection model" in line
    assert "use `camkit explain --model tv:fasterrcnn_resnet50_fpn IMAGE ...`" in line
    assert not (out / "cams").exists()


def test_video_models_are_refused_by_explain_and_export(photos, tmp_path, monkeypatch, capsys):
    with torch.device("meta"):  # structure only: the refusal comes before any computation
        model = torchvision.models.video.r3d_18(num_classes=5).eval()
    preset = adapters.resolve(model)
    assert preset.task == "video"
    monkeypatch.setattr(spec.adapters, "build", lambda name, weights: (model, preset))
    rc = cli.main(["explain", str(photos / "a.png"), "--model", "tv:r3d_18", "--weights", "none",
                   "--out", str(tmp_path / "ex")])
    line = _error_line(capsys.readouterr().err)
    assert rc == 2 and "camkit explain takes images; tv:r3d_18 is a video model" in line
    with pytest.raises(InputError, match=r"per-class maps of image classifiers; .* is a video model: explain clips"):
        export(photos, tmp_path / "out", ExplainSpec(ModelSpec(model)), progress=False)
