"""camkit.evaluation against its peers on the same model, inputs, maps and seeds: Quantus 0.6 (MPRT,
random logit, faithfulness correlation, pixel flipping, complexity metrics), captum (infidelity,
sensitivity_max), pytorch-grad-cam (noisy linear imputation, ROAD), scipy / scikit-image (Spearman, SSIM,
HOG); where a peer's definition differs (monotonicity, region perturbation, local Lipschitz) the paper's
formula is written out here. Tiny models (one input channel where Quantus perturbs input elements, so an
element is a pixel) and few perturbation steps keep the file under a second or two."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from model_state import assert_as_found, mixed, snapshot
from pytorch_grad_cam.metrics import road as gc_road
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import camkit
from camkit.errors import InputError
from camkit.evaluation import (
    RunningMetrics,
    arcc,
    complexity,
    effective_complexity,
    faithfulness,
    faithfulness_correlation,
    hog_similarity,
    infidelity,
    irof,
    local_lipschitz,
    model_randomization,
    monotonicity,
    noisy_linear_imputation,
    pixel_flipping,
    random_logit,
    randomizable_layers,
    region_perturbation,
    road,
    sensitivity,
    shuffled_labels,
    slic_segments,
    sparseness,
    spearman_similarity,
    ssim,
    sufficiency,
)
from camkit.evaluation.sanity import method_explainer


@pytest.fixture(scope="module")
def quantus():
    """Imported by the tests that use it (not at collection: every test process collects this file)."""
    warnings.filterwarnings("ignore", module="quantus")
    return pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def captum_metrics():
    return pytest.importorskip("captum.metrics")


def tiny(channels: int = 1, size: int = 8, classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * size * size, classes)).eval()


def saliency(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """|d logit_t / d x| summed over channels, by plain autograd: (B, H, W)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(x).gather(1, t.reshape(-1, 1).long()).sum()
        (g,) = torch.autograd.grad(out, x)
    return g.abs().sum(1)


def q_explain(model, inputs, targets, **kw):
    return saliency(model, torch.as_tensor(inputs).float(), torch.as_tensor(targets))[:, None].numpy()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, generator=g)
    t = torch.tensor([0, 3, 1])
    model = tiny()
    return model, x, t, saliency(model, x, t)


# --------------------------------------------------------------------------- similarity


def test_similarities_equal_scipy_and_scikit_image():
    from scipy.stats import spearmanr
    from skimage.feature import hog
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 16, 16, generator=g, dtype=torch.float64)
    b = (a + 0.5 * torch.rand(3, 16, 16, generator=g, dtype=torch.float64)).mul(4).round()  # ties
    sp, ss = spearman_similarity(a, b), ssim(a, b, data_range=1.0)
    hg = hog_similarity(a, b, pixels_per_cell=(4, 4), cells_per_block=(2, 2))
    for i in range(3):
        assert sp[i] == pytest.approx(spearmanr(a[i].flatten(), b[i].flatten())[0], abs=1e-12)
        assert ss[i] == pytest.approx(structural_similarity(a[i].numpy(), b[i].numpy(), data_range=1.0), abs=1e-10)
        ha, hb = (hog(m.numpy(), pixels_per_cell=(4, 4), cells_per_block=(2, 2)) for m in (a[i], b[i]))
        assert hg[i] == pytest.approx(np.corrcoef(ha, hb)[0, 1], abs=1e-10)
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64))
    with pytest.raises(InputError, match="same shape"):
        ssim(a, b[:2])


# --------------------------------------------------------------------------- sanity


def quantus_reset(module: nn.Module, gen: torch.Generator) -> None:
    """Quantus's re-draw of one layer (PyTorchModel.get_random_layer_generator, seed 42): the global RNG seeded
    with 43, then the module's reset_parameters; here inside fork_rng so the test leaves the RNG as found."""
    with torch.random.fork_rng():
        torch.manual_seed(43)
        module.reset_parameters()


