"""Train with maps: a loss on Grad-CAM maps (attention guidance, "right for the right reasons").

    python examples/train_with_maps.py          # a small CNN on synthetic images, 30 steps

``create_graph=True`` keeps each map's autograd graph back to the model's parameters, so a term
of the training loss can be computed from the maps: here the share of each map that falls
outside the object's mask, added to the cross-entropy. camkit's call writes no ``.grad`` and
leaves the model as it found it (it runs its own forward in eval mode: BatchNorm uses its
running statistics there); only the training step's ``loss.backward()`` writes gradients.
CAM, Eigen-CAM and the gradient methods take ``create_graph=True``; the others refuse it.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import camkit


def small_cnn(classes: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(16, classes))


def batch(n: int, size: int, g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images with a square (red: class 0, green: class 1) at a random place, and the squares' masks."""
    x = torch.rand(n, 3, size, size, generator=g) * 0.2
    y = torch.randint(0, 2, (n,), generator=g)
    mask = torch.zeros(n, size, size)
    side = size // 3
    for i in range(n):
        top, left = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=g))
        x[i, int(y[i]), top:top + side, left:left + side] = 1.0
        mask[i, top:top + side, left:left + side] = 1.0
    return x, y, mask


def outside_share(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean share of each map's mass outside its mask: maps (B, H, W) in [0, 1], mask (B, H, W)."""
    return ((maps * (1 - mask)).flatten(1).sum(1) / (maps.flatten(1).sum(1) + 1e-6)).mean()


def train(model: nn.Module, steps: int = 30, size: int = 24, weight: float = 1.0, lr: float = 0.05,
          layer: str = "3") -> Dict[str, List[float]]:
    """``steps`` SGD steps on cross-entropy + ``weight`` * the maps' share outside the masks."""
    cam = camkit.GradCAM(model, layers=[layer], create_graph=True)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    history: Dict[str, List[float]] = {"ce": [], "outside": []}
    for _ in range(steps):
        x, y, mask = batch(16, size, g)
        model.train()
        ce = F.cross_entropy(model(x), y)
        maps = cam(x, targets=y).maps[:, 0]  # (B, H, W), differentiable w.r.t. the parameters
        outside = outside_share(maps, mask)
        opt.zero_grad()
        (ce + weight * outside).backward()
        opt.step()
        history["ce"].append(float(ce.detach()))
        history["outside"].append(float(outside.detach()))
    return history


def main(model: Optional[nn.Module] = None, steps: int = 30) -> Dict[str, List[float]]:
    history = train(model or small_cnn(), steps=steps)
    print(f"cross-entropy {history['ce'][0]:.3f} -> {history['ce'][-1]:.3f}; "
          f"share of the maps outside the object {history['outside'][0]:.3f} -> {history['outside'][-1]:.3f}")
    return history


if __name__ == "__main__":
    main()
