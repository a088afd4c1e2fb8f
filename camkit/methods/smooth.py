"""Noise-averaged gradients: Smooth Grad-CAM++.

The gradients ``G_i (B, K, C, h, w)`` of the targets at ``n`` noisy copies of
the input (``x + N(0, std^2)``, from a private generator seeded by ``seed``:
the global RNG is not used) are averaged as their first three powers, which
Grad-CAM++'s weights are made of; the activations are the clean input's.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..hooks import ActivationRecorder, LayerSpec
from ..normalize import Normalizer
from ..targets import ClassScore, Target, check_values
from .base import (
    _NO_PATH,
    Output,
    Reshape,
    _as_4d,
    _GradientMethod,
    float32_math,
    select_output,
    target_gradients,
    work_dtype,
)
from .eigen import channel_map
from .gradient import gradcampp_weights
from .options import SmoothOptions
from .rerun import KeepInput


def smoothgradcampp_formula(A: Tensor, D1: Tensor, D2: Tensor, D3: Tensor, eigen: bool = False) -> Tensor:
    """Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ with ``D_p = mean_i G_i^p``:
    ``alpha = D2 / (2 D2 + sum_ab A_k D3)`` (0 where the denominator is 0),
    ``w_k = sum_ij alpha ReLU(D1)``, map ``ReLU(sum_k w_k A_k)``. A ``(B, C, h, w)``
    (clean input), D1..D3 ``(B, K, C, h, w)``."""
    return channel_map(gradcampp_weights(A, D2, D3, D1), A, eigen)


class SmoothGradCAMpp(KeepInput, SmoothOptions, _GradientMethod):
    """Smooth Grad-CAM++: Grad-CAM++ with the gradients averaged over ``num_samples``
    noisy copies of the input (Gaussian noise of standard deviation ``std``, in
    the input's units; ``seed`` seeds a private generator). Targets: class
    targets keep the unperturbed image's classes; others are evaluated on each
    noisy output. Costs ``num_samples`` forward and backward passes after the
    clean forward."""

    def __init__(
        self,
        model: nn.Module,
        layers: Union[LayerSpec, Sequence[LayerSpec]],
        fusion: str = "max",
        weights: Optional[Sequence[float]] = None,
        normalize: Union[str, Normalizer, None] = "minmax",
        reshape: Optional[Reshape] = None,
        channels_last: bool = False,
        batched_backward: bool = True,
        output: Output = None,
        num_samples: int = 4,
        std: float = 0.3,
        seed: int = 0,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> None:
        super().__init__(model, layers, fusion, weights, normalize, reshape, channels_last, batched_backward, output,
                         aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise InputError(f"num_samples must be a positive int, got {num_samples!r}")
        if not float(std) >= 0.0:
            raise InputError(f"std must be a number >= 0, got {std!r}")
        self.num_samples, self.std, self.seed = num_samples, float(std), int(seed)

    def _grads(self, g: Optional[Tensor], name: str) -> Tensor:
        if g is None:
            raise InputError(_NO_PATH.format(names=[name]))
        G = g if self.reshape is None else self.reshape(g.flatten(0, 1)).unflatten(0, g.shape[:2])
        return work_dtype(G)

    def _layer_maps(self, acts: Dict[str, Tensor], scores: Tensor, values: Tensor, target: Target,
                    problems: List[Tuple[str, Optional[Tensor]]]) -> Dict[str, Tensor]:
        x = self._take_input()
        names = self.layer_names
        classes = target.classes(scores) if target.logit else None
        fixed = ClassScore(classes.clamp(min=0)) if classes is not None else target
        gen = torch.Generator().manual_seed(self.seed)
        sums: Dict[str, List[Tensor]] = {}
        recorder = ActivationRecorder(self.model, self.layers, make_differentiable=True, grad_from_first_layer=True)
        with self._recorder.paused():
            for _ in range(self.num_samples):
                noise = torch.randn(x.shape, generator=gen, dtype=torch.float32).mul_(self.std)
                with recorder.recording() as noisy, torch.no_grad():
                    raw = _GradientMethod._run_model(self, x + noise.to(device=x.device, dtype=x.dtype))
                    recorder.check_complete()
                    with torch.enable_grad():
                        v = check_values(fixed(select_output(raw, self.output)), x.shape[0])
                        if classes is not None:
                            v = v * (classes >= 0).to(v.dtype)
                    if not v.requires_grad:
                        raise InputError(_NO_PATH.format(names=names))
                    grads = target_gradients(v, [noisy[n] for n in names], self.batched_backward)
                with float32_math(x.device.type):
                    for n, g in zip(names, grads):
                        G = self._grads(g, n)
                        p = [G, G * G, G * G * G]
                        sums[n] = p if n not in sums else [s + q for s, q in zip(sums[n], p)]
        out: Dict[str, Tensor] = {}
        with float32_math(x.device.type):
            for n in names:
                A = work_dtype(_as_4d(n, acts[n].detach(), self.reshape))
                D1, D2, D3 = (s / self.num_samples for s in sums[n])
                out[n] = smoothgradcampp_formula(A, D1, D2, D3, self.eigen_smooth)
        return out