def tiny_bn() -> nn.Module:
    """A conv, BatchNorm (trained statistics: Quantus's reset_parameters resets them too), ReLU, linear net."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 5))
    net.train()(torch.randn(8, 1, 8, 8))
    return net.eval()


@pytest.mark.parametrize("order", ["cascading", "independent"])
def test_model_randomization_equals_quantus_mprt(data, order, quantus):
    _, x, t, _ = data
    model = tiny_bn()
    layers = [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")][::-1]
    explain = lambda m, xx, tt: saliency(m, xx, tt)  # noqa: E731
    ours = model_randomization(model, explain, x, t, order=order, layers=layers, similarity="spearman",
                               randomize=quantus_reset)
    metric = quantus.MPRT(similarity_func=quantus.similarity_func.correlation_spearman, abs=False, normalise=False,
                          layer_order="top_down" if order == "cascading" else "independent", seed=42,
                          disable_warnings=True)
    with torch.random.fork_rng():
        theirs = metric(model=tiny_bn(), x_batch=x.numpy(), y_batch=t.numpy(), a_batch=None, explain_func=q_explain,
                        device="cpu")
    theirs = metric.evaluation_scores if not isinstance(theirs, dict) else theirs
    # Quantus's independent order walks the layers input side first; the scores are per layer either way
    assert ours["layers"] == ["4", "1", "0"]
    for i, name in enumerate(ours["layers"]):
        assert np.allclose(ours["spearman"][i].numpy(), theirs[name], atol=1e-6), name
    assert ours["copy_bytes"] >= sum(p.numel() * 4 for p in model.parameters()) + 2 * 4 * 4


def test_model_randomization_leaves_the_model_and_rng_as_found():
    model = mixed(tiny(), "1")
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    before = snapshot(model)
    params = [p.detach().clone() for p in model.parameters()]
    out = model_randomization(model, lambda m, xx, tt: saliency(m, xx, tt), x, t, keep_maps=True, seed=3,
                              similarity=("spearman", "ssim"))
    assert_as_found(model, before)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert torch.equal(torch.get_rng_state(), before["rng"])
    assert out["layers"] == ["5", "2", "0"] and out["ssim"].shape == (3, 2) and out["maps"].shape == (3, 2, 8, 8)
    # cascading to the input: the map no longer ranks pixels as the trained model's did
    again = model_randomization(model, lambda m, xx, tt: saliency(m, xx, tt), x, t, seed=3, similarity="spearman")
    assert torch.equal(again["spearman"], out["spearman"])  # same seed, same result
    with pytest.raises(InputError, match="cannot randomize"):
        model_randomization(model, saliency, x, t, layers=["nope"])
    with pytest.raises(InputError, match="no parameters"):
        model_randomization(nn.Sequential(nn.ReLU()), saliency, x, t)
    with pytest.raises(InputError, match="order"):
        model_randomization(model, saliency, x, t, order="bottom_up")


def test_model_randomization_with_a_camkit_method():
    model = tiny(3, 16)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 4])
    out = model_randomization(model, method_explainer(camkit.GradCAM, "2"), x, t, similarity=("spearman", "ssim"))
    assert randomizable_layers(model) == ["0", "2", "5"] and out["spearman"].shape == (3, 2)
    assert torch.isfinite(out["ssim"]).all()


def test_random_logit_equals_quantus(data, quantus):
    model, x, t, a = data
    np.random.seed(7)  # Quantus's draw of the off classes, written out
    draw = np.random.randint(0, 4, 3)
    off = torch.tensor([[c for c in range(5) if c != int(t[i])][draw[i]] for i in range(3)])
    ours = random_logit(model, lambda m, xx, tt: saliency(m, xx, tt), x, t, 5, similarity="spearman",
                        off_targets=off)
    metric = quantus.RandomLogit(num_classes=5, similarity_func=quantus.similarity_func.correlation_spearman,
                                 abs=False, normalise=False, seed=7, disable_warnings=True)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=a[:, None].numpy(),
                    explain_func=q_explain, device="cpu")
    assert np.allclose(ours["similarity"].numpy(), theirs, atol=1e-6)
    drawn = random_logit(model, lambda m, xx, tt: saliency(m, xx, tt), x, t, 5)["off_targets"]
    assert (drawn != t).all() and ((drawn >= 0) & (drawn < 5)).all()
    y = torch.arange(10) % 3
    assert sorted(shuffled_labels(y, 1).tolist()) == sorted(y.tolist())


# --------------------------------------------------------------------------- ROAD


@pytest.mark.parametrize("group_pixels", [None, 120, 240])
def test_noisy_linear_imputation_equals_pytorch_grad_cam(group_pixels, monkeypatch):
    """Also with the CPU solve in groups of 1 and 2 of the 6 systems (camkit's cache-sized groups)."""
    if group_pixels is not None:
        monkeypatch.setattr(faithfulness, "CPU_SOLVE_ELEMENTS", group_pixels)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 12, 10, generator=g)
    removed = torch.rand(2, 12, 10, generator=g) < 0.6
    ours = noisy_linear_imputation(x, removed, noise=0.0, tol=1e-7)
    for i in range(2):
        theirs = gc_road.NoisyLinearImputer(noise=0.0)(x[i], (~removed[i]).float())
        assert torch.allclose(ours[i], theirs, atol=1e-5)
    assert (noisy_linear_imputation(x, removed, noise=0.0) - ours).abs().max() < 1e-3  # the default tolerance
    noisy = noisy_linear_imputation(x, removed, noise=0.01, seed=4)
    assert torch.equal(noisy, noisy_linear_imputation(x, removed, noise=0.01, seed=4))
    assert torch.equal(noisy[~removed[:, None].expand_as(x)], x[~removed[:, None].expand_as(x)])
    assert 0.005 < (noisy - ours)[removed[:, None].expand_as(x)].std() < 0.015


