"""camkit.metrics on constructed cases with known answers, against reference
computations written here independently (numpy loops, explicit slicing)."""
import math
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from model_state import assert_as_found, mixed, snapshot
from torch import nn

from camkit import metrics as M
from camkit.errors import InputError
from camkit.hooks import model_lock

H = W = 8


class Linear2(nn.Module):
    """Two-class toy model: logit_0 = 0, logit_1 = sum(w * x). So the class-1
    probability is sigmoid(sum(w * x)), increasing in every pixel's contribution."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float64), requires_grad=False)
        self.drop = nn.Dropout(0.5)  # must be inactive during the metrics (eval mode)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        s = self.drop((x * self.w).flatten(1)).sum(1)
        return torch.stack([torch.zeros_like(s), s], dim=1)


def toy(seed=0, B=3, C=2):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(C, H, W, generator=g, dtype=torch.float64) * 0.05
    x = torch.rand(B, C, H, W, generator=g, dtype=torch.float64)
    return Linear2(w), x


def contribution(model, x, base):
    """Each pixel's contribution to the class-1 logit relative to the baseline: (B, H, W)."""
    return ((x - base) * model.w).sum(1)


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def ref_curve(w, x, base, m, steps, mode):
    """Independent reference: numpy stable argsort of -map, loop over steps."""
    w, x, base, m = (np.asarray(a, dtype=np.float64) for a in (w, x, base, m))
    hw = m.size
    order = np.argsort(-m.ravel(), kind="stable")
    out = []
    for k in range(steps + 1):
        n = (k * hw) // steps
        changed = np.zeros(hw, dtype=bool)
        changed[order[:n]] = True
        changed = changed.reshape(m.shape)[None]
        if mode == "deletion":
            img = np.where(changed, base, x)
        else:
            img = np.where(changed, x, base)
        out.append(sigmoid((img * w).sum()))
    return np.array(out)


# --------------------------------------------------------------------------- ranks, auc


def test_pixel_ranks_is_a_permutation_and_breaks_ties_in_raster_order():
    m = torch.tensor([[0.5, 1.0, 0.5], [1.0, 0.0, 0.5]])
    r = M.pixel_ranks(m)
    # decreasing value; equal values in raster order: 1.0 at (0,1) then (1,0); 0.5 at (0,0),(0,2),(1,2); then 0
    assert r.tolist() == [[2, 0, 3], [1, 5, 4]]
    assert torch.equal(M.pixel_ranks(torch.zeros(2, 3)), torch.arange(6).view(2, 3))
    g = torch.Generator().manual_seed(0)
    big = torch.randint(0, 4, (5, 7, 9), generator=g).float()
    rr = M.pixel_ranks(big).flatten(1)
    assert torch.equal(rr.sort(1).values, torch.arange(63).expand(5, -1))
    ref = np.stack([np.argsort(np.argsort(-b.ravel(), kind="stable"), kind="stable") for b in big.numpy()])
    assert np.array_equal(rr.numpy(), ref)


def test_step_counts():
    assert M.step_counts(64, 4).tolist() == [0, 16, 32, 48, 64]
    assert M.step_counts(10, 3).tolist() == [0, 3, 6, 10]
    with pytest.raises(ValueError, match="steps must be a positive int"):
        M.step_counts(10, 0)


