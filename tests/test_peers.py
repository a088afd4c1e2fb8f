"""The peer benchmark's own machinery (no peer library needed): the floor
computes the reference maps, the interleaving times only the calls in A B C
order after the warm-up, ratios are same-round, differences and memory are
measured as stated."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.peers import (  # noqa: E402
    Floor,
    Runner,
    interleave,
    markdown_table,
    max_diff,
    peak_rss_increase,
    ratio_medians,
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


@pytest.mark.parametrize("method", ["layercam", "gradcam"])
@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_floor_matches_per_image_per_class_reference(method, mode):
    model = tiny_model()
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([[4, 0], [1, 2], [3, 3]])
    ups, raw, t = Floor(model, ["1", "3"], method, mode)(x, targets=targets)
    ref = reference_maps(model, x, ["1", "3"], targets, method)
    assert torch.equal(t, targets)
    for r, u, n in zip(raw, ups, ["1", "3"]):
        torch.testing.assert_close(r, ref[n])
        torch.testing.assert_close(u, F.interpolate(ref[n], size=(12, 12), mode="bilinear", align_corners=False))
    assert ups[1].shape == (3, 2, 12, 12) and raw[1].shape == (3, 2, 6, 6)
    assert all(p.grad is None for p in model.parameters())


def test_floor_topk_takes_the_k_best_logits():
    model = tiny_model()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    _, _, t = Floor(model, ["3"], "gradcam")(x, topk=3)
    with torch.no_grad():
        assert torch.equal(t, model(x).topk(3, dim=1).indices)
    with pytest.raises(ValueError, match="mode must be"):
        Floor(model, ["3"], "gradcam", mode="vmap")


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

    times = interleave([runner("A", 1.0, 50), runner("B", 2.0, 50), runner("C", 3.0, 50)], reps=3, warmup=2, clock=clock)
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


def test_ratio_medians_are_same_round_ratios():
    # round 2 is slow for everyone (load): same-round ratios ignore it, ratios of medians do not
    times = {"bare": [1.0, 4.0, 1.0, 1.2, 0.9], "x": [2.0, 8.0, 2.0, 2.4, 1.8]}
    r = ratio_medians(times, "bare")
    assert r["bare"] == 1.0
    assert r["x"] == pytest.approx(2.0)
    times = {"bare": [1.0, 1.0, 3.0], "x": [3.0, 1.0, 3.0]}  # per-round 3, 1, 1 -> median 1
    assert ratio_medians(times, "bare")["x"] == pytest.approx(1.0)


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


# --------------------------------------------------------------------------- core speed options (camkit/methods.py, hooks.py)


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