def test_road_equals_pytorch_grad_cam(monkeypatch):
    """pytorch-grad-cam's percentile q keeps the pixels below the map's q-th percentile: camkit's 100 - q % removed
    (8 x 8 maps of distinct values at q = 25, 50, 75 remove exactly 48, 32, 16 pixels there too)."""
    model = tiny(3)
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([2, 0])
    cams = torch.rand(2, 8, 8, generator=g)
    ours = road(model, x, cams, t, percentiles=(25, 50, 75), noise=0.0, tol=1e-7)
    targets = [ClassifierOutputTarget(int(c)) for c in t]
    for j, q in enumerate((75, 50, 25)):
        for key, cls in (("morf", gc_road.RemoveMostRelevantFirst), ("lerf", gc_road.RemoveLeastRelevantFirst)):
            metric = gc_road.PerturbationConfidenceMetric(cls(q, gc_road.NoisyLinearImputer(noise=0.0)))
            theirs = metric(x, cams.numpy(), targets, model, return_diff=False)
            assert np.allclose(ours[key][:, j].numpy(), theirs, atol=1e-4), (key, q)
    monkeypatch.setattr(gc_road.NoisyLinearImputer.__init__, "__defaults__", (0.0, gc_road.neighbors_weights))
    combined = gc_road.ROADCombined(percentiles=[25, 50, 75])(x, cams.numpy(), targets, model)
    assert np.allclose(ours["combined"].numpy(), combined, atol=1e-4)
    with pytest.raises(InputError, match="strictly between 0 and 100"):
        road(model, x, cams, t, percentiles=(0, 50))
    with pytest.raises(InputError, match="NaN"):
        road(model, x, torch.full((2, 8, 8), float("nan")), t)
    with pytest.raises(InputError, match="upsample"):
        road(model, x, cams[:, :4], t)


# --------------------------------------------------------------------------- faithfulness


def test_faithfulness_correlation_equals_quantus(data, monkeypatch, quantus):
    model, x, t, a = data
    metric = quantus.FaithfulnessCorrelation(nr_runs=6, subset_size=16, perturb_baseline="black", abs=False,
                                             normalise=False, return_aggregate=False, disable_warnings=True)
    drawn, choice = [], np.random.choice

    def record(*args, **kw):  # the subsets Quantus draws (np.random.choice, image by image, run by run)
        drawn.append(choice(*args, **kw))
        return drawn[-1]

    monkeypatch.setattr(np.random, "choice", record)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=a[:, None].numpy(), device="cpu",
                    softmax=False)
    subsets = torch.from_numpy(np.stack(drawn).reshape(6, 3, 16).transpose(1, 0, 2).copy())
    ours = faithfulness_correlation(model, x, a, t, subsets=subsets, baseline=x.amin((1, 2, 3), keepdim=True))
    assert np.allclose(ours["correlation"].numpy(), theirs, atol=1e-5)
    drawn = faithfulness_correlation(model, x, a, t, subset_size=16, runs=4, seed=1)
    assert drawn["subsets"].shape == (3, 4, 16) and torch.equal(
        drawn["correlation"], faithfulness_correlation(model, x, a, t, subset_size=16, runs=4, seed=1)["correlation"])