def test_auc_known_values():
    assert float(M.auc(torch.linspace(0, 1, 11))) == pytest.approx(0.5)
    assert float(M.auc(torch.full((5,), 0.3))) == pytest.approx(0.3)
    assert float(M.auc(torch.tensor([1.0, 0.0]))) == pytest.approx(0.5)
    c = torch.tensor([[1.0, 0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert M.auc(c).tolist() == pytest.approx([(0.75 + 0.375 + 0.125) / 3, 0.5 / 3])
    with pytest.raises(ValueError):
        M.auc(torch.tensor([1.0]))


# --------------------------------------------------------------------------- deletion / insertion


@pytest.mark.parametrize("baseline", ["zeros", "mean", "blur"])
def test_curves_match_reference_loop(baseline):
    model, x = toy(1)
    g = torch.Generator().manual_seed(2)
    maps = torch.randint(0, 5, (3, H, W), generator=g).double()  # many ties
    base = M.make_baseline(x, baseline, blur_kernel=3, blur_sigma=1.0)
    out = M.deletion_insertion(model, x, maps, [1, 1, 1], steps=5, baseline=baseline, batch_size=4,
                               blur_kernel=3, blur_sigma=1.0)
    for mode in ("deletion", "insertion"):
        assert out[mode].shape == (3, 6)
        for b in range(3):
            ref = ref_curve(model.w, x[b], base[b], maps[b], 5, mode)
            np.testing.assert_allclose(out[mode][b].numpy(), ref, rtol=1e-12)


def test_end_points_are_image_and_baseline():
    model, x = toy(3)
    maps = torch.rand(3, H, W, dtype=torch.float64)
    out = M.deletion_insertion(model, x, maps, [1, 1, 1], steps=4, baseline="zeros")
    p_img = torch.sigmoid((x * model.w).flatten(1).sum(1))
    p_zero = torch.full((3,), 0.5, dtype=torch.float64)
    assert torch.allclose(out["deletion"][:, 0], p_img) and torch.allclose(out["insertion"][:, -1], p_img)
    assert torch.allclose(out["deletion"][:, -1], p_zero) and torch.allclose(out["insertion"][:, 0], p_zero)


def test_several_maps_per_image_and_batch_size_do_not_change_results():
    model, x = toy(4)
    maps = torch.rand(3, 4, H, W, dtype=torch.float64)
    t = torch.tensor([1, 0, 1])
    both = M.deletion_insertion(model, x, maps, t, steps=6, baseline="mean", batch_size=5)
    assert both["deletion"].shape == (3, 4, 7)
    for j in range(4):
        one = M.deletion_insertion(model, x, maps[:, j], t, steps=6, baseline="mean", batch_size=1000)
        for mode in one:
            assert torch.allclose(both[mode][:, j], one[mode], atol=1e-6)
    d = M.deletion_curve(model, x, maps[:, 2], t, steps=6, baseline="mean", batch_size=2)
    i = M.insertion_curve(model, x, maps[:, 2], t, steps=6, baseline="mean", batch_size=3)
    assert torch.allclose(d, both["deletion"][:, 2], atol=1e-6) and torch.allclose(i, both["insertion"][:, 2], atol=1e-6)


def test_model_calls_are_batched():
    model, x = toy(5)
    maps = torch.rand(3, 2, H, W, dtype=torch.float64)
    M.deletion_insertion(model, x, maps, [1, 1, 1], steps=8, baseline="zeros", batch_size=1000)
    # 1 call for the 6 end points + 1 call for 3 images x 2 maps x 2 modes x 7 interior steps
    assert model.calls == 2


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(2, 12))
def test_perfect_ordering_gives_the_best_deletion_and_insertion(seed, steps):
    """On a linear model the map ordering pixels by their contribution removes
    (reveals) the most logit at every step: no ordering beats it."""
    model, x = toy(seed % 7, B=2)
    base = M.make_baseline(x, "zeros")
    perfect = contribution(model, x, base)
    g = torch.Generator().manual_seed(seed)
    rand = torch.rand(2, 5, H, W, generator=g, dtype=torch.float64)
    maps = torch.cat([perfect[:, None], rand, -perfect[:, None]], dim=1)  # best, 5 random, worst
    out = M.deletion_insertion(model, x, maps, [1, 1], steps=steps, baseline="zeros")
    d, i = M.auc(out["deletion"]), M.auc(out["insertion"])
    assert (d[:, :1] <= d[:, 1:] + 1e-7).all()
    assert (i[:, :1] >= i[:, 1:] - 1e-7).all()
    # pointwise too: the perfect curve lies below (deletion) / above (insertion) every other
    assert (out["deletion"][:, :1] <= out["deletion"][:, 1:] + 1e-6).all()
    assert (out["insertion"][:, :1] >= out["insertion"][:, 1:] - 1e-6).all()
    # and the reversed order is the worst
    assert (d[:, -1:] >= d[:, :-1] - 1e-7).all() and (i[:, -1:] <= i[:, :-1] + 1e-7).all()


def test_logit_score_is_linear_on_a_linear_model():
    model, x = toy(6)
    maps = torch.rand(3, H, W, dtype=torch.float64)
    d = M.deletion_curve(model, x, maps, [1, 1, 1], steps=4, baseline="zeros", score="logit")
    assert torch.allclose(d[:, 0], (x * model.w).flatten(1).sum(1))
    assert torch.allclose(d[:, -1], torch.zeros(3, dtype=torch.float64))


def test_model_mode_restored_and_dropout_off():
    model, x = toy(7)
    model.train()
    maps = torch.rand(3, H, W, dtype=torch.float64)
    a = M.deletion_curve(model, x, maps, [1, 1, 1], steps=3, baseline="zeros")
    b = M.deletion_curve(model, x, maps, [1, 1, 1], steps=3, baseline="zeros")
    assert torch.equal(a, b)
    assert model.training and model.drop.training


def test_baselines():
    x = torch.rand(2, 3, H, W)
    assert torch.equal(M.make_baseline(x, "zeros"), torch.zeros_like(x))
    mb = M.make_baseline(x, "mean")
    assert torch.allclose(mb, x.mean((2, 3), keepdim=True).expand_as(x))
    const = torch.full((1, 3, H, W), 0.7)
    assert torch.allclose(M.make_baseline(const, "blur"), const)
    bl = M.make_baseline(x, "blur", blur_kernel=5, blur_sigma=2.0)
    assert bl.shape == x.shape and bl.std() < x.std()  # smoother
    assert torch.equal(M.make_baseline(x, torch.tensor([1.0, 2.0, 3.0])[:, None, None])[1, 2], torch.full((H, W), 3.0))
    assert torch.equal(M.make_baseline(x, lambda im: im * 0 + 1), torch.ones_like(x))
    with pytest.raises(ValueError, match="unknown baseline 'gray'"):
        M.make_baseline(x, "gray")
    with pytest.raises(ValueError, match="does not broadcast"):
        M.make_baseline(x, torch.zeros(5, 3, H, W))


def test_curve_input_errors():
    model, x = toy(8)
    with pytest.raises(ValueError, match="upsample the maps"):
        M.deletion_curve(model, x, torch.rand(3, 4, 4), [1, 1, 1])
    with pytest.raises(ValueError, match=r"targets must have shape \(3,\)"):
        M.deletion_curve(model, x, torch.rand(3, H, W), [1, 1])
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 1\]"):
        M.deletion_curve(model, x, torch.rand(3, H, W), [1, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        M.deletion_curve(model, x, torch.full((3, H, W), float("nan")), [1, 1, 1])
    with pytest.raises(ValueError, match="modes"):
        M.deletion_insertion(model, x, torch.rand(3, H, W), [1, 1, 1], modes=("erase",))


# --------------------------------------------------------------------------- average drop / increase


def test_average_drop_of_a_map_of_ones_is_zero():
    model, x = toy(9)
    r = M.average_drop_increase(model, x, torch.ones(3, H, W, dtype=torch.float64), [1, 1, 1])
    assert float(r["drop"]) == 0.0 and float(r["increase"]) == 0.0
    assert torch.allclose(r["O"], r["Y"])


def test_average_drop_increase_reference():
    model, x = toy(10, B=4)
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(4, 3, H, W, generator=g, dtype=torch.float64)
    w = model.w.numpy()
    t = [1, 0, 1, 0]
    r = M.average_drop_increase(model, x, maps, t, batch_size=5)
    drops, incs = np.zeros((4, 3)), np.zeros((4, 3))
    for b in range(4):
        sign = 1.0 if t[b] == 1 else -1.0
        Y = sigmoid(sign * (x[b].numpy() * w).sum())
        for j in range(3):
            o = sigmoid(sign * (x[b].numpy() * maps[b, j].numpy()[None] * w).sum())
            drops[b, j] = 100 * max(0.0, Y - o) / Y
            incs[b, j] = 100.0 if o > Y else 0.0
    np.testing.assert_allclose(r["drop"].numpy(), drops.mean(0), rtol=1e-10)
    np.testing.assert_allclose(r["increase"].numpy(), incs.mean(0))
    # class 0 images: masking lowers s, so p0 rises -> increases; class 1 images: drops
    assert (incs[[1, 3]] == 100).all() and (incs[[0, 2]] == 0).all()
    per = M.average_drop_increase(model, x, maps, t, reduce=False)
    assert per["drop"].shape == (4, 3)
    np.testing.assert_allclose(per["drop"].numpy(), drops, rtol=1e-10)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.average_drop_increase(model, x, maps * 2, t)


def test_average_drop_with_baseline_interpolates():
    model, x = toy(11)
    m = torch.zeros(3, H, W, dtype=torch.float64)
    r = M.average_drop_increase(model, x, m, [1, 1, 1], baseline="zeros")
    assert torch.allclose(r["O"], torch.full((3,), 0.5, dtype=torch.float64))  # all-baseline image: logit 0


# --------------------------------------------------------------------------- pointing game, IoU


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.floats(0.01, 1.0))
def test_map_equal_to_mask_gives_iou_one_and_a_hit(seed, threshold):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(4, H, W, generator=g) < 0.3
    masks[:, 3, 3] = True  # non-empty
    maps = masks.float()
    assert torch.equal(M.iou(maps, masks, threshold), torch.ones(4))
    assert M.pointing_game(maps, masks).all()
    assert M.pointing_game(maps, masks.float()).all()
    assert not M.pointing_game(maps, ~masks).any()


def test_iou_reference_and_sweep():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(5, H, W, generator=g)
    masks = torch.rand(5, H, W, generator=g) < 0.4
    th = [0.2, 0.5, 0.8]
    sw = M.iou_sweep(maps, masks, th)
    ref = np.zeros((5, 3))
    for b in range(5):
        for j, t in enumerate(th):
            p = maps[b].numpy() >= t
            m = masks[b].numpy()
            ref[b, j] = (p & m).sum() / (p | m).sum()
    np.testing.assert_allclose(sw["iou"].numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(sw["mean"].numpy(), ref.mean(0), rtol=1e-6)
    assert sw["best_threshold"] == pytest.approx(th[int(ref.mean(0).argmax())])
    assert sw["iou"].shape == (5, 3) and M.iou_sweep(maps, masks)["iou"].shape == (5, 19)
    # both empty -> 1; prediction empty, mask not -> 0
    z = torch.zeros(2, H, W)
    assert M.iou(z, z.bool(), 0.5).tolist() == [1.0, 1.0]
    mk = torch.zeros(1, H, W, dtype=torch.bool)
    mk[0, 0, 0] = True
    assert M.iou(torch.zeros(1, H, W), mk, 0.5).tolist() == [0.0]


def test_pointing_game_ties_and_tolerance():
    mask = torch.zeros(1, H, W, dtype=torch.bool)
    mask[0, 5, 5] = True
    flat = torch.zeros(1, H, W)
    assert not M.pointing_game(flat, mask).item()  # the first maximum, (0, 0), is outside
    mask0 = mask.clone()
    mask0[0, 0, 0] = True
    assert M.pointing_game(flat, mask0).item()
    m = torch.zeros(1, H, W)
    m[0, 5, 7] = 1.0  # distance 2 from the mask pixel
    assert not M.pointing_game(m, mask).item()
    assert M.pointing_game(m, mask, tolerance=2).item()
    assert not M.pointing_game(m, mask, tolerance=1).item()
    m2 = torch.zeros(1, H, W)
    m2[0, 7, 7] = 1.0  # distance sqrt(8) ~ 2.83: not within 2, within 3
    assert not M.pointing_game(m2, mask, tolerance=2).item() and M.pointing_game(m2, mask, tolerance=3).item()
    with pytest.raises(ValueError, match="same shape"):
        M.pointing_game(torch.zeros(1, H, W), torch.zeros(1, H, W + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="only 0 and 1"):
        M.iou(torch.zeros(1, H, W), torch.full((1, H, W), 0.5))


# --------------------------------------------------------------------------- grid pointing game


def test_grid_score_concentrated_uniform_zero():
    S = 16
    cells = M.cell_masks((S, S))
    assert cells.sum((1, 2)).tolist() == [64] * 4 and cells.sum(0).eq(1).all()
    assert cells[1, 0, S - 1] and cells[2, S - 1, 0] and cells[3, S - 1, S - 1] and cells[0, 0, 0]
    for c in range(4):
        m = torch.zeros(S, S)
        m[cells[c]] = torch.rand(64) + 0.1
        scores = M.grid_pointing_game(m.expand(4, S, S), torch.arange(4))
        assert scores.tolist() == pytest.approx([1.0 if k == c else 0.0 for k in range(4)])
    assert M.grid_pointing_game(torch.ones(4, S, S), torch.arange(4)).tolist() == pytest.approx([0.25] * 4)
    assert M.grid_pointing_game(-torch.ones(2, S, S), 0).tolist() == [0.0, 0.0]  # no positive mass
    with pytest.raises(ValueError, match="0..3"):
        M.grid_pointing_game(torch.ones(1, S, S), 4)


def test_grid_score_reference():
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(6, 3, 10, 12, generator=g)
    cells = torch.randint(0, 4, (6, 3), generator=g)
    s = M.grid_pointing_game(maps, cells)
    for i in range(6):
        for j in range(3):
            p = maps[i, j].clamp(min=0).numpy()
            quad = {0: p[:5, :6], 1: p[:5, 6:], 2: p[5:, :6], 3: p[5:, 6:]}[int(cells[i, j])]
            assert s[i, j].item() == pytest.approx(quad.sum() / p.sum(), rel=1e-5)


def test_make_grids():
    N, S = 24, 8
    g = torch.Generator().manual_seed(0)
    images = torch.rand(N, 3, S, S, generator=g)
    labels = torch.arange(N) % 6
    eligible = torch.ones(N, dtype=torch.bool)
    eligible[:6] = False
    out = M.make_grids(images, labels, 30, seed=5, eligible=eligible)
    assert out["grids"].shape == (30, 3, S, S) and out["labels"].shape == (30, 4)
    for i in range(30):
        assert len(set(out["labels"][i].tolist())) == 4
        assert torch.equal(out["labels"][i], labels[out["index"][i]])
        assert (out["index"][i] >= 6).all()
    # cell content = the source image at half size (cells 0 1 / 2 3)
    small = torch.nn.functional.interpolate(images, size=(4, 4), mode="bilinear", align_corners=False, antialias=True)
    i0 = out["index"][0]
    gr = out["grids"][0]
    assert torch.equal(gr[:, :4, :4], small[i0[0]]) and torch.equal(gr[:, :4, 4:], small[i0[1]])
    assert torch.equal(gr[:, 4:, :4], small[i0[2]]) and torch.equal(gr[:, 4:, 4:], small[i0[3]])
    again = M.make_grids(images, labels, 30, seed=5, eligible=eligible)
    assert torch.equal(again["index"], out["index"])
    assert not torch.equal(M.make_grids(images, labels, 30, seed=6, eligible=eligible)["index"], out["index"])
    assert M.make_grids(images, labels, 2, cell_size=(5, 3))["grids"].shape == (2, 3, 10, 6)
    with pytest.raises(ValueError, match="at least 4 distinct classes"):
        M.make_grids(images, labels % 3, 5)


def test_grid_game_on_a_model_that_only_sees_one_cell():
    """End to end: a toy 'model' whose maps are its input's brightness finds a
    bright image placed in a grid of dark ones."""
    S = 8
    images = torch.zeros(4, 1, S, S)
    images[2] = 1.0
    out = M.make_grids(images, torch.arange(4), 5, seed=0)
    bright_cell = (out["labels"] == 2).nonzero()[:, 1]
    maps = out["grids"][:, 0]
    assert M.grid_pointing_game(maps, bright_cell).tolist() == pytest.approx([1.0] * 5)


def test_confident_mask():
    model, x = toy(12, B=4)
    s = (x * model.w).flatten(1).sum(1)
    p1 = torch.sigmoid(s)
    labels = torch.tensor([1, 1, 0, 1])
    r = M.confident_mask(model, x, labels, min_prob=float(p1[1]))
    expect = [bool(p1[0] >= p1[1]), True, False, bool(p1[3] >= p1[1])]  # class 0 has p < 0.5 here
    assert float(p1.min()) > 0.5
    assert r["mask"].tolist() == expect
    assert torch.allclose(r["prob"], torch.where(labels == 1, p1, 1 - p1))
    assert math.isclose(float(r["prob"][1]), float(p1[1]), rel_tol=1e-6)


# --------------------------------------------------------------------------- the model as found, clear errors (issue 10)


class ConvBN(nn.Module):
    """Conv / batch norm / dropout classifier: in train mode its statistics move and dropout draws."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5))
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


CALLS = {
    "deletion_insertion": lambda m, x, maps, t: M.deletion_insertion(m, x, maps, t, steps=2),
    "deletion_curve": lambda m, x, maps, t: M.deletion_curve(m, x, maps, t, steps=2),
    "insertion_curve": lambda m, x, maps, t: M.insertion_curve(m, x, maps, t, steps=2, baseline="mean"),
    "average_drop_increase": lambda m, x, maps, t: M.average_drop_increase(m, x, maps, t),
    "confident_mask": lambda m, x, maps, t: M.confident_mask(m, x, t),
}


def _convbn_case():
    g = torch.Generator().manual_seed(1)
    return ConvBN(), torch.randn(2, 3, H, W, generator=g), torch.rand(2, H, W, generator=g), torch.tensor([0, 2])


@pytest.mark.parametrize("name", sorted(CALLS))
def test_metrics_leave_a_mixed_mode_model_as_found(name):
    """Per-module flags (one batch norm in eval, the rest training), statistics, requires_grad, .grad,
    hooks and the global RNG; the metric itself sees the model in eval mode (same result twice)."""
    model, x, maps, t = _convbn_case()
    mixed(model, "body.1")
    before = snapshot(model)
    first = CALLS[name](model, x, maps, t)
    assert_as_found(model, before)
    again = CALLS[name](model, x, maps, t)
    if isinstance(first, torch.Tensor):
        first, again = {"curve": first}, {"curve": again}
    for key in first:
        assert torch.equal(first[key], again[key]), key


@pytest.mark.parametrize("name", sorted(CALLS))
def test_metrics_wait_while_another_camkit_call_holds_the_model(name):
    """The metrics use camkit.hooks.eval_mode, so they take turns with every other camkit entry point."""
    model, x, maps, t = _convbn_case()
    ran, errors = threading.Event(), []
    model.register_forward_pre_hook(lambda m, i: ran.set())

    def call():
        try:
            CALLS[name](model, x, maps, t)
        except Exception as e:  # reported below
            errors.append(e)

    with model_lock(model):
        thread = threading.Thread(target=call)
        thread.start()
        assert not ran.wait(0.3), "the metric ran the model while another camkit call held it"
    thread.join(60)
    assert ran.is_set() and not thread.is_alive() and not errors


def test_blur_baseline_on_tiny_images_is_a_clear_error():
    with pytest.raises(InputError, match=r"kernel 11 is too large for 5x5 images \(its reflect padding of 5 .*"
                                         r"pass blur_kernel <= 9 or baseline='mean'"):
        M.make_baseline(torch.rand(1, 3, 5, 5))
    model, x, maps, t = _convbn_case()
    with pytest.raises(InputError, match="too large for 4x8 images"):
        M.deletion_curve(model, x[..., :4, :], maps[..., :4, :], t)
    assert M.make_baseline(torch.rand(1, 3, 5, 5), blur_kernel=9).shape == (1, 3, 5, 5)
    assert M.make_baseline(torch.rand(1, 3, 6, 6)).shape == (1, 3, 6, 6)
    one = torch.rand(1, 3, 1, 1)
    assert torch.equal(M.make_baseline(one, blur_kernel=1), one)


def test_confident_mask_label_out_of_range():
    model, x = toy(12, B=4)
    with pytest.raises(InputError, match=r"labels must lie in \[0, 1\] \(the model's classes\), got 5 for image 2"):
        M.confident_mask(model, x, [1, 0, 5, 1])
    with pytest.raises(InputError, match="got -1 for image 0"):
        M.confident_mask(model, x, [-1, 0, 1, 1])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_maps_are_refused(bad):
    maps = torch.rand(3, H, W)
    maps[1, 2, 2] = bad
    masks = torch.rand(3, H, W) > 0.5
    msg = r"maps contain NaN or infinite values \(index \[1\] along the first dimension\)"
    with pytest.raises(InputError, match=msg):
        M.grid_pointing_game(maps, [0, 1, 2])
    with pytest.raises(InputError, match=msg):
        M.pointing_game(maps, masks)
    with pytest.raises(InputError, match=msg):
        M.iou(maps, masks)


def test_non_finite_logits_and_images_name_the_images():
    model, x = toy(13)
    x[1] += 10.0  # the model below returns NaN logits for image 1 only

    def nan_for_image_1(z):
        logits = model(z)
        return torch.where((z.amax(dim=(1, 2, 3)) > 5)[:, None], torch.full_like(logits, float("nan")), logits)

    maps = torch.rand(3, H, W, dtype=torch.float64)
    msg = r"the model returned NaN or infinite logits for image\(s\) \[1\]"
    with pytest.raises(InputError, match=msg):
        M.average_drop_increase(nan_for_image_1, x, maps, [1, 1, 1])
    with pytest.raises(InputError, match=msg):
        M.deletion_curve(nan_for_image_1, x, maps, [1, 1, 1], baseline="zeros")
    with pytest.raises(InputError, match=msg):
        M.confident_mask(nan_for_image_1, x, [1, 1, 1])
    x[2, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"images contain NaN or infinite values \(index \[2\]"):
        M.average_drop_increase(model, x, maps, [1, 1, 1])
