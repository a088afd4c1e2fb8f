"""Flower-17 benchmark: split, augmentation, stacked training (the study's protocol and the
supplements), selection rules, diagnostics, figures, the quality rows, and a --quick run
of the whole pipeline on 1 image per class and split part."""
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
from benchmarks.flower17.models import ALL_MODELS, make_head  # noqa: E402
from benchmarks.flower17.train import StackedAdam, StackedHeads, select_study, select_today  # noqa: E402

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


def _heads(channels=24, n=5, lam=0.6):
    torch.manual_seed(0)
    hs = [make_head(m, channels, n, lam=lam) for m in ALL_MODELS for _ in range(2)]
    with torch.no_grad():
        for h in hs:  # some bias so the ReLU leaves positive maps
            h.conv.bias.add_(0.2)
    return hs


def _ref_losses(hs, f, y, mask, loss):
    """Each head's objective computed by the camkit head modules themselves."""
    out = []
    for h in hs:
        kind = type(h).__name__
        if kind == "CAMHead":
            out.append(F.cross_entropy(h(f), y))
        elif kind == "ReCAMHead":
            v = F.cross_entropy(h(f, target=y if mask == "label" else None), y)
            out.append(v + F.cross_entropy(h.plain_logits(f), y) if loss == "joint" else v)
        else:
            out.append(h.loss(f, y))
    return torch.stack(out)