def test_pixel_flipping_equals_quantus(data, quantus):
    model, x, t, a = data
    ours = pixel_flipping(model, x, a, t, features_in_step=8, baseline=x.amin((1, 2, 3), keepdim=True))
    metric = quantus.PixelFlipping(features_in_step=8, perturb_baseline="black", abs=False, normalise=False,
                                   disable_warnings=True)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=a[:, None].numpy(), device="cpu",
                    softmax=False)
    assert ours.shape == (3, 8) and np.allclose(ours.numpy(), np.asarray(theirs), atol=1e-5)


def test_region_perturbation_and_monotonicity_follow_the_papers(data):
    model, x, t, a = data
    logit = lambda z: model(z).gather(1, t[:, None])[:, 0].double()  # noqa: E731
    with torch.no_grad():
        patches = a.reshape(3, 2, 4, 2, 4).sum((2, 4)).reshape(3, 4)  # 4 x 4 patches of the 8 x 8 map
        curve, z = [], x.clone()
        order = patches.argsort(1, descending=True)
        for k in range(4):
            for b in range(3):
                r, c = divmod(int(order[b, k]), 2)
                z[b, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = 0
            curve.append(logit(z))
        assert torch.allclose(region_perturbation(model, x, a, t, patch_size=4), torch.stack(curve, 1), atol=1e-6)
        flat, z, curve = a.flatten(1), torch.zeros_like(x), []
        for k in range(8):  # reveal the image on a zero baseline, least relevant 8 pixels first
            idx = flat.argsort(1)[:, 8 * k:8 * k + 8]
            for b in range(3):
                z[b].view(1, -1)[:, idx[b]] = x[b].view(1, -1)[:, idx[b]]
            curve.append(logit(z))
    ours = monotonicity(model, x, a, t, features_in_step=8)
    ref = torch.stack(curve, 1)
    assert torch.allclose(ours["curve"], ref, atol=1e-6)
    assert torch.equal(ours["monotonic"], (ref.diff(dim=1) >= 0).all(1))


def test_infidelity_equals_captum(data, captum_metrics):
    model, x, t, a = data
    g = torch.Generator().manual_seed(6)
    noise = 0.05 * torch.randn(3, 4, 1, 8, 8, generator=g)
    stream = noise.flatten(0, 1)  # captum repeats each image n_perturb_samples times in a row

    def perturb(inputs):
        return stream, inputs - stream

    for normalize in (False, True):
        ours = infidelity(model, x, a, t, perturbations=noise, normalize=normalize)
        theirs = captum_metrics.infidelity(model, perturb, x, a[:, None], target=t, n_perturb_samples=4,
                                           normalize=normalize)
        assert torch.allclose(ours, theirs.double(), rtol=1e-4, atol=1e-9), normalize
    assert torch.equal(infidelity(model, x, a, t, seed=2), infidelity(model, x, a, t, seed=2))


# --------------------------------------------------------------------------- robustness


def test_sensitivity_equals_captum_and_lipschitz_its_formula(data, captum_metrics):
    model, x, t, a = data
    g = torch.Generator().manual_seed(8)
    d = (torch.rand(3, 5, 1, 8, 8, generator=g) * 2 - 1) * 0.1
    explain = lambda m, xx, tt: saliency(m, xx, tt)  # noqa: E731
    ours = sensitivity(model, explain, x, t, perturbations=d)

    def expl(inputs, target):
        return (saliency(model, inputs[0] if isinstance(inputs, tuple) else inputs, target)[:, None],)

    theirs = captum_metrics.sensitivity_max(expl, x, perturb_func=lambda inputs, radius: inputs + d.flatten(0, 1),
                                            n_perturb_samples=5, target=t)
    assert torch.allclose(ours["max"], theirs.double(), atol=1e-6)
    ap = saliency(model, (x[:, None] + d).flatten(0, 1), t.repeat_interleave(5)).view(3, 5, -1).double()
    ratio = (ap - a.flatten(1)[:, None].double()).norm(dim=2) / a.flatten(1).double().norm(dim=1)[:, None]
    assert torch.allclose(ours["avg"], ratio.mean(1))
    lip = local_lipschitz(model, explain, x, t, perturbations=d)
    ref = ((ap - a.flatten(1)[:, None].double()).norm(dim=2) / d.flatten(2).double().norm(dim=2)).amax(1)
    assert torch.allclose(lip, ref)


# --------------------------------------------------------------------------- complexity, aggregation


def test_complexity_metrics_equal_quantus(data, quantus):
    model, x, t, a = data
    a = a.clone()
    a[0, :2] = 0  # zeros count for effective complexity
    kw = dict(model=model, x_batch=x.numpy(), y_batch=t.numpy(), device="cpu")
    for ours, metric, tol in ((sparseness(a), quantus.Sparseness, 1e-5), (complexity(a), quantus.Complexity, 1e-9)):
        theirs = metric(abs=True, normalise=False, disable_warnings=True)(a_batch=a[:, None].numpy().copy(), **kw)
        assert np.allclose(ours.numpy(), theirs, atol=tol), metric.__name__
    theirs = quantus.EffectiveComplexity(eps=1e-3, abs=True, normalise=False, disable_warnings=True)(
        a_batch=a[:, None].numpy().copy(), **kw)
    assert effective_complexity(a, eps=1e-3).tolist() == list(theirs)
    assert sparseness(torch.zeros(1, 4, 4)).item() == 0 and complexity(torch.ones(1, 4, 4)).item() == pytest.approx(
        np.log(16))


def test_running_metrics():
    agg = RunningMetrics()
    batches = [torch.tensor([0.5, float("nan"), 1.0]), torch.tensor([2.0])]
    for b in batches:
        agg.update(road=b, hit=b > 0.7)
    assert agg.summary()["road"] == pytest.approx(3.5 / 3) and agg.summary()["hit"] == pytest.approx(0.5)
    assert agg.counts()["road"] == {"values": 3, "nan": 1}
    agg.reset()
    assert agg.summary() == {}
    with pytest.raises(InputError, match="infinite"):
        agg.update(x=torch.tensor([float("inf")]))


def test_irof_equals_quantus(data, monkeypatch, quantus):
    """Quantus 0.6's IROF calls np.trapz, which numpy 2.4 no longer has: np.trapezoid under its old name."""
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    model, x, t, a = data
    segments = slic_segments(x)
    ours = irof(model, x, a, t, segments, baseline="zeros")
    metric = quantus.IROF(perturb_baseline=0.0, abs=False, normalise=False, return_aggregate=False,
                          disable_warnings=True)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=a[:, None].numpy(), device="cpu",
                    softmax=True)
    assert np.allclose(ours["aoc"].numpy(), theirs, atol=1e-5)
    with pytest.raises(InputError, match="segments"):
        irof(model, x, a, t, segments.float())


