"""Activation methods beside Eigen-CAM: KPCA-CAM, FEM and RandomCAM read a layer's output
``A (B, C, h, w)`` only (no gradients); Seg-Eigen-CAM adds the targets' gradients
``G (B, K, C, h, w)``. One short function per formula, raw maps ``(B, h, w)`` (class-agnostic)
or ``(B, K, h, w)``; the classes name the formula and its options.

* KPCA-CAM (Karmani et al., 2024): the projection of each position's (centered) channel vector
  on the first kernel principal component (:func:`kpca_projection`), ReLU.
* FEM (Fuad et al., 2020): per channel the binary mask ``A_c >= mu_c + k sigma_c`` (mean and
  standard deviation over the positions), weighted by ``mu_c`` and summed over the channels.
* RandomCAM (pytorch-grad-cam's sanity baseline): ``ReLU(sum_c w_c A_c)`` with ``w`` uniform in
  [-1, 1), drawn per image, target and channel from a private generator seeded by ``seed``.
* Seg-Eigen-CAM (Chung and Ying, 2025): the eigen projection of ``|G| * A``, its sign chosen so
  that ``|max| >= |min|`` (their Eq. 13), ReLU.

Every principal direction's sign is arbitrary. KPCA-CAM's is the one whose projection
correlates positively with the centered channel sum (for the linear kernel this is Eigen-CAM's
rule, loadings summing to >= 0); Seg-Eigen-CAM's is the paper's rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError
from .base import CallContext, _GradientMethod, _Method
from .eigen import channel_map, eigen_projection, element_map
from .options import GradientOptions, SmoothingOptions, non_negative, positive_int
from .precision import float32_math, work_dtype
from .registry import register_method

#: KPCA-CAM's kernels (scikit-learn's names and parameters): ``k(x, y)`` of two channel vectors.
KERNELS = ("linear", "rbf", "sigmoid", "poly", "cosine")


# --------------------------------------------------------------------------- formulas


def kernel_matrix(X: Tensor, kernel: str = "sigmoid", gamma: Optional[float] = None, coef0: float = 1.0,
                  degree: int = 3) -> Tensor:
    """The kernel of every pair of rows: X ``(..., n, C)`` -> ``(..., n, n)``.

    ``linear`` x.y; ``rbf`` exp(-gamma |x - y|^2); ``sigmoid`` tanh(gamma x.y + coef0);
    ``poly`` (gamma x.y + coef0)^degree; ``cosine`` x.y / (|x| |y|) (0 for a zero row).
    ``gamma`` None: 1 / C (scikit-learn's default).
    """
    if kernel not in KERNELS:
        raise InputError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    g = 1.0 / X.shape[-1] if gamma is None else float(gamma)
    dot = X @ X.transpose(-1, -2)
    if kernel == "linear":
        return dot
    if kernel == "rbf":
        sq = X.pow(2).sum(dim=-1)
        return torch.exp(-g * (sq[..., :, None] + sq[..., None, :] - 2 * dot).clamp(min=0))
    if kernel == "sigmoid":
        return torch.tanh(g * dot + coef0)
    if kernel == "poly":
        return (g * dot + coef0).pow(degree)
    norm = X.norm(dim=-1)
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    return dot / (norm[..., :, None] * norm[..., None, :])


def kpca_projection(A: Tensor, kernel: str = "sigmoid", gamma: Optional[float] = None, coef0: float = 1.0,
                    degree: int = 3, n_components: int = 1) -> Tensor:
    """Kernel PCA of each image's positions: ``(B, C, h, w) -> (B, h, w)``.

    The ``h * w`` channel vectors are centered (their mean over the positions removed, as
    pytorch-grad-cam does), their kernel matrix ``K`` (:func:`kernel_matrix`) is centered in feature
    space (``K - 1K/n - K1/n + 1K1/n^2``), and each position's coordinate on the j-th component is
    ``sqrt(lambda_j) u_j`` (``u_j`` the unit eigenvector of the j-th largest eigenvalue; scikit-learn's
    ``KernelPCA.fit_transform``). Each component's sign makes it correlate positively with the centered
    channel sum; the map is the sum of the first ``n_components`` coordinates. An image whose
    activations hold a NaN or an Inf comes out all NaN.
    """
    X = A.flatten(-2).transpose(-1, -2)  # (B, n, C)
    finite = torch.isfinite(X).flatten(-2).all(dim=-1)
    X = torch.where(torch.isfinite(X), X, torch.zeros_like(X))
    X = X - X.mean(dim=-2, keepdim=True)
    K = kernel_matrix(X, kernel, gamma, coef0, degree)
    K = K - K.mean(dim=-1, keepdim=True) - K.mean(dim=-2, keepdim=True) + K.mean(dim=(-2, -1), keepdim=True)
    evals, evecs = torch.linalg.eigh(K)  # ascending
    top = evecs[..., -n_components:] * evals[..., None, -n_components:].clamp(min=0).sqrt()  # (B, n, j)
    s = X.sum(dim=-1, keepdim=True)  # (B, n, 1): the centered channel sum
    top = torch.where((top * s).sum(dim=-2, keepdim=True) < 0, -top, top)
    proj = top.sum(dim=-1)
    proj = torch.where(finite[:, None], proj, torch.full_like(proj, float("nan")))
    return proj.unflatten(-1, A.shape[-2:])


def kpcacam_formula(A: Tensor, kernel: str = "sigmoid", gamma: Optional[float] = None, coef0: float = 1.0,
                    degree: int = 3, n_components: int = 1) -> Tensor:
    """KPCA-CAM: ``ReLU(kpca_projection(A))``, ``(B, C, h, w) -> (B, h, w)``."""
    return kpca_projection(A, kernel, gamma, coef0, degree, n_components).clamp_(min=0)


def fem_formula(A: Tensor, k: float = 2.0, mask_weights: bool = False) -> Tensor:
    """FEM (Fuad et al., 2020): ``ReLU(sum_c mu_c [A_c >= mu_c + k sigma_c])``, ``(B, C, h, w) -> (B, h, w)``
    (``mu_c``, ``sigma_c`` the mean and population standard deviation of channel c over the positions).
    ``mask_weights=True``: pytorch-grad-cam's variant ``ReLU(sum_c mean([A_c > mu_c + k sigma_c]) A_c)``."""
    mu = A.mean(dim=(-2, -1), keepdim=True)
    th = mu + k * A.std(dim=(-2, -1), keepdim=True, correction=0)
    if mask_weights:
        return ((A > th).to(A.dtype).mean(dim=(-2, -1), keepdim=True) * A).sum(dim=-3).clamp_(min=0)
    return (mu * (A >= th).to(A.dtype)).sum(dim=-3).clamp_(min=0)


def fem_contributions(A: Tensor, k: float = 2.0, mask_weights: bool = False) -> Tensor:
    """FEM's per-channel terms ``E (B, C, h, w)`` before the channel sum (for ``eigen_smooth``)."""
    mu = A.mean(dim=(-2, -1), keepdim=True)
    th = mu + k * A.std(dim=(-2, -1), keepdim=True, correction=0)
    if mask_weights:
        return (A > th).to(A.dtype).mean(dim=(-2, -1), keepdim=True) * A
    return mu * (A >= th).to(A.dtype)


def randomcam_formula(A: Tensor, w: Tensor, eigen: bool = False) -> Tensor:
    """RandomCAM: ``ReLU(sum_c w_c A_c)``: w ``(B, K, C)``, A ``(B, C, h, w)`` -> ``(B, K, h, w)``."""
    return channel_map(w, A, eigen)


def random_weights(shape: tuple, seed: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Uniform weights in [-1, 1) of ``shape``, from a private CPU generator seeded by ``seed``
    (the same for every device; the global RNG is not consumed)."""
    g = torch.Generator().manual_seed(int(seed))
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).to(device=device, dtype=dtype)


def segeigencam_formula(A: Tensor, G: Tensor, eigen: bool = True) -> Tensor:
    """Seg-Eigen-CAM (Chung and Ying, 2025): ``p = eigen_projection(|G| * A)`` (their Eq. 10-12), negated
    where ``|min p| > |max p|`` (Eq. 13), ReLU: A ``(B, C, h, w)``, G ``(B, K, C, h, w)`` -> ``(B, K, h, w)``."""
    p = eigen_projection(G.abs() * A[:, None])
    flip = p.flatten(-2).amin(dim=-1).abs() > p.flatten(-2).amax(dim=-1).abs()
    return torch.where(flip[..., None, None], -p, p).clamp_(min=0)


# --------------------------------------------------------------------------- options


def _no_eigen(opts: SmoothingOptions, method: str) -> None:
    if opts.eigen_smooth:
        raise InputError(f"{method} is a principal-component projection already: eigen_smooth does not apply")


@dataclass(frozen=True)
class KPCAOptions(SmoothingOptions):
    """Plus the kernel: ``kernel`` (one of :data:`KERNELS`, default ``"sigmoid"``, pytorch-grad-cam's),
    ``gamma`` (None: 1 / channels), ``coef0``, ``degree`` (scikit-learn's meanings and defaults) and
    ``n_components`` (the map sums the first ones' projections; at most the layer's channels)."""

    kernel: str = "sigmoid"
    gamma: Optional[float] = None
    coef0: float = 1.0
    degree: int = 3
    n_components: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _no_eigen(self, "KPCA-CAM")
        if self.kernel not in KERNELS:
            raise InputError(f"unknown kernel {self.kernel!r}; choose one of {', '.join(KERNELS)}")
        if self.gamma is not None:
            object.__setattr__(self, "gamma", non_negative("gamma", self.gamma))
        if isinstance(self.coef0, bool) or not isinstance(self.coef0, (int, float)):
            raise InputTypeError(f"coef0 must be a number, got {self.coef0!r}")
        positive_int("degree", self.degree)
        positive_int("n_components", self.n_components)


@dataclass(frozen=True)
class FEMOptions(SmoothingOptions):
    """Plus ``k`` (the threshold is ``mu + k sigma``; default 2) and ``mask_weights`` (pytorch-grad-cam's
    variant: the masks' means weight the activations, instead of the channel means weighting the masks)."""

    k: float = 2.0
    mask_weights: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.k, bool) or not isinstance(self.k, (int, float)) or self.k != self.k:
            raise InputTypeError(f"k must be a number, got {self.k!r}")
        object.__setattr__(self, "mask_weights", bool(self.mask_weights))


@dataclass(frozen=True)
class RandomOptions(SmoothingOptions):
    """Plus ``seed``: the private generator's seed (the same weights on every call)."""

    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputTypeError(f"seed must be an int, got {self.seed!r}")


@dataclass(frozen=True)
class SegEigenOptions(GradientOptions):
    """Gradient options; ``eigen_smooth`` does not apply (the map is a projection already)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _no_eigen(self, "Seg-Eigen-CAM")


# --------------------------------------------------------------------------- classes


class _ActivationMethod(_Method):
    """Gradient-free, one formula of each layer's output."""

    def _map(self, A: Tensor, k: int) -> Tensor:
        """One layer's raw maps ``(B, K, h, w)`` for K targets from its output ``(B, C, h, w)``."""
        raise NotImplementedError

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        out: Dict[str, Tensor] = {}
        for name in self.layer_names:
            A = self._as_4d(name, ctx.acts[name])
            with float32_math(A.device.type):
                out[name] = self._map(work_dtype(A), ctx.values.shape[1])
        return out


@register_method("kpcacam", layers="last")
class KPCACAM(_ActivationMethod):
    """KPCA-CAM: the first kernel principal component of a layer's output (no gradients;
    class-agnostic: every target of an image gets the same map). Options: ``kernel``, ``gamma``,
    ``coef0``, ``degree``, ``n_components`` (:class:`KPCAOptions`)."""

    Options = KPCAOptions

    def _map(self, A: Tensor, k: int) -> Tensor:
        o = self.options
        if o.n_components > A.shape[1]:
            raise InputError(f"n_components={o.n_components} is larger than the layer's {A.shape[1]} channels")
        if o.n_components > A.shape[-2] * A.shape[-1]:
            raise InputError(f"n_components={o.n_components} is larger than the layer's "
                             f"{A.shape[-2] * A.shape[-1]} positions")
        m = kpcacam_formula(A, o.kernel, o.gamma, float(o.coef0), o.degree, o.n_components)
        return m[:, None].expand(-1, k, -1, -1)


@register_method("fem", layers="last")
class FEM(_ActivationMethod):
    """FEM: channel-mean-weighted k-sigma masks of a layer's output (no gradients; class-agnostic).
    ``eigen_smooth`` reduces the per-channel terms by their first principal component."""

    Options = FEMOptions

    def _map(self, A: Tensor, k: int) -> Tensor:
        o = self.options
        if o.eigen_smooth:
            m = element_map(fem_contributions(A, float(o.k), o.mask_weights)[:, None], eigen=True)[:, 0]
        else:
            m = fem_formula(A, float(o.k), o.mask_weights)
        return m[:, None].expand(-1, k, -1, -1)


@register_method("randomcam", layers="last")
class RandomCAM(_ActivationMethod):
    """RandomCAM, a sanity baseline: random channel weights, uniform in [-1, 1), one per image,
    target and channel, from a private generator seeded by ``seed`` (every call draws the same;
    the global RNG is not touched). No gradients."""

    Options = RandomOptions

    def _map(self, A: Tensor, k: int) -> Tensor:
        w = random_weights((A.shape[0], k, A.shape[1]), self.options.seed, A.dtype, A.device)
        return randomcam_formula(A, w, self.options.eigen_smooth)


@register_method("segeigencam", layers="last")
class SegEigenCAM(_GradientMethod):
    """Seg-Eigen-CAM: the first principal component of ``|G| * A`` with the paper's sign rule."""

    Options = SegEigenOptions
    formula = staticmethod(segeigencam_formula)
