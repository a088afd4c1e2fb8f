"""Faithfulness: does removing what the map calls important change the model's output?

All functions are batched: every perturbed input of every image is built on the device and sent to the
model in chunks of ``batch_size``; randomness comes from private generators seeded with ``seed``.
Shapes: ``images (B, C, H, W)`` in the model's input space, ``maps (B, H, W)`` at the images' size
(larger = more important), ``targets (B,)``; a pixel is removed in all its channels.

- :func:`noisy_linear_imputation` and :func:`road` (Rong et al., ICML 2022, "A Consistent and Efficient
  Evaluation Strategy for Attribution Methods"): removed pixels are filled with the average of their 8
  neighbours (weights 1/6 and 1/12, solved as one linear system per image and channel, by conjugate
  gradients on the device, in cache-sized groups on a CPU) plus Gaussian noise; MoRF removes the p % most
  relevant pixels, LeRF the p % least relevant ones.
- :func:`faithfulness_correlation` (Bhatt et al., IJCAI 2020).
- :func:`pixel_flipping` (Bach et al., 2015), :func:`region_perturbation` (Samek et al., 2017) and
  :func:`monotonicity` (Arya et al., 2019).
- :func:`infidelity` (Yeh et al., NeurIPS 2019; captum's ``infidelity``).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DependencyError, InputError
from ..metrics import Baseline, Model, Targets, _check_images, make_baseline, pixel_ranks
from ._common import (
    check_inputs,
    check_percentiles,
    check_positive_int,
    check_score,
    generator,
    pearson,
    predictions,
    scores,
)

__all__ = ["noisy_linear_imputation", "road", "faithfulness_correlation", "pixel_flipping", "region_perturbation",
           "monotonicity", "infidelity", "irof", "slic_segments", "sufficiency"]


def _smooth_121(u: Tensor, dim: int) -> Tensor:
    """``u[i - 1] + 2 u[i] + u[i + 1]`` along ``dim`` (-1 or -2), zero outside the image."""
    out = u * 2
    n = u.shape[dim]
    out.narrow(dim, 1, n - 1).add_(u.narrow(dim, 0, n - 1))
    out.narrow(dim, 0, n - 1).add_(u.narrow(dim, 1, n - 1))
    return out


def _neighbour_sum(u: Tensor) -> Tensor:
    """``sum_j w_j u(i + d_j)`` over the 8 neighbours (1/6 direct, 1/12 diagonal), zero outside the image. The
    weights are ``([1 2 1]^T [1 2 1] - 4 delta) / 12``: two separable passes, cheaper than a one-channel
    convolution. u (N, 1, H, W)."""
    return (_smooth_121(_smooth_121(u, -1), -2) - 4 * u) / 12


def _coarse_guess(values: Tensor, m: Tensor, tol: float, max_iter: int) -> Tensor:
    """A starting point for the fill: the fill of the half-size problem (a removed coarse pixel where all four
    are removed; kept coarse values the mean of the kept pixels), upsampled. The fill is a discrete harmonic
    interpolation, much the same at every scale, so the fine solve starts with its smooth part in place."""
    kept = F.avg_pool2d(1 - m, 2, ceil_mode=True)
    coarse_v = F.avg_pool2d(values * (1 - m), 2, ceil_mode=True) / kept.clamp(min=1e-12)
    coarse_u = _solve_fill(coarse_v, kept == 0, tol, max_iter)
    full = coarse_u + torch.where(kept == 0, torch.zeros_like(coarse_v), coarse_v)
    up = F.interpolate(full, scale_factor=2, mode="bilinear", align_corners=False)[..., :m.shape[-2], :m.shape[-1]]
    return m * up


def _cg(apply: Callable[[Tensor, Tensor], Tensor], b: Tensor, u: Tensor, m: Tensor, tol: float,
        max_iter: int) -> Tensor:
    """Conjugate gradients for the systems ``apply(u, m) = b`` (N, 1, H, W), each stopping at a relative
    residual of ``tol``; converged systems leave the working set, so the hard ones do not hold up the others."""
    out = u.clone()
    active = torch.arange(b.shape[0], device=b.device)
    r = b - apply(u, m)
    p, rs = r.clone(), r.square().sum((1, 2, 3), keepdim=True)
    stop = (tol * b.square().sum((1, 2, 3), keepdim=True).sqrt()).square()
    for _ in range(max_iter + 1):
        done = (rs <= stop).view(-1)
        if bool(done.any()):
            out[active[done]] = u[done]
            keep = ~done
            if not bool(keep.any()):
                return out
            active, u, r, p, rs, stop, m = (t[keep] for t in (active, u, r, p, rs, stop, m))
        ap = apply(p, m)
        pap = (p * ap).sum((1, 2, 3), keepdim=True)
        alpha = torch.where(pap > 0, rs / pap.clamp(min=torch.finfo(pap.dtype).tiny), torch.zeros_like(pap))
        u = u.addcmul_(alpha, p)
        r = r.addcmul_(alpha, ap, value=-1)
        rs_new = r.square().sum((1, 2, 3), keepdim=True)
        beta = torch.where(rs > 0, rs_new / rs.clamp(min=torch.finfo(rs.dtype).tiny), torch.zeros_like(rs))
        p = p.mul_(beta).add_(r)
        rs = rs_new
    out[active] = u
    return out


CPU_SOLVE_ELEMENTS = 2 ** 17
"""On a CPU, the fill's systems are solved in groups of about this many pixels (at least one system): the
solver's dozen working tensors then stay in a core's cache (2 MiB here; the whole working set of 64 images
at 192 px is 100 times that). On other devices all at once."""


def _solve_groups(values: Tensor, removed: Tensor, tol: float, max_iter: int) -> Tensor:
    """:func:`_solve_fill` on ``(N, 1, H, W)`` systems, in cache-sized groups on a CPU (each system's solve is
    independent of the others')."""
    N, _, H, W = values.shape
    group = max(1, CPU_SOLVE_ELEMENTS // (H * W)) if values.device.type == "cpu" else N
    if group >= N:
        return _solve_fill(values, removed, tol, max_iter)
    return torch.cat([_solve_fill(values[i:i + group], removed[i:i + group], tol, max_iter)
                      for i in range(0, N, group)])


def _solve_fill(values: Tensor, removed: Tensor, tol: float, max_iter: int) -> Tensor:
    """The linear fill of the ``removed`` pixels: conjugate gradients on ``s u - m K(m u) = m K((1-m) v)``
    for all (image, channel) systems at once, started from the half-size problem's fill (below 16 pixels: 0).
    values (N, 1, H, W) float, removed (N, 1, H, W) bool."""
    m = removed.to(values.dtype)
    s = _neighbour_sum(torch.ones_like(values[:1]))  # the in-image neighbours' weights

    def apply(u: Tensor, mask: Tensor) -> Tensor:  # u, and every CG iterate, is 0 outside the removed pixels
        return mask * (s * u - _neighbour_sum(u))

    b = m * _neighbour_sum((1 - m) * values)
    u = _coarse_guess(values, m, tol, max_iter) if min(values.shape[-2:]) >= 16 else torch.zeros_like(b)
    return _cg(apply, b, u, m, tol, max_iter)


def noisy_linear_imputation(images: Tensor, removed: Tensor, noise: float = 0.01, seed: int = 0,
                            tol: float = 1e-4, max_iter: Optional[int] = None,
                            generator_: Optional[torch.Generator] = None) -> Tensor:
    """Fill the ``removed`` pixels by noisy linear imputation (Rong et al., 2022).

    Each removed pixel becomes the weighted mean of its 8 neighbours (1/6 for the 4 direct, 1/12 for the
    diagonal ones; neighbours outside the image are left out, the weights not renormalized): one sparse
    linear system per image and channel, as pytorch-grad-cam's ``NoisyLinearImputer`` sets it up, solved
    here by conjugate gradients (started from the half-size problem's fill) to a relative residual of ``tol``
    (in float32, in float64 for float64 images or ``tol < 1e-5``); then ``noise * N(0, 1)`` is
    added to each filled value. A removed region that touches no kept pixel is filled with 0 (+ noise).

    Args:
        images (Tensor): ``(B, C, H, W)``.
        removed (Tensor): ``(B, H, W)`` bool, the pixels to fill.
        noise (float, optional): Standard deviation of the added noise, >= 0. Default: 0.01.
        seed (int, optional): Seeds the noise's private generator. Default: 0.
        tol (float, optional): Relative residual at which the solver stops. Default: 1e-4 (fill errors
            about 1e-4 of the image's range, far below the noise).
        max_iter (int, optional): Solver iterations at most; default ``10 * (H + W) + 50``.
        generator_ (torch.Generator, optional): Draw the noise from this generator instead.

    Returns:
        *Tensor*: ``(B, C, H, W)``, the images' dtype; kept pixels unchanged.

    Raises:
        InputError: Bad images, a mask of another shape, a negative noise.
    """
    images = _check_images(images)
    B, C, H, W = images.shape
    if not isinstance(removed, Tensor) or removed.shape != (B, H, W):
        raise InputError(f"removed must be a bool tensor of shape {(B, H, W)}, got {getattr(removed, 'shape', removed)}")
    if not noise >= 0:
        raise InputError(f"noise must be >= 0, got {noise!r}")
    m = removed.to(images.device, torch.bool)[:, None].expand(B, C, H, W).reshape(B * C, 1, H, W)
    work = torch.float64 if images.dtype == torch.float64 or tol < 1e-5 else torch.float32
    u = _solve_groups(images.to(work).reshape(B * C, 1, H, W), m, tol, max_iter or 10 * (H + W) + 50)
    u = u.reshape(B, C, H, W)
    if noise > 0:
        g = generator_ if generator_ is not None else generator(seed, images.device)
        u = u + noise * torch.randn(u.shape, generator=g, device=u.device, dtype=u.dtype)
    return torch.where(m.reshape(B, C, H, W), u.to(images.dtype), images)


def _removed_masks(ranks: Tensor, counts: Tensor, morf: Tensor) -> Tensor:
    """``(J, H, W)`` bool: the ``counts[j]`` most (``morf[j]``) or least relevant pixels by ``ranks (J, H, W)``."""
    n = ranks[0].numel()
    c = counts[:, None, None]
    return torch.where(morf[:, None, None], ranks < c, ranks >= n - c)


def road(model: Model, images: Tensor, maps: Tensor, targets: Targets,
         percentiles: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90), noise: float = 0.01,
         score: str = "logit", seed: int = 0, batch_size: int = 64, tol: float = 1e-4) -> Dict[str, Tensor]:
    """ROAD, RemOve And Debias (Rong et al., 2022): the target's score after noisy linear imputation of
    ``int(p * H * W / 100)`` pixels, the most relevant ones (MoRF) or the least relevant ones (LeRF), at each
    percentile ``p`` (ties in raster order, :func:`camkit.metrics.pixel_ranks`).

    Args:
        model (callable): Images ``(N, C, H, W)`` -> logits ``(N, num_classes)``.
        images (Tensor): ``(B, C, H, W)``.
        maps (Tensor): ``(B, H, W)``.
        targets (sequence of int or Tensor): ``(B,)``.
        percentiles (sequence of float, optional): Each in (0, 100). Default: 10, 20, ..., 90.
        noise (float, optional): The imputation's noise. Default: 0.01.
        score (str, optional): ``"logit"`` (pytorch-grad-cam's ``ClassifierOutputTarget``) or ``"softmax"``.
        seed (int, optional): Default: 0 (one generator; each imputed input draws its own noise in order).
        batch_size (int, optional): Imputed inputs per solve and model call. Default: 64.
        tol (float, optional): The imputation solver's tolerance (:func:`noisy_linear_imputation`). Default: 1e-4.

    Returns:
        *dict*: ``{"percentiles": (P,), "original": (B,), "morf": (B, P), "lerf": (B, P), "combined": (B,)}``,
        combined = ``(mean_p lerf - mean_p morf) / 2`` (pytorch-grad-cam's ``ROADCombined``; higher is better).

    Raises:
        InputError: Percentiles outside (0, 100), bad inputs, score or batch size.
    """
    images, maps, t = check_inputs(images, maps, targets)
    pct = check_percentiles(percentiles)
    check_score(score)
    check_positive_int(batch_size, "batch_size")
    B, C, H, W = images.shape
    P = len(pct)
    ranks = pixel_ranks(maps)
    counts = torch.tensor([int(H * W * p / 100) for p in pct], device=images.device)
    jobs = torch.cartesian_prod(torch.arange(B), torch.arange(2), torch.arange(P)).to(images.device)
    g = generator(seed, images.device)
    out = torch.empty(B, 2, P, dtype=torch.float64, device=images.device)
    for s in range(0, jobs.shape[0], batch_size):
        jb, jo, jp = jobs[s:s + batch_size].unbind(1)
        removed = _removed_masks(ranks[jb], counts[jp], jo == 0)
        filled = noisy_linear_imputation(images[jb], removed, noise, tol=tol, generator_=g)
        out[jb, jo, jp] = scores(model, filled, t[jb], score, batch_size, jb).double()
    original = scores(model, images, t, score, batch_size).double()
    return {"percentiles": torch.tensor(pct), "original": original, "morf": out[:, 0], "lerf": out[:, 1],
            "combined": (out[:, 1].mean(1) - out[:, 0].mean(1)) / 2}


def _unit_curve(model: Model, x: Tensor, base: Tensor, unit_ranks: Tensor, counts: Tensor, targets: Tensor,
                score: str, batch_size: int, reveal: bool) -> Tensor:
    """Scores ``(B, K)``: at step k the units with rank < ``counts[k]`` are replaced by the baseline
    (``reveal``: copied from the image onto the baseline). unit_ranks (B, H, W) long."""
    B, K = x.shape[0], counts.numel()
    jobs = torch.cartesian_prod(torch.arange(B), torch.arange(K)).to(x.device)
    out = torch.empty(B, K, dtype=torch.float64, device=x.device)
    for s in range(0, jobs.shape[0], batch_size):
        jb, jk = jobs[s:s + batch_size].unbind(1)
        changed = (unit_ranks[jb] < counts[jk][:, None, None])[:, None]
        xs = torch.where(changed, x[jb], base[jb]) if reveal else torch.where(changed, base[jb], x[jb])
        out[jb, jk] = scores(model, xs, targets[jb], score, batch_size, jb).double()
    return out


def _step_counts(units: int, per_step: int) -> Tensor:
    """Cumulative units after each step: ``min(k * per_step, units)``, k = 1 .. ceil(units / per_step)."""
    steps = -(-units // per_step)
    return torch.clamp(torch.arange(1, steps + 1) * per_step, max=units)


def pixel_flipping(model: Model, images: Tensor, maps: Tensor, targets: Targets, features_in_step: int = 1,
                   baseline: Baseline = "zeros", score: str = "logit", batch_size: int = 64) -> Tensor:
    """Pixel flipping (Bach et al., 2015; Quantus's ``PixelFlipping``): the target's score after replacing the
    ``k * features_in_step`` most relevant pixels by the baseline, for k = 1 .. ceil(H W / features_in_step).

    Args:
        model (callable): Images ``(N, C, H, W)`` -> logits ``(N, num_classes)``.
        images (Tensor): ``(B, C, H, W)``.
        maps (Tensor): ``(B, H, W)``.
        targets (sequence of int or Tensor): ``(B,)``.
        features_in_step (int, optional): Pixels per step. Default: 1.
        baseline (str, Tensor or callable, optional): See :func:`camkit.metrics.make_baseline`. Default: "zeros".
        score (str, optional): ``"logit"`` or ``"softmax"``. Default: ``"logit"``.
        batch_size (int, optional): Inputs per model call. Default: 64.

    Returns:
        *Tensor*: ``(B, ceil(H W / features_in_step))`` float64, the curve (falls fast for a good map).

    Raises:
        InputError: Bad inputs, step, baseline, score or batch size.
    """
    images, maps, t = check_inputs(images, maps, targets)
    check_score(score)
    check_positive_int(batch_size, "batch_size")
    counts = _step_counts(maps[0].numel(), check_positive_int(features_in_step, "features_in_step"))
    base = make_baseline(images, baseline)
    return _unit_curve(model, images, base, pixel_ranks(maps), counts.to(images.device), t, score, batch_size, False)


def region_perturbation(model: Model, images: Tensor, maps: Tensor, targets: Targets, patch_size: int = 8,
                        regions: Optional[int] = None, baseline: Baseline = "zeros", score: str = "logit",
                        batch_size: int = 64) -> Tensor:
    """Region perturbation (Samek et al., 2017), most relevant first: the ``patch_size`` square patches of a
    grid over the image are ordered by their summed map value (ties in raster order of the patches), and the
    target's score is recorded after replacing the first k patches by the baseline, k = 1 .. ``regions``.

    Args:
        model, images, maps, targets, baseline, score, batch_size: As in :func:`pixel_flipping`.
        patch_size (int, optional): Dividing H and W. Default: 8.
        regions (int, optional): Steps; default every patch.

    Returns:
        *Tensor*: ``(B, regions)`` float64.

    Raises:
        InputError: A patch size that does not divide the images, or what :func:`pixel_flipping` refuses.
    """
    images, maps, t = check_inputs(images, maps, targets)
    check_score(score)
    check_positive_int(batch_size, "batch_size")
    ps = check_positive_int(patch_size, "patch_size")
    H, W = maps.shape[-2:]
    if H % ps or W % ps:
        raise InputError(f"patch_size {ps} must divide the images' size {H}x{W}")
    n = (H // ps) * (W // ps)
    regions = n if regions is None else min(check_positive_int(regions, "regions"), n)
    sums = F.avg_pool2d(maps[:, None].double(), ps)[:, 0]  # (B, H/ps, W/ps)
    patch_ranks = pixel_ranks(sums)
    unit = F.interpolate(patch_ranks[:, None].double(), scale_factor=ps, mode="nearest")[:, 0].long()
    base = make_baseline(images, baseline)
    counts = torch.arange(1, regions + 1, device=images.device)
    return _unit_curve(model, images, base, unit, counts, t, score, batch_size, False)


def monotonicity(model: Model, images: Tensor, maps: Tensor, targets: Targets, features_in_step: int = 1,
                 baseline: Baseline = "zeros", score: str = "logit", batch_size: int = 64) -> Dict[str, Tensor]:
    """Monotonicity (Arya et al., 2019): starting from the baseline, the image's pixels are revealed in
    order of increasing map value, ``features_in_step`` at a time; the map is monotonic when the target's
    score never decreases.

    Args:
        model, images, maps, targets, features_in_step, baseline, score, batch_size: As in :func:`pixel_flipping`.

    Returns:
        *dict*: ``{"monotonic": (B,) bool, "curve": (B, steps) float64}``.

    Raises:
        InputError: As :func:`pixel_flipping`.
    """
    images, maps, t = check_inputs(images, maps, targets)
    check_score(score)
    check_positive_int(batch_size, "batch_size")
    counts = _step_counts(maps[0].numel(), check_positive_int(features_in_step, "features_in_step"))
    base = make_baseline(images, baseline)
    curve = _unit_curve(model, images, base, pixel_ranks(-maps), counts.to(images.device), t, score, batch_size,
                        True)
    return {"monotonic": (curve.diff(dim=1) >= 0).all(1), "curve": curve}


def _subsets(B: int, N: int, runs: int, size: int, seed: int) -> Tensor:
    """``(B, runs, size)`` random pixel subsets without replacement, per image from one CPU generator."""
    g = generator(seed, "cpu")
    return torch.stack([torch.rand(runs, N, generator=g).topk(size, dim=1).indices for _ in range(B)])


def faithfulness_correlation(model: Model, images: Tensor, maps: Tensor, targets: Targets, subset_size: int = 224,
                             runs: int = 100, baseline: Baseline = "zeros", score: str = "logit", seed: int = 0,
                             batch_size: int = 64, subsets: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """Faithfulness correlation (Bhatt et al., 2020): the Pearson correlation, over ``runs`` random pixel
    subsets of ``subset_size`` pixels, between the map's sum over the subset and the target's score drop
    when the subset is replaced by the baseline.

    Args:
        model, images, maps, targets, baseline, score, batch_size: As in :func:`pixel_flipping`.
        subset_size (int, optional): Pixels per subset, at most H W. Default: 224.
        runs (int, optional): Subsets per image, >= 2. Default: 100.
        seed (int, optional): Default: 0.
        subsets (Tensor, optional): ``(B, runs, subset_size)`` flat pixel indices, instead of drawing them.

    Returns:
        *dict*: ``{"correlation": (B,) float64, "map_sums": (B, runs), "drops": (B, runs), "subsets": ...}``.

    Raises:
        InputError: A subset larger than the image, fewer than 2 runs, bad subsets or inputs.
    """
    images, maps, t = check_inputs(images, maps, targets)
    check_score(score)
    check_positive_int(batch_size, "batch_size")
    B, C, H, W = images.shape
    if subsets is None:
        if not 1 <= check_positive_int(subset_size, "subset_size") <= H * W or check_positive_int(runs, "runs") < 2:
            raise InputError(f"need 1 <= subset_size <= {H * W} and runs >= 2, got {subset_size} and {runs}")
        subsets = _subsets(B, H * W, runs, subset_size, seed)
    elif subsets.dim() != 3 or subsets.shape[0] != B or subsets.min() < 0 or subsets.max() >= H * W:
        raise InputError(f"subsets must be ({B}, runs, size) pixel indices in [0, {H * W})")
    subsets = subsets.to(images.device)
    R = subsets.shape[1]
    base = make_baseline(images, baseline)
    y = scores(model, images, t, score, batch_size).double()
    jobs = torch.cartesian_prod(torch.arange(B), torch.arange(R)).to(images.device)
    drops = torch.empty(B, R, dtype=torch.float64, device=images.device)
    for s in range(0, jobs.shape[0], batch_size):
        jb, jr = jobs[s:s + batch_size].unbind(1)
        mask = torch.zeros(jb.shape[0], H * W, dtype=torch.bool, device=images.device)
        mask.scatter_(1, subsets[jb, jr], True)
        xs = torch.where(mask.view(-1, 1, H, W), base[jb], images[jb])
        drops[jb, jr] = y[jb] - scores(model, xs, t[jb], score, batch_size, jb).double()
    sums = maps.flatten(1).double().gather(1, subsets.flatten(1)).view(B, R, -1).sum(2)
    return {"correlation": pearson(sums, drops), "map_sums": sums, "drops": drops, "subsets": subsets}


def infidelity(model: Model, images: Tensor, maps: Tensor, targets: Targets, samples: int = 10, std: float = 0.003,
               normalize: bool = False, seed: int = 0, batch_size: int = 64,
               perturbations: Optional[Tensor] = None) -> Tensor:
    """Infidelity (Yeh et al., 2019), as captum's ``infidelity``:
    ``mean_I (sum(I * map) - (f(x) - f(x - I)))^2`` with ``f`` the target's logit and ``I`` Gaussian noise
    ``N(0, std^2)`` per input element (the map broadcast over the channels).

    Args:
        model, images, maps, targets, batch_size: As in :func:`pixel_flipping`.
        samples (int, optional): Perturbations per image. Default: 10.
        std (float, optional): The noise's standard deviation. Default: 0.003 (captum's tutorial).
        normalize (bool, optional): Scale the map by the least-squares ``beta`` first (captum's ``normalize``).
        seed (int, optional): Default: 0.
        perturbations (Tensor, optional): ``(B, samples, C, H, W)`` the ``I``, instead of drawing them.

    Returns:
        *Tensor*: ``(B,)`` float64 (lower is better).

    Raises:
        InputError: Bad inputs, perturbations of another shape.
    """
    images, maps, t = check_inputs(images, maps, targets)
    check_positive_int(batch_size, "batch_size")
    B = images.shape[0]
    if perturbations is None:
        g = generator(seed, images.device)
        S = check_positive_int(samples, "samples")
        perturbations = std * torch.randn((B, S, *images.shape[1:]), generator=g, device=images.device,
                                          dtype=images.dtype)
    elif perturbations.dim() != 5 or perturbations.shape[0] != B or perturbations.shape[2:] != images.shape[1:]:
        raise InputError(f"perturbations must have shape ({B}, samples, {', '.join(map(str, images.shape[1:]))})")
    I = perturbations.to(images)  # noqa: E741 (the paper's name)
    S = I.shape[1]
    y = scores(model, images, t, "logit", batch_size).double()
    x = (images[:, None] - I).flatten(0, 1)
    src = torch.arange(B, device=images.device).repeat_interleave(S)
    diff = (y[:, None] - scores(model, x, t[src], "logit", batch_size, src).double().view(B, S))
    dot = (I.double() * maps.double()[:, None, None]).flatten(2).sum(2)
    if normalize:
        beta = (dot * diff).mean(1) / dot.square().mean(1).clamp(min=torch.finfo(torch.float64).tiny)
        dot = beta[:, None] * dot
    return (dot - diff).square().mean(1)


def slic_segments(images: Tensor, n_segments: int = 100, **slic_options: object) -> Tensor:
    """Superpixels of each image by scikit-image's SLIC (an optional dependency), labels from 0, as Quantus's
    IROF segments images (``slic(image HWC float64, start_label=0)``); computed on the CPU.

    Args:
        images (Tensor): ``(B, C, H, W)``.
        n_segments (int, optional): SLIC's target number of segments. Default: 100 (SLIC's).
        **slic_options: More options of ``skimage.segmentation.slic``.

    Returns:
        *Tensor*: ``(B, H, W)`` long, on the images' device.

    Raises:
        DependencyError: scikit-image is not installed.
    """
    images = _check_images(images)
    try:
        from skimage.segmentation import slic
    except ImportError as e:  # pragma: no cover - scikit-image is in the test environment
        raise DependencyError("slic_segments needs scikit-image: pip install scikit-image") from e
    out = [torch.from_numpy(slic(im.permute(1, 2, 0).double().numpy(), n_segments=n_segments, start_label=0,
                                 **slic_options).astype("int64")) for im in images.detach().cpu()]
    return torch.stack(out).to(images.device)


def _segment_ranks(maps: Tensor, segments: Tensor) -> tuple:
    """Per pixel, the rank of its segment by decreasing mean map value (ties by label), and the segment counts.
    maps (B, H, W), segments (B, H, W) long labels (relabelled 0 .. S_b - 1 per image)."""
    B = maps.shape[0]
    flat = segments.flatten(1)
    labels = torch.stack([torch.unique(f, return_inverse=True)[1] for f in flat])  # 0 .. S_b - 1
    S = int(labels.max()) + 1
    n_seg = labels.amax(1) + 1
    sums = torch.zeros(B, S, dtype=torch.float64, device=maps.device).scatter_add_(1, labels, maps.flatten(1).double())
    cnt = torch.zeros(B, S, dtype=torch.float64, device=maps.device).scatter_add_(1, labels, torch.ones_like(sums[:, :1])
                                                                                  .expand_as(labels).contiguous())
    mean = torch.where(cnt > 0, sums / cnt.clamp(min=1), torch.full_like(sums, -float("inf")))
    order = torch.sort(mean, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(S, device=maps.device).expand(B, S).contiguous())
    return rank.gather(1, labels).view_as(segments), n_seg


def irof(model: Model, images: Tensor, maps: Tensor, targets: Targets, segments: Tensor,
         baseline: Baseline = "mean", score: str = "softmax", batch_size: int = 64) -> Dict[str, Tensor]:
    """IROF, Iterative Removal Of Features (Rieger and Hansen, 2020; Quantus's ``IROF``): the segments are
    ordered by their mean map value and removed one after the other (replaced by the baseline); the curve is
    the target's score relative to the image's, and IROF the area over it.

    Args:
        model, images, maps, targets, score, batch_size: As in :func:`pixel_flipping` (default score softmax,
            Quantus's).
        segments (Tensor): ``(B, H, W)`` integer labels, e.g. :func:`slic_segments`.
        baseline (str, Tensor or callable, optional): Default: ``"mean"``, each image's per-channel mean.

    Returns:
        *dict*: ``{"aoc": (B,), "curve": (B, S) (0 past an image's last segment), "segments": (B,) long}``, with
        ``aoc = S_b - trapz(curve_b)`` (unit steps; Quantus's score; divide by ``segments`` for [0, 1]).

    Raises:
        InputError: Segments of another shape or not integers, or what :func:`pixel_flipping` refuses.
    """
    images, maps, t = check_inputs(images, maps, targets)
    check_score(score)
    check_positive_int(batch_size, "batch_size")
    if not isinstance(segments, Tensor) or segments.shape != maps.shape or segments.is_floating_point():
        raise InputError(f"segments must be an integer tensor of shape {tuple(maps.shape)}")
    ranks, n_seg = _segment_ranks(maps, segments.to(images.device).long())
    counts = torch.arange(1, int(n_seg.max()) + 1, device=images.device)
    base = make_baseline(images, baseline)
    y = scores(model, images, t, score, batch_size).double()
    curve = _unit_curve(model, images, base, ranks, counts, t, score, batch_size, False) / y[:, None]
    curve = torch.where(counts[None] <= n_seg[:, None], curve, torch.zeros_like(curve))
    return {"aoc": n_seg.double() - torch.trapezoid(curve, dim=1), "curve": curve, "segments": n_seg}


def sufficiency(model: Model, images: Tensor, maps: Tensor, threshold: float = 0.6, batch_size: int = 64,
                relative: bool = True) -> Tensor:
    """Sufficiency (Dasgupta et al., ICML 2022; Quantus's ``Sufficiency``): for each image, the fraction of the
    *other* images of the batch whose map lies within ``threshold`` of its map (standardized Euclidean
    distance, variances as scipy's ``cdist(A, A, "seuclidean")`` takes them; with ``relative``, divided by the
    batch's largest distance, as Quantus does) that the model puts in the same class (top-1); 0 for an image
    without such neighbours. A batch-level metric: it depends on the batch.

    Args:
        model (callable): Images ``(N, C, H, W)`` -> logits ``(N, num_classes)``.
        images (Tensor): ``(B, C, H, W)``.
        maps (Tensor): ``(B, H, W)``.
        threshold (float, optional): Default: 0.6.
        batch_size (int, optional): Images per model call. Default: 64.
        relative (bool, optional): Distances relative to the batch's largest. Default: True.

    Returns:
        *Tensor*: ``(B,)`` float64 in [0, 1].

    Raises:
        InputError: Bad inputs.
    """
    images, maps, _ = check_inputs(images, maps, 0)
    a = maps.flatten(1).double()
    both = torch.cat([a, a])
    var = both.var(0, unbiased=True)
    d = ((a[:, None] - a[None]).square() / var).sum(2).sqrt()
    if relative and bool(d.max() > 0):
        d = d / d.max()
    near = (d <= threshold) & ~torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    pred = predictions(model, images, check_positive_int(batch_size, "batch_size")).argmax(1)
    same = pred[:, None] == pred[None]
    n = near.sum(1)
    return torch.where(n > 0, (near & same).sum(1).double() / n.clamp(min=1), torch.zeros_like(n, dtype=torch.float64))