def test_sufficiency_equals_quantus(quantus):
    model = tiny()
    g = torch.Generator().manual_seed(9)
    x, maps = torch.randn(6, 1, 8, 8, generator=g), torch.rand(6, 8, 8, generator=g)
    maps[3] = maps[0] + 0.01 * maps[5]  # a near pair
    for threshold in (0.3, 0.9):
        ours = sufficiency(model, x, maps, threshold=threshold)
        metric = quantus.Sufficiency(threshold=threshold, abs=False, normalise=False, return_aggregate=False,
                                     disable_warnings=True)
        theirs = metric(model=model, x_batch=x.numpy(), y_batch=np.zeros(6, dtype=int),
                        a_batch=maps[:, None].numpy(), device="cpu")
        assert np.allclose(ours.numpy(), theirs, atol=1e-9), threshold


def test_arcc_equals_pytorch_grad_cam(monkeypatch):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.metrics.arcc import ARCC

    """pytorch-grad-cam's ROAD removes every pixel tied at its percentile: maps of distinct values (the Grad-CAM
    maps plus a little noise), on 10 x 10 images where its percentiles 20..80 remove 80, 60, 40, 20 pixels."""
    model = tiny(3, 10)
    g = torch.Generator().manual_seed(10)
    x, t = torch.randn(2, 3, 10, 10, generator=g), torch.tensor([1, 4])
    cam = GradCAM(model, target_layers=[model[2]])
    targets = [ClassifierOutputTarget(int(c)) for c in t]
    cams = cam(input_tensor=x, targets=targets)
    cams = np.clip(cams + 0.05 * torch.rand(2, 10, 10, generator=g).numpy(), 0, 1).astype(np.float32)

    def explain(m, xx, tt):
        return torch.from_numpy(cam(input_tensor=xx, targets=[ClassifierOutputTarget(int(c)) for c in tt]))

    monkeypatch.setattr(gc_road.NoisyLinearImputer.__init__, "__defaults__", (0.0, gc_road.neighbors_weights))
    theirs = ARCC(base_method=cam)(x, cams, targets, model)
    ours = arcc(model, explain, x, torch.from_numpy(cams), t, noise=0.0, tol=1e-7)
    assert np.allclose(ours["arcc"].numpy(), theirs, atol=1e-4)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        arcc(model, explain, x, torch.from_numpy(cams) * 2, t)


