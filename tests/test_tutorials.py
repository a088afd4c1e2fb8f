"""The tutorials in docs/tutorials/ run as written (jupytext percent scripts, cell by cell in one
namespace, in a scratch folder), with ``camkit.adapters.build`` giving a narrow ResNet18 with random
weights and ImageNet's class names instead of the offline EfficientNet-Lite0 (what they print is then
not the real model's; that the code runs, the pictures and pages are written and the shapes hold is
what is checked)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torchvision
from small_models import narrow_resnet18

import camkit.adapters

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
NAMES = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # no download: metadata


def _fake_build(name, weights="imagenet"):
    torch.manual_seed(0)
    model = narrow_resnet18(num_classes=1000, divisor=16).eval()
    return model, dataclasses.replace(camkit.adapters.resolve(model), categories=tuple(NAMES))


def _cells(path: Path):
    """The code cells of a percent-format script (markdown cells and the header left out)."""
    text = path.read_text()
    return [c for c in re.split(r"^# %%.*$", text, flags=re.M)[1:]
            if not c.lstrip().startswith("# #") and c.strip() and not c.lstrip().startswith("# ---")]


@pytest.mark.slow  # four tutorials: five methods, an export (its decoding process), a report: ~5 s on 2 cores
def test_the_tutorials_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(camkit.adapters, "build", _fake_build)
    monkeypatch.chdir(tmp_path)
    files = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
    assert [f.name[:2] for f in files] == ["01", "02", "03", "04"]
    spaces = {}
    for f in files:
        ns: dict = {"__name__": "__main__"}
        for k, cell in enumerate(_cells(f)):
            exec(compile(cell, f"{f.name} (cell {k + 1})", "exec"), ns)
        spaces[f.name[:2]] = ns
    out = capsys.readouterr().out
    assert (tmp_path / "first_map.png").is_file() and (tmp_path / "compare_methods.png").is_file()
    assert spaces["01"]["res"]._repr_png_()[:4] == b"\x89PNG" and out.count("%") >= 3
    assert len(spaces["02"]["maps"]) == 5 and "agreement of the 5 methods" in out
    assert tuple(spaces["03"]["res"].maps.shape) == (2, 2, 224, 224)
    assert spaces["03"]["multi"].valid.tolist() == [[True, False], [True, True]]
    assert (tmp_path / "cams" / "report.html").is_file() and "camkit report: 4 images (0 failed)" in out
