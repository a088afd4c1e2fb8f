"""Flower-17 benchmark: split, augmentation, stacked training, selection rule, and
a --quick run of the whole pipeline on 1 image per class and split part."""
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.flower17 import data  # noqa: E402
from benchmarks.flower17.models import MODEL_NAMES, make_head  # noqa: E402
from benchmarks.flower17.train import StackedAdam, StackedHeads, select_epoch  # noqa: E402

HAVE_DATA = data.image_path(data.default_data_root(), data.NUM_IMAGES).exists()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"Flower-17 images not found under {data.default_data_root()}")


# ------------------------------------------------------------------ split


def test_committed_split_is_the_generated_one_and_stratified_disjoint():
    blob = json.loads(data.SPLIT_JSON.read_text())
    gen = data.make_stratified_split(0)
    assert {k: blob[k] for k in ("train", "val", "test")} == gen
    assert data.make_stratified_split(0) == gen  # deterministic
    assert data.make_stratified_split(1) != gen
    allidx = gen["train"] + gen["val"] + gen["test"]
    assert sorted(allidx) == list(range(1, 1361))  # disjoint and complete
    for part, n in data.SPLIT_SIZES.items():
        counts = np.bincount([data.label_of(i) for i in gen[part]], minlength=17)
        assert (counts == n).all(), (part, counts)