def test_the_benchmark_runs(tmp_path):
    """benchmarks/evaluation.py end to end without peers, in a second: its table and JSON come out."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.evaluation import main

    md, js = main(["--arch", "tiny", "--size", "24", "--batch", "1", "--rounds", "1", "--no-peers", "--no-memory", "--runs", "2",
                   "--subset", "8", "--steps", "3", "--samples", "2", "--layers", "1", "--chunk", "8",
                   "--metric", "pixel_flipping", "road", "mprt", "--out", str(tmp_path / "e.md")])
    text = md.read_text()
    assert "| road | camkit |" in text and "| mprt | camkit |" in text and js.exists()


# --------------------------------------------------------------------------- camkit evaluate


@pytest.fixture
def small_cli_model(monkeypatch):
    """`camkit evaluate` builds a narrow ResNet18 at 32 px (5 classes) whatever --model says."""
    import dataclasses

    from small_models import narrow_resnet18
    from torchvision import transforms as T

    import camkit.adapters
    from camkit.adapters import resolve

    torch.manual_seed(0)
    model = narrow_resnet18(num_classes=5).eval()
    tf = T.Compose([T.Resize(36), T.CenterCrop(32), T.ToTensor()])
    preset = dataclasses.replace(resolve(model), transform=tf, input_size=(32, 32), categories=tuple("abcde"))
    monkeypatch.setattr(camkit.adapters, "build", lambda name, weights: (model, preset))
    return model, tf


def test_evaluate_command_end_to_end(small_cli_model, tmp_path, capsys):
    import json

    from PIL import Image

    from camkit import cli

    model, tf = small_cli_model
    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        p = tmp_path / f"img{k}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    out = tmp_path / "out"
    rc = cli.main(["evaluate", *paths, "--method", "layercam", "--metric", "sanity", "road", "sparseness",
                   "--percentiles", "20", "80", "--randomize-layers", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((out / "evaluation.json").read_text())
    assert [r["image"] for r in data["per_image"]] == paths
    # the per-image values are the library's on the same images, maps and seed
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    t = model(x).argmax(1)
    maps = camkit.LayerCAM(model, ["layer2", "layer3", "layer4"])(x, t).maps[:, 0]
    assert (maps.flatten(1).amax(1) > 0).all()
    ref = road(model, x, maps, t, (20, 80))["combined"]
    assert np.allclose([r["road"] for r in data["per_image"]], ref.numpy(), atol=1e-6)
    assert np.allclose([r["sparseness"] for r in data["per_image"]], sparseness(maps).numpy(), atol=1e-9)
    assert "| layercam | 2 |" in (out / "evaluation.md").read_text()
    assert (out / "road.png").is_file() and (out / "sanity_spearman.png").is_file()
    rc = cli.main(["evaluate", *paths, "--percentiles", "0", "50", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "camkit: error: percentiles must be numbers strictly between 0 and 100" in err
