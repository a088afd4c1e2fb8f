"""The perturbation benchmark's floors (benchmarks/perturbation.py: the least work for Score-CAM, SS-CAM,
IS-CAM and Ablation-CAM, written out in plain torch) give camkit's maps, so a ratio to a floor compares the
same work. ResNet18 16 times narrower (tests/small_models.py) with drawn BatchNorm statistics, float64,
layer4 (2 x 2 at 48 px, 32 channels), two images (SS-CAM and IS-CAM: one), two targets each."""
from __future__ import annotations

import pytest
import torch
from small_models import narrow_resnet18
from torch import nn

import camkit.methods as cm
from benchmarks.perturbation import ABOVE, Clock, ablation_floor, score_floor


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = narrow_resnet18(num_classes=5, divisor=16).double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # a fresh BatchNorm is the identity: folding it would be no test
                m.weight.copy_(1 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
                m.running_mean.copy_(0.1 * torch.randn_like(m.running_mean))
                m.running_var.copy_(1 + 0.2 * torch.rand_like(m.running_var))
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        t = model(x).topk(2, dim=1).indices
    return model, x, t


@pytest.mark.parametrize("method, cls, options", [
    ("Score-CAM", cm.ScoreCAM, {}),
    ("SS-CAM", cm.SSCAM, {"num_samples": 2, "std": 0.5, "seed": 3}),
    ("IS-CAM", cm.ISCAM, {"num_samples": 2}),
])
def test_the_score_floors_give_camkits_maps(setup, method, cls, options):
    model, x, t = setup
    if options:  # a forward per sample and channel: one image
        x, t = x[1:], t[1:]
    ours = cls(model, layers=["layer4"], batch_size=5, **options)(x, targets=t).maps  # 32 channels: 5 a chunk
    clock = Clock()
    floor = score_floor(model, "layer4", x, t, method, batch_size=5, samples=options.get("num_samples", 1),
                        std=options.get("std", 2.0), seed=options.get("seed", 0), clock=clock)
    assert ours.shape == floor.shape == (len(x), 2, 48, 48)
    assert (ours.amax((2, 3)) == 1).all()  # maps with something in them: the comparison is not of zeros
    torch.testing.assert_close(ours, floor, rtol=0, atol=1e-9)
    assert clock.parts["forwards (masked inputs)"] > 0 and "masks: normalize, dedupe, upsample, normalize" in clock.parts


def test_the_ablation_floor_gives_camkits_maps(setup):
    model, x, t = setup
    ours = cm.AblationCAM(model, layers=["layer4"], batch_size=5)(x, targets=t).maps
    floor = ablation_floor(model, "layer4", ABOVE["resnet18"], x, t, batch_size=5)
    assert (ours.amax((2, 3)) == 1).all()
    torch.testing.assert_close(ours, floor, rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", ["SS-CAM", "Ablation-CAM"])
def test_the_profile_times_the_parts_and_puts_camkit_back(method):
    """benchmarks/perturbation.py's camkit_profile wraps camkit's functions for one call: its parts are
    timed, and the functions are camkit's own again afterwards (the next runner must time camkit)."""
    import camkit.methods.perturbation as cp
    from benchmarks.peers import tiny_net
    from benchmarks.perturbation import camkit_profile
    from camkit.methods.base import _Method

    owners = [cp, cp.ScoreCAM, cp.SSCAM, cp.ISCAM, cp.AblationCAM, _Method]
    before = [dict(vars(o)) for o in owners]
    torch.manual_seed(0)
    model = tiny_net().eval()
    x = torch.randn(1, 3, 16, 16)
    parts = camkit_profile(method, model, "layer3", x, torch.tensor([[1, 4]]), samples=2)
    forwards = "forwards (layers above, on the copies)" if method == "Ablation-CAM" else "forwards (masked inputs)"
    assert parts[forwards] > 0 and parts["forward (one, for A)"] > 0
    assert parts["total"] >= sum(v for k, v in parts.items() if k not in ("total", "the rest")) > 0
    assert [dict(vars(o)) for o in owners] == before