def test_official_split_is_used_when_datasplits_mat_is_present(tmp_path):
    from scipy.io import savemat

    gen = data.make_stratified_split(5)  # any disjoint split, stored the official way (1-based, float)
    savemat(tmp_path / "datasplits.mat", {"trn1": np.array(gen["train"], float)[None],
                                          "val1": np.array(gen["val"], float)[None],
                                          "tst1": np.array(gen["test"], float)[None],
                                          "trn2": np.array(gen["val"], float)[None]})
    split = data.load_split(tmp_path)
    assert split.name == "official-1"
    assert [int(Path(p).stem[-4:]) for p, _ in split["val"]] == gen["val"]
    assert all(y == (int(Path(p).stem[-4:]) - 1) // 80 for p, y in split["train"])
    assert data.load_split(tmp_path / "nothing").name == "stratified-seed0"


@needs_data
def test_load_split_paths_labels_and_classes():
    split = data.load_split()
    assert split.name == "stratified-seed0" and {k: len(v) for k, v in split.items()} == {"train": 680, "val": 340, "test": 340}
    for p, y in split["test"][::37]:
        assert Path(p).exists() and y == data.label_of(int(Path(p).stem.split("_")[1]))
    labels = data.default_data_root() / "labels.txt"
    if labels.exists():
        assert tuple(labels.read_text().split()) == data.CLASSES
    assert len(data.CLASSES) == 17


def test_augmented_copies_are_seeded_per_image_and_copy():
    rng = np.random.default_rng(0)
    img = data.Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    a = data.augmented_copies(img, 7, seed=0)
    torch.manual_seed(123)  # global RNG state must not matter
    b = data.augmented_copies(img, 7, seed=0)
    c = data.augmented_copies(img, 8, seed=0)
    assert len(a) == 10 and a[0] is img
    arr = lambda im: np.asarray(im)  # noqa: E731
    assert all(np.array_equal(arr(x), arr(y)) for x, y in zip(a, b))
    assert not all(np.array_equal(arr(x), arr(y)) for x, y in zip(a[1:], c[1:]))
    assert len({arr(x).tobytes() for x in a}) == 10  # 9 distinct copies + the original


# ------------------------------------------------------------------ stacked heads, Adam, selection


def _heads(channels=24, n=5):
    torch.manual_seed(0)
    hs = [make_head(m, channels, n) for m in MODEL_NAMES for _ in range(2)]
    with torch.no_grad():
        for h in hs:  # some bias so the ReLU leaves positive maps
            h.conv.bias.add_(0.2)
    return hs


def _ref(hs, f, y):
    return torch.stack([h(f) if type(h).__name__ == "CAMHead" else h(f, target=y) for h in hs], 1)


def test_stacked_heads_equal_camkit_heads_in_logits_and_gradients():
    hs = _heads()
    S = StackedHeads(hs)
    f = torch.randn(6, 24, 7, 7)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    for target in (y, None):  # label as ReCAM target (training) and the default top-1 (evaluation)
        torch.testing.assert_close(S(f, target), _ref(hs, f, target), rtol=1e-5, atol=1e-5)
    act = [1, 4, 6]
    torch.testing.assert_close(S(f, y, act), _ref([hs[i] for i in act], f, y), rtol=1e-5, atol=1e-5)
    lo = S(f, y)
    F.cross_entropy(lo.permute(0, 2, 1), y[:, None].expand(-1, lo.shape[1])).backward()
    ref = _ref(hs, f, y)
    F.cross_entropy(ref.permute(0, 2, 1), y[:, None].expand(-1, ref.shape[1])).backward()
    for i, h in enumerate(hs):
        torch.testing.assert_close(S.weight.grad[i], h.conv.weight.grad[:, :, 0, 0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(S.fc.grad[i], h.fc.weight.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(S.export(i, make_head(MODEL_NAMES[i // 2], 24, 5)).fc.weight, h.fc.weight)


def test_stacked_adam_equals_torch_adam_per_head():
    hs = _heads()
    S = StackedHeads(hs)
    lrs = [1e-3, 3e-2] * 4
    opt = StackedAdam([S.weight, S.bias, S.fc], lrs)
    refs = [torch.optim.Adam(h.parameters(), lr=lr) for h, lr in zip(hs, lrs)]
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        f, y = torch.randn(4, 24, 7, 7, generator=g), torch.randint(0, 5, (4,), generator=g)
        act = list(range(8)) if step < 3 else [0, 3, 7]  # stopped heads keep their weights
        lo = S(f, y, act)
        F.cross_entropy(lo.permute(0, 2, 1), y[:, None].expand(-1, lo.shape[1]), reduction="none").mean(0).sum().backward()
        opt.step(act)
        for i in act:
            refs[i].zero_grad()
            F.cross_entropy(_ref([hs[i]], f, y)[:, 0], y).backward()
            refs[i].step()
    init = StackedHeads(_heads())
    for i, h in enumerate(hs):
        moved = (h.conv.weight[:, :, 0, 0] - init.weight[i]).abs().max()
        assert moved > (2e-3 if lrs[i] == 1e-3 else 5e-2)  # the heads really trained ...
        # ... and the stacked update is torch's Adam up to float32 rounding
        torch.testing.assert_close(S.weight[i].detach(), h.conv.weight[:, :, 0, 0].detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(S.bias[i].detach(), h.conv.bias.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(S.fc[i].detach(), h.fc.weight.detach(), rtol=1e-4, atol=1e-5)


def test_select_epoch_rule():
    H = lambda e, tl, vl, t1: {"epoch": e, "train_loss": tl, "val_loss": vl, "val_top1": t1}  # noqa: E731
    hist = [H(1, 2.0, 1.5, 0.50), H(2, 1.0, 0.9, 0.80), H(3, 0.5, 0.8, 0.85), H(4, 0.45, 0.85, 0.85),
            H(5, 0.3, 0.7, 0.95)]  # epoch 5: train loss < val/2 -> not eligible despite best top-1
    assert select_epoch(hist)["epoch"] == 3  # tie at 0.85: lower val loss wins
    hist[3]["val_loss"] = 0.8
    assert select_epoch(hist)["epoch"] == 3  # full tie: earlier epoch
    assert select_epoch([H(1, 0.1, 0.5, 0.9)]) is None


# ------------------------------------------------------------------ --quick end to end


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from benchmarks.flower17.__main__ import main

    run = tmp_path_factory.mktemp("run")
    out = run / "out"
    assert main(["all", "--quick", "--per-class", "1", "--run-dir", str(run), "--out", str(out)]) == 0
    return run, out


@needs_data
def test_quick_cache_equals_direct_backbone_forward(quick):
    from benchmarks.flower17 import cache
    from benchmarks.flower17.models import build_backbone

    run, _ = quick
    blob = cache.load_cache(cache.cache_path(run, "stratified-seed0", 0, 1))
    assert blob["train"]["x"].shape == (170, 1280, 7, 7) and blob["val"]["x"].shape == (17, 1280, 7, 7)
    assert torch.equal(torch.bincount(blob["train"]["y"]), torch.full((17,), 10))
    split = data.load_split()
    net, pre, _ = build_backbone("tf_efficientnet_lite0")
    p0, _ = split["train"][0]
    copies = data.augmented_copies(data.load_image(p0), int(Path(p0).stem[-4:]), seed=0)
    pv, _ = data.subset(split["val"], 1)[5]
    x = torch.stack([pre(copies[0]), pre(copies[3]), pre(data.load_image(pv))])
    with torch.no_grad():
        ref = net(x)
    got = torch.stack([blob["train"]["x"][0], blob["train"]["x"][3], blob["val"]["x"][5]]).float()
    torch.testing.assert_close(got, ref, rtol=2e-3, atol=2e-3)  # float16 storage
    assert not torch.allclose(blob["train"]["x"][0].float(), blob["train"]["x"][1].float(), atol=1e-2)


@needs_data
def test_quick_training_learns_and_checkpoints_hold_the_selected_epoch(quick):
    from benchmarks.flower17 import cache
    from benchmarks.flower17.models import load_trained

    run, out = quick
    res = json.loads((out / "results.json").read_text())
    assert res["split"] == "stratified-seed0" and len(res["runs"]) == 8
    for r in res["runs"]:
        h = r["history"]
        assert h[-1]["train_loss"] < h[0]["train_loss"], (r["model"], r["lr"])
        assert r["selected"] == select_epoch(h)
        if r["stopped_at"]:
            assert h[-1]["val_loss"] > 2 * h[-1]["train_loss"] and r["stopped_at"] == len(h)
    best = max(max(e["train_top1"] for e in r["history"]) for r in res["runs"] if r["lr"] == 1e-3)
    assert best > 3 / 17  # far above chance on the training subset
    blob = cache.load_cache(cache.cache_path(run, "stratified-seed0", 0, 1))
    r = next(r for r in res["runs"] if r["model"] == "recam_minmax" and r["lr"] == 1e-3)
    model = load_trained("tf_efficientnet_lite0", "recam_minmax", 1e-3, run)
    with torch.no_grad():
        pred = model.head(blob["val"]["x"].float()).argmax(1)
    assert abs(float((pred == blob["val"]["y"]).float().mean()) - r["selected"]["val_top1"]) < 1e-6


@needs_data
def test_quick_outputs(quick):
    _, out = quick
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["fp16_check"]["max_abs_feature_diff"] < 5e-3
    assert all(v["val_matches_history"] for v in ev["per_run"].values())
    table = (out / "table.md").read_text()
    assert "stratified-seed0" in table and "QUICK" in table and "92.94" in table  # study's numbers side by side
    figs = json.loads((out / "figures.json").read_text())
    assert len(figs["maps"]["correct_per_row"]) == 7 and len(figs["maps"]["images"]) == 12
    assert (out / "maps.png").stat().st_size > 10_000 and (out / "loss_curves.png").stat().st_size > 10_000


def test_quality_subcommand_dispatches_lazily(monkeypatch):
    from benchmarks.flower17 import __main__ as cli

    seen = []
    fake = types.ModuleType("benchmarks.flower17.quality")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "benchmarks.flower17.quality", fake)
    monkeypatch.delattr("benchmarks.flower17.quality", raising=False)
    assert cli.main(["quality", "--x", "1"]) == 0 and seen == [["--x", "1"]]


def test_quality_table_keeps_the_hand_written_reading():
    from benchmarks.flower17.quality import HAND_WRITTEN, keep_hand_written

    old = "# table\n| a |\n\n" + HAND_WRITTEN + " after run 1)\n\nLayerCAM holds on deletion.\n"
    new = "# table\n| b |\n"
    out = keep_hand_written(new, old)
    assert out.startswith(new) and out.endswith("LayerCAM holds on deletion.\n") and "| a |" not in out
    assert keep_hand_written(new, "") == new and keep_hand_written(new, "# table\n| a |\n") == new
