"""Trainable CAM heads for a frozen backbone, and the module that joins them.

Shapes: features ``(B, C, h, w)`` from the backbone; the head's class maps
``(B, N, h, w)``; logits ``(B, N)``.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch
from torch import Tensor, nn

from .errors import InputError
from .normalize import Normalizer, get_normalizer


class CAMHead(nn.Module):
    """1x1 conv to ``num_classes`` maps, ReLU, global average pool, bias-free linear.

    The study's head on VGG16 ``features`` + ``AdaptiveAvgPool2d(7)``. Because the
    head ends in GAP + linear, ``cam(features)`` is exactly the class score at
    each position: ``logits == cam(features).mean((2, 3))``.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if in_channels <= 0 or num_classes <= 0:
            raise InputError(f"in_channels and num_classes must be positive, got {in_channels}, {num_classes}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_classes, num_classes, bias=False)

    def _check(self, f: Tensor) -> None:
        if f.dim() != 4 or f.shape[1] != self.in_channels:
            raise InputError(
                f"expected features of shape (B, {self.in_channels}, h, w), got {tuple(f.shape)}"
            )

    def maps(self, f: Tensor) -> Tensor:
        """Class maps after the ReLU: ``(B, C, h, w) -> (B, N, h, w)``, values >= 0."""
        self._check(f)
        return self.relu(self.conv(f))

    def cam(self, f: Tensor) -> Tensor:
        """CAM of every class: the linear layer applied at each position, ``(B, N, h, w)``."""
        return torch.einsum("nk,bkhw->bnhw", self.fc.weight, self.maps(f))

    def forward(self, f: Tensor) -> Tensor:
        """Logits ``(B, N)``."""
        return self.fc(self.pool(self.maps(f)).flatten(1))


class ReCAMHead(CAMHead):
    """The study's ReCAM head: the CAM head's maps re-weighted by the normalized
    CAM of a target class, then pooled and classified again.

    For target class c: ``mask = normalize(CAM_c)`` at the maps' own resolution,
    ``masked = maps * mask``, ``logits = fc(GAP(masked))`` and the ReCAM map is
    ``normalize(fc applied at each position of masked)[c]``. The study resized the
    7x7 CAM to 256x256 and back to 7x7 before masking; that round trip is left
    out here, so the mask is the exact 7x7 CAM.

    The target class is the label during training (pass ``target``) and the
    plain CAM head's top-1 prediction otherwise.
    """

    def __init__(self, in_channels: int, num_classes: int, normalize: Union[str, Normalizer] = "minmax") -> None:
        super().__init__(in_channels, num_classes)
        self.normalize_name = normalize if isinstance(normalize, str) else getattr(normalize, "__name__", "custom")
        self.normalize = get_normalizer(normalize)

    def plain_logits(self, f: Tensor) -> Tensor:
        """The CAM head's logits before re-activation, ``(B, N)``."""
        return super().forward(f)

    def masked(self, maps: Tensor, targets: Tensor) -> Tensor:
        """``maps`` (B, N, h, w) masked by the normalized CAM of each target.

        targets: (B, K) long -> (B, K, N, h, w).
        """
        w = self.fc.weight[targets]  # (B, K, N)
        cams = torch.einsum("bkn,bnhw->bkhw", w, maps)
        mask = self.normalize(cams)
        return maps.unsqueeze(1) * mask.unsqueeze(2)

    def recam(self, f: Tensor, targets: Tensor, normalized: bool = True) -> tuple[Tensor, Tensor]:
        """ReCAM maps and logits for ``targets`` (B, K).

        Returns ``(maps, logits)``: maps ``(B, K, h, w)``, in [0, 1] when
        ``normalized`` (else the raw class scores of the masked maps), and
        logits ``(B, K, N)`` of the re-activated features for each target.
        """
        m = self.masked(self.maps(f), targets)  # (B, K, N, h, w)
        logits = self.fc(m.mean(dim=(-2, -1)))  # (B, K, N)
        w = self.fc.weight[targets]  # (B, K, N)
        raw = torch.einsum("bkn,bknhw->bkhw", w, m)
        return (self.normalize(raw) if normalized else raw), logits

    def forward(self, f: Tensor, target: Optional[Tensor] = None) -> Tensor:
        """Re-activated logits ``(B, N)`` for ``target`` (B,) (default: plain top-1)."""
        maps = self.maps(f)
        if target is None:
            with torch.no_grad():
                target = self.fc(self.pool(maps).flatten(1)).argmax(dim=1)
        target = torch.as_tensor(target, device=f.device).long().reshape(-1, 1)
        if target.shape[0] != f.shape[0]:
            raise InputError(f"expected target of shape ({f.shape[0]},), got {tuple(target.shape)}")
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise InputError(f"target classes must lie in [0, {self.num_classes - 1}]")
        m = self.masked(maps, target)[:, 0]
        return self.fc(self.pool(m).flatten(1))


class CAMModel(nn.Module):
    """A frozen backbone joined to a trainable head: ``forward(x)`` gives logits.

    ``backbone`` maps images ``(B, 3, H, W)`` to features ``(B, C, h, w)`` (for
    the study: VGG16 ``features`` then ``AdaptiveAvgPool2d(7)``). With
    ``freeze=True`` its parameters stop requiring gradients and it stays in eval
    mode even when the joined module is put in training mode.
    """

    def __init__(self, backbone: nn.Module, head: CAMHead, freeze: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.frozen = freeze
        if freeze:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> CAMModel:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def save_head(head: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Save the head's weights alone (a few tens of KB for 512 -> 17)."""
    meta = {"class": type(head).__name__, "in_channels": head.in_channels, "num_classes": head.num_classes}
    if isinstance(head, ReCAMHead):
        meta["normalize"] = head.normalize_name
    torch.save({"meta": meta, "state_dict": head.state_dict()}, path)


def load_head(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu") -> CAMHead:
    """Rebuild a head saved by :func:`save_head`."""
    blob = torch.load(path, map_location=map_location, weights_only=True)
    meta = blob["meta"]
    if meta["class"] == "ReCAMHead":
        head: CAMHead = ReCAMHead(meta["in_channels"], meta["num_classes"], normalize=meta["normalize"])
    elif meta["class"] == "CAMHead":
        head = CAMHead(meta["in_channels"], meta["num_classes"])
    else:
        raise InputError(f"{path}: unknown head class {meta['class']!r}")
    head.load_state_dict(blob["state_dict"])
    return head
