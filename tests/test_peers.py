"""The benchmarks' own machinery, without any peer library: the two floors
against hand computations with plain autograd (and camkit against the floors),
the harness's interleaving, same-round ratios, memory and results files, and
the peers driver end to end on a small CNN."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (  # noqa: E402
    Runner,
    WallTimer,
    configure,
    fastest,
    interleave,
    markdown_table,
    max_diff,
    peak_rss_increase,
    ratio_medians,
    run_provenance,
    same_round_ratio,
    tf32_off,
    write_results,
)
from benchmarks.peers import (  # noqa: E402
    MinimalFloor,
    NaiveFloor,
    baselines,
    main,
    minmax_maps,
    summary_rows,
    targets_report,
)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),  # "1"
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),  # "3"
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).double().eval()


def reference_maps(model, x, layers, targets, method):
    """One image and one class at a time, autograd on the whole model."""
    mods = dict(model.named_modules())
    B, K = targets.shape
    per = {n: [[None] * K for _ in range(B)] for n in layers}
    for b in range(B):
        for k in range(K):
            acts = {}
            hs = [mods[n].register_forward_hook(lambda m, i, o, n=n, acts=acts: acts.__setitem__(n, o)) for n in layers]
            logits = model(x[b : b + 1])
            for h in hs:
                h.remove()
            for n in layers:
                (g,) = torch.autograd.grad(logits[0, targets[b, k]], acts[n], retain_graph=True)
                a = acts[n][0]
                if method == "layercam":
                    m = (g[0].clamp(min=0) * a).sum(0).clamp(min=0)
                else:
                    m = (g[0].mean((1, 2))[:, None, None] * a).sum(0).clamp(min=0)
                per[n][b][k] = m.detach()
    return {n: torch.stack([torch.stack(row) for row in per[n]]) for n in layers}


def reference_fused(ref, layers, size):
    """Each map on its own: (m - min) / (max - min), bilinear upsample, max over layers."""
    ups = []
    for n in layers:
        m = ref[n]
        norm = torch.zeros_like(m)
        for b in range(m.shape[0]):
            for k in range(m.shape[1]):
                lo, hi = m[b, k].min(), m[b, k].max()
                if hi > lo:
                    norm[b, k] = (m[b, k] - lo) / (hi - lo)
        ups.append(F.interpolate(norm, size=size, mode="bilinear", align_corners=False))
    return torch.stack(ups).amax(0)


X = torch.randn(3, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
TARGETS = torch.tensor([[4, 0], [1, 2], [3, 3]])


# --------------------------------------------------------------------------- floors


@pytest.mark.parametrize("method", ["layercam", "gradcam"])
@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_naive_floor_matches_per_image_per_class_reference(method, mode):
    model = tiny_model()
    ups, raw, t = NaiveFloor(model, ["1", "3"], method, mode)(X, targets=TARGETS)
    ref = reference_maps(model, X, ["1", "3"], TARGETS, method)
    assert torch.equal(t, TARGETS)
    for r, u, n in zip(raw, ups, ["1", "3"]):
        torch.testing.assert_close(r, ref[n])
        torch.testing.assert_close(u, F.interpolate(ref[n], size=(12, 12), mode="bilinear", align_corners=False))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["layercam", "gradcam"])
@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_minimal_floor_matches_the_reference_raw_and_fused(method, mode):
    model = tiny_model()
    fused, raw, t = MinimalFloor(model, ["1", "3"], method, mode)(X, targets=TARGETS)
    ref = reference_maps(model, X, ["1", "3"], TARGETS, method)
    assert torch.equal(t, TARGETS)
    for r, n in zip(raw, ["1", "3"]):
        torch.testing.assert_close(r, ref[n])
    torch.testing.assert_close(fused, reference_fused(ref, ["1", "3"], (12, 12)))
    assert fused.shape == (3, 2, 12, 12) and float(fused.min()) >= 0 and float(fused.max()) <= 1
    assert all(p.grad is None for p in model.parameters())


def test_floors_take_the_k_best_logits_and_check_their_mode():
    model = tiny_model()
    with torch.no_grad():
        top = model(X).topk(3, dim=1).indices
    assert torch.equal(MinimalFloor(model, ["3"], "gradcam")(X, topk=3)[2], top)
    assert torch.equal(NaiveFloor(model, ["3"], "gradcam")(X, topk=3)[2], top)
    with pytest.raises(ValueError, match="mode must be"):
        MinimalFloor(model, ["3"], "gradcam", mode="vmap")


class GradModeSpy(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(torch.is_grad_enabled())
        return x


def spied_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), GradModeSpy(), nn.ReLU(),  # 0, 1, 2
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),  # 3, 4
        GradModeSpy(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),  # 5 ...
    ).double().eval()


@pytest.mark.parametrize("caller_grad", [True, False])
def test_minimal_floor_builds_no_graph_below_the_first_hooked_layer(caller_grad):
    model = spied_model()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.set_grad_enabled(caller_grad):
        _, raw, t = MinimalFloor(model, ["2", "4"], "layercam")(x, topk=2)
        assert torch.is_grad_enabled() == caller_grad
    assert model[1].seen == [False] and model[5].seen == [True]
    ref = reference_maps(model, x, ["2", "4"], t, "layercam")
    torch.testing.assert_close(raw[1], ref["4"])
    NaiveFloor(model, ["2", "4"], "layercam")(x, topk=2)
    assert model[1].seen[-1] is True  # the naive floor builds the whole graph


@pytest.mark.parametrize("method", ["layercam", "gradcam"])
def test_camkit_equals_the_minimal_floor_and_the_naive_floor(method):
    import camkit

    model = tiny_model()
    cls = {"layercam": camkit.LayerCAM, "gradcam": camkit.GradCAM}[method]
    res = cls(model, layers=["1", "3"])(X, topk=2)
    fused, minimal_raw, t = MinimalFloor(model, ["1", "3"], method)(X, targets=res.targets)
    _, naive_raw, _ = NaiveFloor(model, ["1", "3"], method)(X, targets=res.targets)
    for n, mr, nr in zip(["1", "3"], minimal_raw, naive_raw):
        torch.testing.assert_close(res.layer_maps[n], mr)
        torch.testing.assert_close(res.layer_maps[n], nr)
    torch.testing.assert_close(res.maps, fused)


def test_minimal_floor_does_the_map_work_in_float32_under_autocast():
    model = tiny_model().float()
    x = X.float()
    ref_fused, ref_raw, t = MinimalFloor(model, ["1", "3"], "layercam")(x, topk=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, raw, _ = MinimalFloor(model, ["1", "3"], "layercam")(x, targets=t)
    assert fused.dtype == torch.float32 and all(r.dtype == torch.float32 for r in raw)
    assert (fused - ref_fused).abs().max() < 0.25  # bf16 activations and gradients, float32 maps


def test_minmax_maps():
    m = torch.tensor([[[[1.0, 3.0], [2.0, 5.0]], [[7.0, 7.0], [7.0, 7.0]]]])  # (1, 2, 2, 2): a map and a constant
    out = minmax_maps(m)
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[0, 1], torch.zeros(2, 2))


# --------------------------------------------------------------------------- harness


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_interleave_order_warmup_and_untimed_setup():
    clock, log = FakeClock(), []

    def runner(name, cost, setup_cost):
        def call():
            log.append(name)
            clock.now += cost

        def setup():
            log.append(name + ".setup")
            clock.now += setup_cost  # must not be counted

        return Runner(name, call, setup=setup, teardown=lambda: log.append(name + ".teardown"))

    runners = [runner("A", 1.0, 50), runner("B", 2.0, 50), runner("C", 3.0, 50)]
    times = interleave(runners, reps=3, warmup=2, timer=WallTimer(clock=clock))
    calls = [e for e in log if "." not in e]
    assert calls == ["A", "B", "C"] * 5
    assert log[:3] == ["A.setup", "A", "A.teardown"]
    assert times == {"A": [1.0] * 3, "B": [2.0] * 3, "C": [3.0] * 3}


def test_interleave_runs_teardown_when_a_call_fails():
    torn = []

    def boom():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        interleave([Runner("A", boom, teardown=lambda: torn.append(1))], reps=1, warmup=0)
    assert torn == [1]


def test_ratios_are_same_round_ratios():
    # round 2 is slow for everyone (load): same-round ratios ignore it, ratios of medians do not
    times = {"bare": [1.0, 4.0, 1.0, 1.2, 0.9], "x": [2.0, 8.0, 2.0, 2.4, 1.8]}
    r = ratio_medians(times, "bare")
    assert r["bare"] == 1.0 and r["x"] == pytest.approx(2.0)
    times = {"bare": [1.0, 1.0, 3.0], "x": [3.0, 1.0, 3.0]}  # per-round 3, 1, 1 -> median 1
    assert same_round_ratio(times, "x", "bare") == pytest.approx(1.0)
    assert fastest({"a": [3.0, 1.0, 3.0], "b": [2.0, 2.0, 2.0]}, ["a", "b"]) == "b"


def test_max_diff():
    a = torch.tensor([[0.0, 2.0], [4.0, -1.0]])
    b = torch.tensor([0.0, 2.5, 4.0, -1.0])  # reshaped to a's shape
    d, rel = max_diff(a, b)
    assert d == pytest.approx(0.5) and rel == pytest.approx(0.125)
    assert max_diff(torch.zeros(3), torch.zeros(3)) == (0.0, 0.0)
    assert max_diff(torch.zeros(2), torch.ones(2))[1] == float("inf")


def test_markdown_table():
    t = markdown_table(["a", "b"], [["x", 1.23456], ["y", 12345.6]])
    assert t.splitlines() == ["| a | b |", "|---|---|", "| x | 1.23 |", "| y | 12346 |"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_rss_increase_sees_a_temporary_allocation():
    n = 64 * 2**20  # 256 MiB of float32, freed before the function returns
    grew = peak_rss_increase(lambda: float(torch.ones(n).sum()))
    assert 200 < grew < 400
    assert peak_rss_increase(lambda: None) < 50


def test_configure_and_tf32_off_state_the_policy_and_restore_it():
    threads = torch.get_num_threads()
    try:
        assert configure("cpu", threads=1) == {"device": "cpu", "torch_threads": 1}
    finally:
        torch.set_num_threads(threads)
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with tf32_off():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == old
    with pytest.raises(ValueError, match="tf32 must be"):
        configure("cpu", tf32="maybe")


def test_write_results_records_the_provenance(tmp_path):
    prov = run_provenance(["--arch", "tiny"], "benchmarks.peers")
    md, js = write_results(tmp_path / "r.md", prov, "Title", "body text", {"times_s": {"a": [1.0]}})
    data = json.loads(js.read_text())
    p = data["provenance"]
    assert p["command"] == "python -m benchmarks.peers --arch tiny"
    assert p["torch"] == torch.__version__ and p["cpu_cores"] and p["date"] and p["git_commit"]
    assert data["times_s"] == {"a": [1.0]} and "_t0" not in p
    text = md.read_text()
    assert text.startswith("# Title\n") and "Command: `python -m benchmarks.peers --arch tiny`" in text
    assert "body text" in text and "load average" in text


def test_goals_and_summary_use_the_fastest_minimal_and_each_peer_at_its_best():
    t = {
        "bare forward (no grad)": [1.0, 1.0], "naive": [3.0, 3.0], "minimal (loop)": [2.0, 2.0],
        "minimal (batched)": [2.5, 2.5], "camkit": [2.02, 2.06], "camkit channels_last": [1.8, 1.8],
        "torchcam documented (5 forwards)": [6.0, 6.0], "torchcam best (1 forward, K retain_graph calls)": [2.0, 2.2],
    }
    assert baselines(list(t), t)["minimal"] == "minimal (loop)"
    rows = {r[1]: r for r in targets_report({"s top-5": t}, "cpu")}
    assert rows["camkit / minimal (loop)"][2] == pytest.approx(1.02) and rows["camkit / minimal (loop)"][4] == "yes"
    assert rows["camkit / naive"][4] == "yes" and "GPU" in rows["camkit / naive"][3]
    best = rows["torchcam best (1 forward, K retain_graph calls) / camkit"]
    assert best[2] == pytest.approx(((2.0 / 2.02) + (2.2 / 2.06)) / 2) and best[4] == "yes"
    (row,) = summary_rows({"s top-5": t}, {"s top-5": {"camkit": 10.0, "torchcam documented (5 forwards)": 30.0,
                                                       "torchcam best (1 forward, K retain_graph calls)": 20.0}})
    assert row[1] == pytest.approx(1.02) and row[3] == pytest.approx(0.9) and row[10] == 10.0
    assert row[13].startswith("20 (torchcam best")


def test_peers_driver_end_to_end_on_a_small_cnn(tmp_path):
    out = tmp_path / "cpu_tiny.md"
    main(["--arch", "tiny", "--no-peers", "--quick", "--reps", "1", "--warmup", "0", "--size", "32", "--threads", "1",
          "--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["provenance"]["command"].startswith("python -m benchmarks.peers --arch tiny --no-peers --quick")
    assert data["settings"]["archs"] == {"tiny": 2}
    titles = list(data["times_s"])
    assert titles == ["tiny LayerCAM layer1/layer2/layer3 top-1", "tiny Grad-CAM layer3 top-1",
                      "tiny LayerCAM layer1/layer2/layer3 top-5", "tiny Grad-CAM layer3 top-5",
                      "tiny CAM layer3 all 10 classes"]
    assert {"naive", "minimal", "camkit", "camkit channels_last", "camkit bf16 autocast"} <= set(data["times_s"][titles[0]])
    assert {"minimal (loop)", "minimal (batched)", "camkit batched_backward=True",
            "camkit batched_backward=False"} <= set(data["times_s"][titles[2]])
    assert all(len(v) == 1 for t in data["times_s"].values() for v in t.values())
    assert len(data["summary"]) == 1 + 4  # header + the gradient scenarios
    rel = [r[4] for r in data["agreement"]]
    assert len(rel) == 2 * ((2 * 3 + 1) + (2 * 1 + 1)) and max(rel) < 1e-5  # float32 floors and camkit's maps agree
    assert "## Agreement with camkit's maps" in out.read_text()


# --------------------------------------------------------------------------- core speed options (camkit/methods.py, hooks.py)


@pytest.mark.parametrize("caller_grad", [True, False])
def test_no_graph_below_the_first_hooked_layer(caller_grad):
    import camkit

    model = spied_model()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.set_grad_enabled(caller_grad):
        res = camkit.LayerCAM(model, layers=["2", "4"])(x, topk=2)
        assert torch.is_grad_enabled() == caller_grad  # the caller's mode is back
    assert model[1].seen == [False] and model[5].seen == [True]
    ref = reference_maps(model, x, ["2", "4"], res.targets, "layercam")
    for n in ("2", "4"):
        torch.testing.assert_close(res.layer_maps[n], ref[n])
    assert all(p.grad is None for p in model.parameters())


def test_channels_last_option_leaves_the_model_as_found():
    import camkit

    model = tiny_model()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    plain = camkit.GradCAM(model, layers=["1", "3"])(x, topk=2)
    cl = camkit.GradCAM(model, layers=["1", "3"], channels_last=True)(x, topk=2)
    for k, (v, stride) in before.items():
        assert torch.equal(model.state_dict()[k], v) and model.state_dict()[k].stride() == stride
    assert x.is_contiguous()
    for n in ("1", "3"):
        torch.testing.assert_close(cl.layer_maps[n], plain.layer_maps[n])
    torch.testing.assert_close(cl.maps, plain.maps)
    assert cl.maps.is_contiguous()


def test_maps_are_computed_on_first_access_and_kept():
    import camkit
    from camkit.normalize import minmax

    model = tiny_model()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    res = camkit.LayerCAM(model, layers=["1", "3"])(x, targets=[[0, 1], [2, 3]])
    assert "on first access" in repr(res)
    expected = torch.maximum(*[
        F.interpolate(minmax(res.layer_maps[n]), size=(12, 12), mode="bilinear", align_corners=False) for n in ("1", "3")
    ])
    m = res.maps
    assert m is res.maps
    torch.testing.assert_close(m, expected)
    assert "computed" in repr(res)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_event_timer_and_peak_memory():
    from benchmarks.harness import CudaEventTimer, cuda_peak_increase

    out, seconds = CudaEventTimer("cuda")(lambda: torch.ones(2**20, device="cuda").sum())
    assert seconds > 0 and float(out) == 2**20
    grew = cuda_peak_increase(lambda: float(torch.ones(64 * 2**20, device="cuda").sum()))
    assert 255 < grew < 300


# --------------------------------------------------------------------------- benchmarks/precision.py


def test_diff_stats_and_layer_rel():
    from benchmarks.precision import diff_stats, layer_rel

    ref = torch.zeros(200)
    other = torch.zeros(200)
    other[:3] = torch.tensor([0.5, 0.25, 0.25])
    st = diff_stats(ref, other)
    assert st["max"] == 0.5 and st["mean"] == pytest.approx(1.0 / 200) and 0.25 <= st["p99"] <= 0.5
    assert layer_rel([torch.tensor([2.0, 4.0]), torch.ones(2)], [torch.tensor([2.0, 3.0]), torch.ones(2)]) == 0.25


def test_precision_rows_on_a_small_cnn():
    from benchmarks.precision import device_equality_rows, mixed_precision_rows

    rows = mixed_precision_rows("tiny", 2, 32, "cpu", ["bf16"])
    assert [r[4] for r in rows[:3]] == ["camkit", "minimal floor, float32 map work", "minimal floor, map work in bf16"]
    assert [r[5] for r in rows[:3]] == ["float32", "float32", "bfloat16"]
    assert all(0 <= r[6] <= 1 and r[8] <= r[7] <= r[6] for r in rows)
    # the CPU-vs-CUDA code path, run CPU against CPU: every difference is zero
    eq = device_equality_rows("tiny", 2, 32, "cpu")
    assert {r[3] for r in eq} == {"float64", "float32"} and {r[1] for r in eq} >= {"LayerCAM", "Grad-CAM", "CAM"}
    assert all(r[5] == 0 and r[6] == 0 for r in eq)
