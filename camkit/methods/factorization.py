"""Deep Feature Factorization (Collins et al., 2018): non-negative matrix factorization of a layer's
output into concepts.

The batch's activations ``A (B, C, h, w)`` form one ``C x (B h w)`` matrix ``V``, each channel shifted
by its minimum so that it is non-negative (pytorch-grad-cam's shift; 0 for a post-ReLU layer).
``V ~= W H`` with ``n_components`` concepts: ``W (C, n)`` their channel vectors, ``H (n, B h w)``
their heatmaps (:func:`nmf`: alternating non-negative least squares from a seeded random start;
the batch's images share the concepts, as in the paper). Each concept is scaled so that its
heatmap's maximum over the batch is 1, and the concepts are ordered by their share of ``V``
(``|W_j| |H_j|``, largest first). A concept's embedding is ``W_j`` plus the shift; its
per-concept scores are the classifier applied to it (``fc``: the model's GAP + linear head,
found as CAM finds it, or given).

Result shape: a :class:`DFFResult`, a :class:`CAMResult` whose K maps per image are the call's
targets as for every method, each target's map being the heatmap of the concept that scores
highest for the target's class; plus the whole factorization: ``concepts (n, C)``,
``concept_maps (B, n, h, w)`` (raw heatmaps at the layer's resolution), ``concept_scores
(n, classes)`` and ``concept_index (B, K)`` (the concept shown for each target).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import InputError, InputTypeError
from .base import CallContext, Layers, _Method
from .cam import find_classifier
from .options import Options, non_negative, positive_int
from .precision import float32_math, work_dtype
from .registry import register_method
from .result import CAMResult


def nmf(V: Tensor, n: int, max_iter: int = 200, seed: int = 0, tol: float = 1e-4,
        eps: float = 1e-12) -> Tuple[Tensor, Tensor]:
    """``V (C, N) >= 0 ~= W (C, n) H (n, N)``, both non-negative, minimizing ``|V - W H|_F``: rounds of
    hierarchical alternating least squares (Cichocki and Phan, 2009: each row of H, then each column of
    W, set to its non-negative least-squares optimum with the others fixed) from
    ``|N(0, 1)| sqrt(mean(V) / n)`` (scikit-learn's ``init="random"`` scale), drawn from a private CPU
    generator seeded by ``seed``. Stops after ``max_iter`` rounds, or when ten rounds lowered the
    squared error by less than ``tol`` times its value (``tol=0``: never; one host read per ten rounds)."""
    g = torch.Generator().manual_seed(int(seed))
    scale = (V.mean() / n).clamp(min=0).sqrt()
    W = torch.randn(V.shape[0], n, generator=g, dtype=torch.float64).abs().to(V) * scale
    H = torch.randn(n, V.shape[1], generator=g, dtype=torch.float64).abs().to(V) * scale
    vv, last = V.pow(2).sum(), None
    Wt = W.T.contiguous()  # (n, C): W's columns as rows, updated in place like H's rows
    for it in range(max_iter):
        _hals_rows(H, Wt @ V, Wt @ Wt.T, eps)  # each row of H, W fixed
        HHt, HVt = H @ H.T, H @ V.T
        _hals_rows(Wt, HVt, HHt, eps)  # each column of W, H fixed
        if tol > 0 and it % 10 == 9:
            err = float(vv - 2 * (Wt * HVt).sum() + ((Wt @ Wt.T) * HHt).sum())
            if last is not None and last - err < tol * last:
                break
            last = err
    return Wt.T, H


def _hals_rows(X: Tensor, B: Tensor, G: Tensor, eps: float) -> None:
    """One HALS sweep, in place: for j = 0 .. n-1, ``X[j] <- max(0, X[j] + (B[j] - G[j] @ X) / G[j, j])``
    with the rows before j already new (``X (n, N)``, ``B = F @ V (n, N)``, ``G = F @ F.T (n, n)`` for the
    fixed factor F). Written as ``(B[j] - (G[j] - G[j, j] e_j) @ X) / G[j, j]``: two operations per row."""
    d = G.diagonal().clamp(min=eps)[:, None]
    B, G = B / d, G / d
    G.diagonal().sub_(1)
    for j in range(X.shape[0]):
        torch.clamp(torch.addmv(B[j], X.T, G[j], alpha=-1), min=0, out=X[j])


def dff_formula(A: Tensor, n: int, max_iter: int = 200, seed: int = 0, tol: float = 1e-4) -> Tuple[Tensor, Tensor]:
    """Deep Feature Factorization of a batch: A ``(B, C, h, w)`` -> concepts ``(n, C)`` (channel vectors,
    the shift added back) and heatmaps ``(B, n, h, w)`` (each concept's maximum 1; ordered by share)."""
    B, C, h, w = A.shape
    V = A.transpose(0, 1).reshape(C, -1)
    offset = V.amin(dim=1, keepdim=True)
    W, H = nmf(V - offset, n, max_iter, seed, tol)
    peak = H.amax(dim=1)
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    W, H = W * peak, H / peak[:, None]
    order = torch.argsort(W.norm(dim=0) * H.norm(dim=1), descending=True)
    W, H = W[:, order], H[order]
    return (W + offset).T, H.view(n, B, h, w).transpose(0, 1)


class DFFResult(CAMResult):
    """A :class:`CAMResult` plus the factorization (see :mod:`camkit.methods.factorization`).

    Attributes:
        concepts: ``(n, C)`` each concept's channel vector.
        concept_maps: ``(B, n, h, w)`` each concept's heatmap per image, at the layer's resolution.
        concept_scores: ``(n, classes)`` the classifier on each concept's vector.
        concept_index: ``(B, K)`` the concept whose heatmap is target k's map.
    """

    concepts: Tensor
    concept_maps: Tensor
    concept_scores: Tensor
    concept_index: Tensor

    @classmethod
    def of(cls, res: CAMResult, **extra: Tensor) -> DFFResult:
        out = cls.__new__(cls)
        out.__dict__.update(res.__dict__)
        out.__dict__.update(extra)
        return out


@dataclass(frozen=True)
class DFFOptions(Options):
    """Plus ``n_components`` (concepts; at most the layer's channels), ``max_iter`` and ``tol`` (the NMF's
    rounds and stopping tolerance, scikit-learn's defaults), ``seed`` (the NMF start's generator) and ``fc`` (the classifier of the concept vectors: a module or
    its name; None: the model's GAP + linear head)."""

    n_components: int = 5
    max_iter: int = 200
    tol: float = 1e-4
    seed: int = 0
    fc: Union[None, str, nn.Module] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int("n_components", self.n_components)
        positive_int("max_iter", self.max_iter)
        object.__setattr__(self, "tol", non_negative("tol", self.tol))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputTypeError(f"seed must be an int, got {self.seed!r}")
        if self.fc is not None and not isinstance(self.fc, (str, nn.Module)):
            raise InputTypeError(f"fc must be a module or its name, got {type(self.fc).__name__}")


@register_method("dff", layers="last", fuses=False)
class DeepFeatureFactorization(_Method):
    """Deep Feature Factorization on one layer: ``n_components`` concepts shared by the batch, each
    target shown by the concept that scores highest for its class (see the module's notes)."""

    Options = DFFOptions

    def _setup(self) -> None:
        fc = self.options.fc
        if isinstance(fc, str):
            mods = dict(self.model.named_modules())
            if fc not in mods:
                raise InputError(f"unknown fc layer {fc!r}")
            fc = mods[fc]
        self.fc: nn.Module = fc if fc is not None else find_classifier(self.model)[1]

    def _default_layers(self, layers: Layers) -> Layers:
        if isinstance(layers, (list, tuple)) and len(layers) > 1:
            raise InputError(f"Deep Feature Factorization uses one layer, got {len(layers)}")
        return layers

    def _concept_scores(self, concepts: Tensor) -> Tensor:
        dtype = next((p.dtype for p in self.fc.parameters() if p.is_floating_point()), concepts.dtype)
        try:
            return self.fc(concepts.to(dtype))
        except RuntimeError as e:
            raise InputError(f"the classifier fc cannot score the layer's {concepts.shape[1]}-channel concepts "
                             f"({str(e).splitlines()[0]}); pass fc= a module that takes them") from e

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        (name,) = self.layer_names
        A = self._as_4d(name, ctx.acts[name]).detach()
        n = self.options.n_components
        if n > A.shape[1]:
            raise InputError(f"n_components={n} is larger than the layer's {A.shape[1]} channels")
        with float32_math(A.device.type):
            concepts, heat = dff_formula(work_dtype(A), n, self.options.max_iter, self.options.seed, self.options.tol)
        scores = self._concept_scores(concepts).detach()
        classes = ctx.target.classes(ctx.scores)
        if classes is None:
            raise InputError("Deep Feature Factorization shows each target by its best concept: the targets "
                             "must be classes (indices, topk, 'all')")
        index = scores.argmax(dim=0)[classes.clamp(min=0)]  # (B, K)
        ctx.dff = {"concepts": concepts, "concept_maps": heat, "concept_scores": scores,  # type: ignore[attr-defined]
                   "concept_index": index}
        return {name: heat.gather(1, index[..., None, None].expand(-1, -1, *heat.shape[-2:]))}

    def _result(self, ctx: CallContext, layer_maps: Dict[str, Tensor], size: Tuple[int, ...]) -> CAMResult:
        return DFFResult.of(super()._result(ctx, layer_maps, size), **ctx.dff)  # type: ignore[attr-defined]