@pytest.mark.parametrize("mask,loss", [("top1", "recam"), ("label", "recam"), ("label", "joint")])
def test_stacked_heads_equal_camkit_heads_in_outputs_losses_and_gradients(mask, loss):
    hs = _heads()
    S = StackedHeads(hs)
    f = torch.randn(6, 24, 7, 7)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    out = S(f)  # evaluation: ReCAM heads masked by their plain top-1, the others' plain logits
    ref_out = torch.stack([h(f) for h in hs], 1)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    act = [1, 4, 6, 9]
    per, _ = S.losses(f, y, act, mask=mask, loss=loss)
    torch.testing.assert_close(per, _ref_losses([hs[i] for i in act], f, y, mask, loss), rtol=1e-5, atol=1e-6)
    per, _ = S.losses(f, y, mask=mask, loss=loss)
    per.sum().backward()
    _ref_losses(hs, f, y, mask, loss).sum().backward()
    for i, h in enumerate(hs):
        torch.testing.assert_close(S.weight.grad[i], h.conv.weight.grad[:, :, 0, 0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(S.fc.grad[i], h.fc.weight.grad, rtol=1e-4, atol=1e-6)
        if hasattr(h, "predictor"):
            torch.testing.assert_close(S.pred.grad[i], h.predictor.weight.grad, rtol=1e-4, atol=1e-6)
        else:
            assert not S.pred.grad[i].any()
        exported = S.export(i, make_head(ALL_MODELS[i // 2], 24, 5, lam=0.6))
        torch.testing.assert_close(exported(f), h(f))


def test_the_study_mask_is_the_plain_top1_and_label_masks_differ():
    hs = _heads()
    S = StackedHeads(hs)
    f = torch.randn(6, 24, 7, 7)
    top1 = S(f, with_plain=True)[1].argmax(-1)  # (B, M)
    y = (top1[:, 2] + 1) % 5  # never the top-1 of head 2 (a ReCAM minmax head)
    torch.testing.assert_close(S(f, None)[:, 2], S(f, top1[:, 2])[:, 2])
    assert not torch.allclose(S(f, y)[:, 2], S(f, None)[:, 2])


def test_stacked_adam_equals_torch_adam_per_head():
    hs = _heads()
    S = StackedHeads(hs)
    lrs = [1e-3, 3e-2] * 5
    opt = StackedAdam([S.weight, S.bias, S.fc, S.pred], lrs)
    refs = [torch.optim.Adam(h.parameters(), lr=lr) for h, lr in zip(hs, lrs)]
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        f, y = torch.randn(4, 24, 7, 7, generator=g), torch.randint(0, 5, (4,), generator=g)
        act = list(range(10)) if step < 3 else [0, 3, 7, 8]  # stopped heads keep their weights
        per, _ = S.losses(f, y, act)
        per.sum().backward()
        opt.step(act)
        for i in act:
            refs[i].zero_grad()
            _ref_losses([hs[i]], f, y, "top1", "recam").sum().backward()
            refs[i].step()
    init = StackedHeads(_heads())
    for i, h in enumerate(hs):
        moved = (h.conv.weight[:, :, 0, 0] - init.weight[i]).abs().max()
        assert moved > (2e-3 if lrs[i] == 1e-3 else 5e-2)  # the heads really trained ...
        # ... and the stacked update is torch's Adam up to float32 rounding
        torch.testing.assert_close(S.weight[i].detach(), h.conv.weight[:, :, 0, 0].detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(S.bias[i].detach(), h.conv.bias.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(S.fc[i].detach(), h.fc.weight.detach(), rtol=1e-4, atol=1e-5)
        if hasattr(h, "predictor"):
            torch.testing.assert_close(S.pred[i].detach(), h.predictor.weight.detach(), rtol=1e-4, atol=1e-5)


def test_selection_rules_study_and_today():
    H = lambda e, tl, vl, t1: {"epoch": e, "train_loss": tl, "val_loss": vl, "val_top1": t1}  # noqa: E731
    hist = [H(1, 2.0, 1.0, 0.50), H(2, 1.0, 0.8, 0.70), H(3, 0.9, 0.85, 0.90), H(4, 0.6, 0.7, 0.80),
            H(5, 0.3, 0.65, 0.95)]
    # epoch 3 has the best eligible top-1 but its val loss did not improve (the study never saved it);
    # epoch 5 improved the val loss but train loss < val / 2 (overfitted, the stop epoch)
    assert select_today(hist)["epoch"] == 3
    assert select_study(hist)["epoch"] == 4
    hist[3]["val_top1"] = 0.70  # tie with epoch 2 among saved epochs: lower val loss wins
    assert select_study(hist)["epoch"] == 4
    assert select_study([H(1, 0.1, 0.5, 0.9)]) is None and select_today([H(1, 0.1, 0.5, 0.9)]) is None


# ------------------------------------------------------------------ diagnostics, figures, cache


def test_recam_diagnostics_count_dead_masks_and_the_sigmoid_trap_by_hand():
    from benchmarks.flower17.evaluate import recam_diagnostics
    from camkit.heads import ReCAMHead

    head = ReCAMHead(3, 3, normalize="relu")
    with torch.no_grad():
        head.conv.weight.copy_(torch.eye(3)[:, :, None, None])  # maps = ReLU(features)
        head.conv.bias.zero_()
        head.fc.weight.copy_(torch.diag(torch.tensor([1.0, 1.0, -1.0])))  # CAM_2 = -maps_2 <= 0
    f = torch.zeros(4, 3, 2, 2)
    f[:, 0] = 1.0  # class 0 is every image's plain top-1
    f[1, 2], f[2, 2], f[3, 2, 0, 0] = 2.0, 0.5, 2.0
    y = torch.tensor([0, 2, 2, 1])
    d = recam_diagnostics(head, f, y)
    # label masks: image 1 and 2 (class 2): CAM_2 = -maps_2 < 0 where maps_2 > 0 -> ReLU mask all 0;
    # image 3 (class 1): CAM_1 = maps_1 = 0 everywhere -> dead too; image 0: CAM_0 = 1 -> alive
    assert d["dead_label_mask_per_class"] == [0, 1, 2] and d["dead_label_mask_share"] == 0.75
    assert d["dead_top1_mask_per_class"] == [0, 0, 0]
    # label CAM below -1.278 at every position: image 1 only (-2 everywhere); image 2's is -0.5
    assert d["label_cam_below_trap_share"] == 0.25 and d["label_cam_positions_below_trap_share"] == 4 / 16
    assert d["top1_cam_below_trap_share"] == 0.0
    assert d["classes_never_predicted"] == [1, 2] and d["val_top1"] == 0.25
    assert d["round_trip_max_abs_mask_change"] < 1e-6  # constant masks survive the resize


def test_red_overlay_is_the_studys_pil_blend():
    from PIL import Image

    from benchmarks.flower17.figures import pick_images, red_overlay

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    cam = rng.random((9, 11)).astype(np.float32)
    heat = np.zeros_like(img)
    heat[..., 0] = np.round(cam * 255).astype(np.uint8)
    ref = np.asarray(Image.blend(Image.fromarray(img), Image.fromarray(heat), 0.5)).astype(int)
    assert np.abs(red_overlay(img, cam).astype(int) - ref).max() <= 1
    assert (red_overlay(img, np.zeros((9, 11))) == (img.astype(np.float32) / 2 + 0.5).astype(np.uint8)).all()
    with pytest.raises(ValueError, match="expected image"):
        red_overlay(img, cam[:5])
    picks = pick_images(340, 12, 1090)
    assert picks == np.random.default_rng(1090).choice(340, size=12, replace=False).tolist() and len(set(picks)) == 12


class _Payload:
    ran = []

    def __reduce__(self):
        return (_Payload.ran.append, ("code ran",))


def test_feature_cache_loads_with_weights_only(tmp_path):
    from benchmarks.flower17 import cache

    good = tmp_path / "good.pt"
    torch.save({"train": {"x": torch.zeros(2, 3, 7, 7, dtype=torch.float16), "y": torch.tensor([0, 1])},
                "meta": {"backbone": "b", "quick": None, "seconds": 1.5, "fast": True}}, good)
    assert cache.load_cache(good)["meta"]["seconds"] == 1.5
    bad = tmp_path / "bad.pt"
    torch.save({"meta": _Payload()}, bad)
    with pytest.raises(ValueError, match="not a feature cache"):
        cache.load_cache(bad)
    assert _Payload.ran == []


# ------------------------------------------------------------------ quality rows from the registry


def test_quality_rows_come_from_the_registry_and_new_methods_join():
    import camkit
    from benchmarks.flower17 import quality

    class FreeCAM:  # a gradient-free method (needs_grad False): opt-in only
        needs_grad = False

    reg = dict(camkit.methods.METHODS)
    reg["hirescam"] = camkit.GradCAM  # stands for any new gradient method
    reg["scorecam"] = FreeCAM
    rows = quality.rows(reg)
    keys = [r.key for r in rows]
    assert keys[:7] == ["cam_minmax", "cam_sigmoid", "cam_relu", "recam_minmax", "recam_sigmoid", "recam_relu",
                        "paper_recam"]
    assert {"layercam_study", "gradcam", "gradcampp", "hirescam", "scorecam"} <= set(keys)
    default = [r.key for r in quality.choose(rows, "default")]
    assert "hirescam" in default and "scorecam" not in default
    assert "scorecam" in [r.key for r in quality.choose(rows, "all")]
    assert [r.key for r in quality.choose(rows, "scorecam")] == ["layercam_study", "scorecam"]
    with pytest.raises(SystemExit, match="unknown"):
        quality.choose(rows, "nosuch")


def test_quality_verdict_is_computed_from_the_numbers():
    from benchmarks.flower17 import quality

    g = torch.Generator().manual_seed(0)
    keys = ["cam_minmax", "recam_minmax", "recam_relu", "layercam_study", "paper_recam"]
    good = {"cam_minmax": 0.5, "recam_minmax": 0.3, "recam_relu": 0.1, "layercam_study": 0.9, "paper_recam": 0.6}
    per_image, summary = {}, {}
    for k in keys:
        per_image[k] = {}
        summary[k] = {}
        for mk, _, hb in quality.METRICS:
            v = (good[k] if hb else 1 - good[k]) + 0.01 * torch.randn(50, generator=g)
            per_image[k][mk] = v
            summary[k][mk] = {"mean": float(v.mean())}
    lines = quality.verdict(summary, per_image, {k: k for k in keys})
    assert lines[0].startswith("**Yes**") and "on 5 of 5 metrics" in lines[-1]
    good["layercam_study"] = 0.4  # now CAM is best everywhere
    for k in keys:
        for mk, _, hb in quality.METRICS:
            per_image[k][mk] = (good[k] if hb else 1 - good[k]) + 0.01 * torch.randn(50, generator=g)
            summary[k][mk] = {"mean": float(per_image[k][mk].mean())}
    assert quality.verdict(summary, per_image, {k: k for k in keys})[0].startswith("**Partly**")


# ------------------------------------------------------------------ --quick end to end


#: Image side of the --quick run below (the study's: data.IMAGE_SIZE, 256). At 128 the 204 images cost the
#: backbone a quarter of the time; every check below reads the pipeline's own outputs against the same
#: functions (data.load_image, build_backbone's preprocessing), the 7 x 7 feature grid stays (the backbone
#: ends in AdaptiveAvgPool2d(7)), and the figures' tiles are resized to 128 pixels anyway.
QUICK_SIZE = 128


@pytest.fixture(scope="module")
def quick_size():
    """data.load_image and models.preprocess_transform default to QUICK_SIZE (their ``size=IMAGE_SIZE``
    default) while this module's --quick tests run: the pipeline and the tests' own references alike."""
    import inspect

    from benchmarks.flower17 import models

    with pytest.MonkeyPatch.context() as mp:
        for fn in (data.load_image, models.preprocess_transform):
            size = inspect.signature(fn).parameters["size"]
            assert size.default == data.IMAGE_SIZE and fn.__defaults__[-1] == data.IMAGE_SIZE, fn  # the last one
            mp.setattr(fn, "__defaults__", fn.__defaults__[:-1] + (QUICK_SIZE,))
        yield QUICK_SIZE


@pytest.fixture(scope="module")
def quick(tmp_path_factory, quick_size):
    from benchmarks.flower17.__main__ import main

    run = tmp_path_factory.mktemp("run")
    out = run / "out"
    assert main(["all", "--quick", "--per-class", "1", "--seeds", "0,1", "--overlays", "jet", "--fig-images", "4",
                 "--run-dir", str(run), "--out", str(out)]) == 0  # one overlay style, 4 images: the same figure code
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
    assert x.shape[-2:] == (QUICK_SIZE, QUICK_SIZE) == copies[0].size
    with torch.no_grad():
        ref = net(x)
    got = torch.stack([blob["train"]["x"][0], blob["train"]["x"][3], blob["val"]["x"][5]]).float()
    torch.testing.assert_close(got, ref, rtol=2e-3, atol=2e-3)  # float16 storage
    assert not torch.allclose(blob["train"]["x"][0].float(), blob["train"]["x"][1].float(), atol=1e-2)


@needs_data
def test_quick_training_learns_and_checkpoints_hold_the_selected_epochs(quick):
    from benchmarks.flower17 import cache
    from benchmarks.flower17.models import load_trained

    run, out = quick
    res = json.loads((out / "results.json").read_text())
    assert res["split"] == "stratified-seed0" and len(res["runs"]) == 2 * 2 * 5 and res["seeds"] == [0, 1]
    assert res["provenance"]["command"].startswith("python -m benchmarks.flower17 all --quick")
    for r in res["runs"]:
        h = r["history"]
        assert h[-1]["train_loss"] < h[0]["train_loss"], (r["model"], r["lr"])
        assert r["study"] == select_study(h) and r["today"] == select_today(h)
        if r["stopped_at"]:
            assert h[-1]["val_loss"] > 2 * h[-1]["train_loss"] and r["stopped_at"] == len(h)
    first = {r["model"]: r["history"][0]["train_loss"] for r in res["runs"] if r["seed"] == 0 and r["lr"] == 1e-3}
    other = {r["model"]: r["history"][0]["train_loss"] for r in res["runs"] if r["seed"] == 1 and r["lr"] == 1e-3}
    assert first != other  # seeds change initial weights and batch order
    best = max(max(e["train_top1"] for e in r["history"]) for r in res["runs"] if r["lr"] == 1e-3)
    assert best > 3 / 17  # far above chance on the training subset
    blob = cache.load_cache(cache.cache_path(run, "stratified-seed0", 0, 1))
    for name in ("recam_minmax", "paper_recam"):
        for rule in ("study", "today"):
            r = next(r for r in res["runs"] if r["model"] == name and r["lr"] == 1e-3 and r["seed"] == 1)
            model = load_trained("tf_efficientnet_lite0", name, 1e-3, run, rule, seed=1)
            with torch.no_grad():
                pred = model.head(blob["val"]["x"].float()).argmax(1)
            assert abs(float((pred == blob["val"]["y"]).float().mean()) - r[rule]["val_top1"]) < 1e-6


@needs_data
def test_quick_outputs(quick):
    _, out = quick
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["fp16_check"]["max_abs_feature_diff"] < 5e-3
    assert all(v[rule]["val_matches_history"] for v in ev["per_run"].values() for rule in ("study", "today"))
    diag = [v["recam"] for v in ev["per_run"].values() if "recam" in v]
    assert len(diag) == 3 * 2 * 2 and all(len(d["dead_top1_mask_per_class"]) == 17 for d in diag)
    table = (out / "table.md").read_text()
    assert "stratified-seed0" in table and "QUICK" in table and "92.94" in table  # study's numbers side by side
    assert "the study's rule" in table and "today's rule" in table and "Paper ReCAM" in table
    assert "Commit:" in table and "ReCAM diagnostics" in table
    figs = json.loads((out / "figures.json").read_text())
    assert len(figs["maps"]["correct_per_row"]) == 8 and len(figs["maps"]["images"]) == 4
    assert len(figs["figure20"]) == 6 * 1 * 3 and all((out / "figure20" / f).stat().st_size > 5_000 for f in figs["figure20"])
    assert (out / "maps.png").stat().st_size > 10_000 and (out / "loss_curves.png").stat().st_size > 10_000


@needs_data
def test_quality_maps_from_features_equal_the_methods_on_the_whole_model(quick):
    import camkit
    from benchmarks.flower17 import quality
    from benchmarks.flower17.models import load_trained

    run, _ = quick
    reg = dict(camkit.methods.METHODS)
    reg["hirescam"] = camkit.GradCAM  # any new gradient method joins through the registry
    # one row of each kind (the heads' own methods, both LayerCAM variants, gradient methods on the features,
    # one that smooths the input and so must run on the images)
    rows = quality.choose(quality.rows(reg), "cam,recam,paper_recam,layercam,gradcam,hirescam,smoothgradcampp")
    load = lambda m: load_trained("tf_efficientnet_lite0", m, 1e-3, run)  # noqa: E731
    cam_model = load("cam")
    maker = quality.MapMaker(rows, reg, cam_model, {m: load(m) for m in ("recam_minmax", "recam_sigmoid", "recam_relu")},
                             load("paper_recam"), "tf_efficientnet_lite0", map_batch=2)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    err = maker.calibrate(x, torch.tensor([[3], [11]]))
    assert set(err) == {r.key for r in rows}
    # every shortcut is exact, except generic methods that perturb the input, which then run on the images
    assert all(e < 1e-4 for k, e in err.items() if maker.on_features.get(k, True)), err
    assert maker.on_features["hirescam"] and maker.on_features["gradcam"] and not maker.on_features["smoothgradcampp"]


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
