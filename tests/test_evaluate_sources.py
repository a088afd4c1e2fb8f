"""What `camkit evaluate` explains: each image's labelled class (``--labels``), and an export's own
images, classes, model and method when given an export's folder; the values are checked against the
library's metric on maps computed here by hand (LayerCAM on the same model and classes)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from small_models import narrow_resnet18
from torchvision import transforms as T

import camkit
import camkit.adapters
from camkit import cli
from camkit.adapters import resolve
from camkit.evaluation import sparseness

TF = T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor()])


def _small(seed: int):
    torch.manual_seed(seed)
    model = narrow_resnet18(num_classes=5).eval()
    return model, dataclasses.replace(resolve(model), transform=TF, input_size=(32, 32), categories=tuple("abcde"))


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for k in range(3):
        p = tmp_path / "src" / f"img{k}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _hand_sparseness(model, paths, classes):
    x = torch.stack([TF(Image.open(p).convert("RGB")) for p in paths])
    maps = camkit.LayerCAM(model, ["layer2", "layer3", "layer4"])(x, torch.tensor(classes)).maps[:, 0]
    return sparseness(maps).numpy()


def test_labels_choose_the_explained_class(photos, tmp_path, monkeypatch, capsys):
    model, preset = _small(0)
    monkeypatch.setattr(camkit.adapters, "build", lambda name, weights: (model, preset))
    csv = tmp_path / "src" / "labels.csv"
    csv.write_text("path,label\nimg0.png,c\nimg1.png,4\nimg2.png,a;b\n")
    out = tmp_path / "out"
    rc = cli.main(["evaluate", *photos, "--labels", str(csv), "--method", "layercam", "--metric", "sparseness",
                   "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((out / "evaluation.json").read_text())
    assert [r["class"] for r in data["per_image"]] == [2, 4, 0]
    assert np.allclose([r["sparseness"] for r in data["per_image"]], _hand_sparseness(model, photos, [2, 4, 0]),
                       atol=1e-6)
    assert "first label" in (out / "evaluation.md").read_text()
    csv.write_text("path,label\nimg0.png,c\nimg1.png,zebra\nimg2.png,a\n")
    assert cli.main(["evaluate", *photos, "--labels", str(csv), "--metric", "sparseness", "--out", str(out)]) == 2
    assert "'zebra' is neither a class index nor a class name" in capsys.readouterr().err


def test_an_export_folder_is_evaluated_with_its_own_model_method_and_classes(photos, tmp_path, monkeypatch, capsys):
    model, preset = _small(0)
    monkeypatch.setattr(camkit.adapters, "build", lambda name, weights: (model, preset))
    exp = tmp_path / "exp"
    csv = tmp_path / "labels.csv"  # classes the model's top-1 would not all give: the export's keys are these
    csv.write_text("path,label\n" + "".join(f"src/img{k}.png,{c}\n" for k, c in enumerate([3, 1, 4])))
    rc = cli.main(["export", str(tmp_path / "src"), "--out", str(exp), "--weights", "none", "--method", "layercam",
                   "--labels", str(csv), "--workers", "0", "--threads", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    manifest = [json.loads(line) for line in (exp / "manifest.jsonl").read_text().splitlines()]
    keys0 = [m["keys"][0] for m in manifest]
    assert keys0 == [3, 1, 4]
    out = tmp_path / "out"
    assert cli.main(["evaluate", str(exp), "--metric", "sparseness", "--out", str(out)]) == 0
    data = json.loads((out / "evaluation.json").read_text())
    assert [r["image"] for r in data["per_image"]] == [m["path"] for m in manifest]
    assert [r["class"] for r in data["per_image"]] == keys0 and data["settings"]["methods"] == ["layercam"]
    assert np.allclose([r["sparseness"] for r in data["per_image"]], _hand_sparseness(model, photos, keys0),
                       atol=1e-6)
    # another model's weights, or options the export fixes itself: refused, naming why
    other, _ = _small(1)
    monkeypatch.setattr(camkit.adapters, "build", lambda name, weights: (other, preset))
    assert cli.main(["evaluate", str(exp), "--metric", "sparseness", "--out", str(out)]) == 2
    assert "has other weights than the export's" in capsys.readouterr().err
    assert cli.main(["evaluate", str(exp), "--model", "resnet50", "--out", str(out)]) == 2
    assert "leave --model out" in capsys.readouterr().err
    assert cli.main(["evaluate", str(exp), "--layers", "layer4", "--out", str(out)]) == 2
    assert "the export's own method keeps its settings" in capsys.readouterr().err
