"""Noise-averaged gradients: Smooth Grad-CAM++.

The gradients ``G_i (B, K, C, h, w)`` of the targets at ``n`` noisy copies of
the input (``x + N(0, std^2)``, from a private generator seeded by ``seed``:
the global RNG is not used) are averaged as their first three powers, which
Grad-CAM++'s weights are made of; the activations are the clean input's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import Tensor

from ..hooks import ActivationRecorder
from ..targets import ClassScore, check_values
from .base import CallContext, _GradientMethod
from .eigen import channel_map
from .gradient import gradcampp_weights
from .options import GradientOptions, check_noise
from .output import select_output
from .precision import float32_math, work_dtype
from .registry import register_method


def smoothgradcampp_formula(A: Tensor, D1: Tensor, D2: Tensor, D3: Tensor, eigen: bool = False) -> Tensor:
    """Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ with ``D_p = mean_i G_i^p``:
    ``alpha = D2 / (2 D2 + sum_ab A_k D3)`` (0 where the denominator is 0),
    ``w_k = sum_ij alpha ReLU(D1)``, map ``ReLU(sum_k w_k A_k)``. A ``(B, C, h, w)``
    (clean input), D1..D3 ``(B, K, C, h, w)``."""
    return channel_map(gradcampp_weights(A, D2, D3, D1), A, eigen)


@dataclass(frozen=True)
class SmoothGradOptions(GradientOptions):
    """Plus ``num_samples`` noisy copies of standard deviation ``std`` (in the input's units)
    from a private generator seeded by ``seed``."""

    num_samples: int = 4
    std: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_noise(self)


@register_method("smoothgradcampp", layers="last")
class SmoothGradCAMpp(_GradientMethod):
    """Smooth Grad-CAM++: Grad-CAM++ with the gradients averaged over ``num_samples``
    noisy copies of the input (Gaussian noise of standard deviation ``std``, in
    the input's units; ``seed`` seeds a private generator). Targets: class
    targets keep the unperturbed image's classes; others are evaluated on each
    noisy output. Costs ``num_samples`` forward and backward passes after the
    clean forward."""

    Options = SmoothGradOptions
    volumes = True  # the noise has the input's shape; layers fold as in the base class

    def _noisy_gradients(self, x: Tensor, fixed, classes, recorder: ActivationRecorder,
                         noise: Tensor) -> List[Tensor]:
        """The targets' gradients at each hooked layer for the input ``x + noise``."""
        names = self.layer_names
        with recorder.recording() as noisy, torch.no_grad():
            raw = self._run_model(x + noise.to(device=x.device, dtype=x.dtype))
            recorder.check_complete()
            with torch.enable_grad():
                v = check_values(fixed(select_output(raw, self.options.output)), x.shape[0])
                if classes is not None:
                    v = v * (classes >= 0).to(v.dtype)
            return self._gradients(v, [noisy[n] for n in names], names)

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        x, o, names = ctx.x, self.options, self.layer_names
        classes = ctx.target.classes(ctx.scores) if ctx.target.logit else None
        fixed = ClassScore(classes.clamp(min=0)) if classes is not None else ctx.target
        gen = torch.Generator().manual_seed(o.seed)
        sums: Dict[str, List[Tensor]] = {}
        recorder = ActivationRecorder(self.model, self.layers, make_differentiable=True, grad_from_first_layer=True)
        with self._recorder.paused():
            for _ in range(o.num_samples):
                noise = torch.randn(x.shape, generator=gen, dtype=torch.float32).mul_(o.std)
                grads = self._noisy_gradients(x, fixed, classes, recorder, noise)
                with float32_math(x.device.type):
                    for n, g in zip(names, grads):
                        G = work_dtype(self._reshaped(g))
                        p = [G, G * G, G * G * G]
                        sums[n] = p if n not in sums else [s + q for s, q in zip(sums[n], p)]
        out: Dict[str, Tensor] = {}
        with float32_math(x.device.type):
            for n in names:
                A = work_dtype(self._as_4d(n, ctx.acts[n].detach()))
                D1, D2, D3 = (s / o.num_samples for s in sums[n])
                out[n] = smoothgradcampp_formula(A, D1, D2, D3, o.eigen_smooth)
        return out
