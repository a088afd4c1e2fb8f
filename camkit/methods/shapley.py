"""ShapleyCAM (Cai et al., "CAMs as Shapley Value-based Explainers", 2025,
arXiv 2501.06261): Grad-CAM's channel weights with a second-order term.

The Shapley value of a layer's activations, to second order, weights each
channel by the mean of ``G - 1/2 H A`` over the positions: ``G (B, K, C, h, w)``
the gradients of the K targets with respect to the layer's output ``A``, and
``H A`` their Hessian-vector products along ``A`` itself. For K targets both
are one batched (vmapped) backward: the gradients with ``create_graph=True``,
then ``H_k A = d <G_k, A> / d A`` differentiated through them.

For a network that is piecewise linear above the layer (ReLU, max-pooling,
linear heads) and a logit target, ``H A = 0`` and ShapleyCAM equals
Grad-CAM; the paper pairs it with its ReST target (``utility="rest"``:
``y_c - CE(y, c) = 2 y_c - logsumexp(y)``), whose softmax term has curvature.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from ..errors import InputError
from .base import NO_PATH, CallContext, _GradientMethod, all_zero
from .eigen import channel_map
from .options import GradientOptions
from .precision import float32_math, work_dtype
from .registry import register_method

UTILITIES = ("score", "rest")


def shapleycam_formula(A: Tensor, G: Tensor, HA: Tensor, eigen: bool = False) -> Tensor:
    """ShapleyCAM: ``w_k = mean_ij(G_k - 1/2 (H A)_k)``, map ``ReLU(sum_k w_k A_k)``.

    Args:
        A: the layer's output ``(B, C, h, w)``.
        G: the targets' gradients ``(B, K, C, h, w)``.
        HA: their Hessian-vector products along ``A``, ``(B, K, C, h, w)``.
        eigen: ``eigen_smooth`` (first principal component instead of the channel sum).

    Returns:
        Raw maps ``(B, K, h, w)``.
    """
    return channel_map((G - 0.5 * HA).mean(dim=(-2, -1)), A, eigen)


def rest_values(values: Tensor, scores: Tensor) -> Tensor:
    """The paper's ReST utility of logit targets: ``y_c - CE(y, c) = 2 y_c - logsumexp(y)``.

    Args:
        values: the targets' logits ``(B, K)``.
        scores: the logits ``(B, C)`` they were taken from.

    Returns:
        ``(B, K)``, with autograd history.
    """
    return 2 * values - torch.logsumexp(scores, dim=1, keepdim=True)


def gradients_and_hvps(values: Tensor, acts: List[Tensor], batched: bool = True) -> List[Tuple[Tensor, Tensor]]:
    """For each activation ``A``: ``G = d values / d A`` and ``H A`` (per target).

    Args:
        values: ``(B, K)`` targets (each image's entries depend only on that image).
        acts: tensors the values depend on through autograd, e.g. ``(B, C, h, w)``.
        batched: one vmapped backward for the K targets (else K calls), for both derivatives.

    Returns:
        One ``(G, HA)`` pair per activation, each ``(B, K, *A.shape[1:])``, detached.
    """
    with torch.enable_grad():
        grads = _grads(values, acts, batched, create_graph=True)
        out = []
        for i, (A, G) in enumerate(zip(acts, grads)):
            if G is None:
                out.append(None)
                continue
            dots = (G * A.detach()[:, None]).flatten(2).sum(-1)  # (B, K): <G_k, A> per image
            # G without autograd history (e.g. a frozen linear head right above the layer): H A = 0
            HA = _second(dots, A, batched, retain=i < len(acts) - 1) if dots.requires_grad else None
            out.append((G.detach(), torch.zeros_like(G) if HA is None else HA))
    return out  # type: ignore[return-value]


def _second(dots: Tensor, A: Tensor, batched: bool, retain: bool) -> Tensor:
    """``H A``: the gradient of ``<G, A>`` with respect to ``A`` (an operation without a double backward,
    such as fused attention, becomes one clear error)."""
    try:
        return _grads(dots, [A], batched, create_graph=False, retain=retain)[0]
    except RuntimeError as e:
        if "derivative for" not in str(e):
            raise
        raise InputError(f"ShapleyCAM needs second derivatives, and an operation of the model has none "
                         f"({str(e).splitlines()[0]}): for fused attention build the model with "
                         "attn_implementation='eager' (transformers) or set fused_attn = False on timm's "
                         "Attention modules") from None


def _grads(values: Tensor, acts: List[Tensor], batched: bool, create_graph: bool, retain: bool = True) -> list:
    """:func:`target_gradients` with ``create_graph`` / ``retain_graph`` (``(B, K, ...)`` or None each)."""
    b, k = values.shape
    eye = torch.eye(k, dtype=values.dtype, device=values.device)
    if batched:
        onehots = eye[:, None, :].expand(k, b, k).contiguous()
        gs = torch.autograd.grad(values, acts, grad_outputs=onehots, is_grads_batched=True, allow_unused=True,
                                 retain_graph=retain, create_graph=create_graph)
        return [None if g is None else g.transpose(0, 1) for g in gs]
    per_k = [torch.autograd.grad(values, acts, grad_outputs=eye[j].expand(b, k), retain_graph=retain or j < k - 1,
                                 create_graph=create_graph, allow_unused=True) for j in range(k)]
    return [None if per_k[0][i] is None else torch.stack([g[i] for g in per_k], dim=1) for i in range(len(acts))]


@dataclass(frozen=True)
class ShapleyOptions(GradientOptions):
    """Plus ``utility``: ``"score"`` (the target as given, pytorch-grad-cam's default) or
    ``"rest"`` (the paper's ReST of logit targets, ``2 y_c - logsumexp(y)``)."""

    utility: str = "score"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.utility not in UTILITIES:
            raise InputError(f"unknown utility {self.utility!r}; choose one of {', '.join(UTILITIES)}")


@register_method("shapleycam", layers="last")
class ShapleyCAM(_GradientMethod):
    """ShapleyCAM: Grad-CAM weights plus the second-order Shapley term, ``mean(G - 1/2 H A)``.
    Two batched backward passes (the second through the first)."""

    Options = ShapleyOptions

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        names, values = self.layer_names, ctx.values
        if self.options.utility == "rest":
            if not getattr(ctx.target, "logit", False) or ctx.scores.dim() != 2:
                raise InputError("utility='rest' needs class targets on (B, C) logits (ints, topk=, 'all')")
            with torch.enable_grad():
                values = rest_values(values, ctx.scores)
        if not values.requires_grad:
            raise InputError(NO_PATH.format(names=list(names)))
        acts = [ctx.acts[n] for n in names]
        pairs = gradients_and_hvps(values, acts, self._batched(acts))
        missing = [n for n, p in zip(names, pairs) if p is None]
        if missing:
            raise InputError(NO_PATH.format(names=missing))
        ctx.flag("zero_gradients", all_zero([g for g, _ in pairs]))
        out: Dict[str, Tensor] = {}
        with float32_math(values.device.type):
            for name, (G, HA) in zip(names, pairs):
                A = self._as_4d(name, ctx.acts[name].detach())
                out[name] = shapleycam_formula(work_dtype(A), work_dtype(self._reshaped(G)),
                                               work_dtype(self._reshaped(HA)), eigen=self.options.eigen_smooth)
        return out
