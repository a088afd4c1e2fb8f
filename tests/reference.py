"""Independent reference computations for the tests: no camkit hooks, plain
per-image, per-target loops with torch.autograd.grad on manually split models."""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def vgg_forward(model: nn.Module, x: Tensor, capture: Sequence[int]) -> Tuple[Tensor, Dict[int, Tensor]]:
    """torchvision VGG forward written out with out-of-place ReLUs; returns the
    logits and the outputs of ``features[i]`` for i in ``capture``."""
    acts: Dict[int, Tensor] = {}
    h = x.detach().requires_grad_(True)
    for i, layer in enumerate(model.features):
        h = F.relu(h) if isinstance(layer, nn.ReLU) else layer(h)
        if i in capture:
            acts[i] = h
    return model.classifier(torch.flatten(model.avgpool(h), 1)), acts


def gradcam_ref(A: Tensor, g: Tensor) -> Tensor:
    """One image, one target: A, g (C, h, w) -> (h, w)."""
    w = g.mean(dim=(1, 2))
    return torch.relu((w[:, None, None] * A).sum(0))


def gradcampp_ref(A: Tensor, g: Tensor) -> Tensor:
    out = torch.zeros(A.shape[1:], dtype=A.dtype)
    for k in range(A.shape[0]):
        gk, ak = g[k], A[k]
        denom = 2 * gk**2 + ak.sum() * gk**3
        alpha = torch.zeros_like(gk)
        nz = denom != 0
        alpha[nz] = gk[nz] ** 2 / denom[nz]
        wk = (alpha * torch.relu(gk)).sum()
        out += wk * ak
    return torch.relu(out)


def layercam_ref(A: Tensor, g: Tensor) -> Tensor:
    return torch.relu((torch.relu(g) * A).sum(0))


REFS: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "gradcam": gradcam_ref,
    "gradcampp": gradcampp_ref,
    "layercam": layercam_ref,
}


def reference_maps(
    forward: Callable[[Tensor], Tuple[Tensor, Dict[object, Tensor]]],
    x: Tensor,
    targets: Tensor,
    method: str,
) -> Dict[object, Tensor]:
    """Per image b and target k: forward image b alone, autograd.grad of its logit."""
    ref = REFS[method]
    out: Dict[object, List[List[Tensor]]] = {}
    for b in range(x.shape[0]):
        for k in range(targets.shape[1]):
            logits, acts = forward(x[b : b + 1])
            keys = list(acts)
            grads = torch.autograd.grad(logits[0, targets[b, k]], [acts[key] for key in keys])
            for key, g in zip(keys, grads):
                out.setdefault(key, [[] for _ in range(x.shape[0])])[b].append(
                    ref(acts[key][0].detach(), g[0])
                )
    return {key: torch.stack([torch.stack(row) for row in rows]) for key, rows in out.items()}


def timm_effnet_forward(model: nn.Module, x: Tensor, capture: Sequence[int]) -> Tuple[Tensor, Dict[int, Tensor]]:
    """timm EfficientNet forward written out block by block; captures ``blocks[i]`` outputs."""
    acts: Dict[int, Tensor] = {}
    h = model.bn1(model.conv_stem(x.detach().requires_grad_(True)))
    for i, block in enumerate(model.blocks):
        h = block(h)
        if i in capture:
            acts[i] = h
            h = h.clone()  # later in-place ops must not touch the captured output
    h = model.bn2(model.conv_head(h))
    return model.forward_head(h), acts
