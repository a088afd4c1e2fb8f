"""Trainable CAM heads for a frozen backbone, and the module that joins them.

``CAMHead`` (the Flower-17 study's head), ``ReCAMHead`` (the study's ReCAM),
``PaperReCAMHead`` (ReCAM as Chen et al. 2022 define it), ``CAMModel`` (frozen
backbone + head), ``save_head`` / ``load_head``.

Shapes: features ``(B, C, h, w)`` from the backbone; the head's class maps
``(B, N, h, w)``; logits ``(B, N)``.
"""
from __future__ import annotations

import contextlib
import os
import pickle
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError, InputTypeError
from .normalize import NORMALIZERS, Normalizer, get_normalizer, relu_max


class CAMHead(nn.Module):
    """1x1 conv to ``num_classes`` maps, ReLU, global average pool, bias-free linear.

    The study's head on VGG16 ``features`` + ``AdaptiveAvgPool2d(7)``. Because the
    head ends in GAP + linear, ``cam(features)`` is exactly the class score at
    each position: ``logits == cam(features).mean((2, 3))``.

    Args:
        in_channels (int): ``C``, the features' channels.
        num_classes (int): ``N``.

    Raises:
        InputError: ``in_channels`` or ``num_classes`` not positive; from the
            methods, features not ``(B, C, h, w)``.
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

    def _check_classes(self, t: Tensor) -> None:
        if t.numel() and (t.min() < 0 or t.max() >= self.num_classes):
            raise InputError(f"target classes must lie in [0, {self.num_classes - 1}]")

    def maps(self, f: Tensor) -> Tensor:
        """Class maps after the ReLU.

        Args:
            f (Tensor): Features ``(B, C, h, w)``.

        Returns:
            *Tensor*: ``(B, N, h, w)``, values >= 0.
        """
        self._check(f)
        return self.relu(self.conv(f))

    def cam(self, f: Tensor) -> Tensor:
        """CAM of every class: the linear layer applied at each position.

        Args:
            f (Tensor): Features ``(B, C, h, w)``.

        Returns:
            *Tensor*: ``(B, N, h, w)``.
        """
        return torch.einsum("nk,bkhw->bnhw", self.fc.weight, self.maps(f))

    def forward(self, f: Tensor) -> Tensor:
        """Logits.

        Args:
            f (Tensor): Features ``(B, C, h, w)``.

        Returns:
            *Tensor*: ``(B, N)``.
        """
        return self.fc(self.pool(self.maps(f)).flatten(1))


class ReCAMHead(CAMHead):
    """The study's ReCAM head: the CAM head's maps re-weighted by the normalized
    CAM of a target class, then pooled and classified again.

    For target class c: ``mask = normalize(CAM_c)`` at the maps' own resolution,
    ``masked = maps * mask``, ``logits = fc(GAP(masked))`` and the ReCAM map is
    ``normalize(fc applied at each position of masked)[c]``. The mask is not
    detached: gradients reach the weights through it, as in the study's code. The
    study resized the 7x7 CAM to 256x256 and back to 7x7 (bilinear) before masking;
    that round trip is left out here, so the mask is the exact 7x7 CAM.

    ``forward(f)`` masks by the CAM of the plain CAM head's top-1 class, which is
    what the study's code (``recam_features``) does in training and in evaluation;
    ``forward(f, target=labels)`` masks by the given classes instead.

    Args:
        in_channels (int): ``C``, the features' channels.
        num_classes (int): ``N``.
        normalize (str or callable, optional): The mask's normalizer
            (:func:`camkit.normalize.get_normalizer`). Default: ``"minmax"``.

    Raises:
        InputError: As :class:`CAMHead`, or an unknown normalizer name.
    """

    def __init__(self, in_channels: int, num_classes: int, normalize: Union[str, Normalizer] = "minmax") -> None:
        super().__init__(in_channels, num_classes)
        self.normalize_name = normalize if isinstance(normalize, str) else getattr(normalize, "__name__", "custom")
        self.normalize = get_normalizer(normalize)

    def plain_logits(self, f: Tensor) -> Tensor:
        """The CAM head's logits before re-activation.

        Args:
            f (Tensor): Features ``(B, C, h, w)``.

        Returns:
            *Tensor*: ``(B, N)``.
        """
        return super().forward(f)

    def masked(self, maps: Tensor, targets: Tensor) -> Tensor:
        """``maps`` masked by the normalized CAM of each target.

        Args:
            maps (Tensor): Class maps ``(B, N, h, w)`` (:meth:`maps`).
            targets (Tensor): ``(B, K)`` long class indices.

        Returns:
            *Tensor*: ``(B, K, N, h, w)``.
        """
        w = self.fc.weight[targets]  # (B, K, N)
        cams = torch.einsum("bkn,bnhw->bkhw", w, maps)
        mask = self.normalize(cams)
        return maps.unsqueeze(1) * mask.unsqueeze(2)

    def recam(self, f: Tensor, targets: Tensor, normalized: bool = True) -> tuple[Tensor, Tensor]:
        """ReCAM maps and logits for each target.

        Args:
            f (Tensor): Features ``(B, C, h, w)``.
            targets (Tensor): ``(B, K)`` long class indices.
            normalized (bool, optional): Normalize the maps. Default: True.

        Returns:
            *tuple of Tensor*: ``(maps, logits)``: maps ``(B, K, h, w)``, in
            [0, 1] when ``normalized`` (else the raw class scores of the masked
            maps), and logits ``(B, K, N)`` of the re-activated features for
            each target.
        """
        m = self.masked(self.maps(f), targets)  # (B, K, N, h, w)
        logits = self.fc(m.mean(dim=(-2, -1)))  # (B, K, N)
        w = self.fc.weight[targets]  # (B, K, N)
        raw = torch.einsum("bkn,bknhw->bkhw", w, m)
        return (self.normalize(raw) if normalized else raw), logits

    def forward(self, f: Tensor, target: Optional[Tensor] = None) -> Tensor:
        """Re-activated logits.

        Args:
            f (Tensor): Features ``(B, C, h, w)``.
            target (Tensor, optional): ``(B,)`` class indices; default the
                plain head's top-1.

        Returns:
            *Tensor*: ``(B, N)``.

        Raises:
            InputError: ``target`` not ``(B,)`` or a class outside ``0..N-1``.
        """
        maps = self.maps(f)
        if target is None:
            with torch.no_grad():
                target = self.fc(self.pool(maps).flatten(1)).argmax(dim=1)
        target = torch.as_tensor(target, device=f.device).long().reshape(-1, 1)
        if target.shape[0] != f.shape[0]:
            raise InputError(f"expected target of shape ({f.shape[0]},), got {tuple(target.shape)}")
        self._check_classes(target)
        m = self.masked(maps, target)[:, 0]
        return self.fc(self.pool(m).flatten(1))


class CAMModel(nn.Module):
    """A frozen backbone joined to a trainable head: ``forward(x)`` gives logits.

    ``backbone`` maps images ``(B, 3, H, W)`` to features ``(B, C, h, w)`` (for
    the study: VGG16 ``features`` then ``AdaptiveAvgPool2d(7)``). With
    ``freeze=True`` its parameters stop requiring gradients and it stays in eval
    mode even when the joined module is put in training mode.

    Args:
        backbone (nn.Module): Images ``(B, 3, H, W)`` -> features ``(B, C, h, w)``.
        head (CAMHead): Any camkit head.
        freeze (bool, optional): Default: True.
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
        """As ``nn.Module.train``; a frozen backbone stays in eval mode. Returns ``self``."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> logits ``(B, N)``."""
        return self.head(self.backbone(x))


class PaperReCAMHead(CAMHead):
    """ReCAM as Chen et al. (CVPR 2022, "Class Re-Activation Maps for Weakly-Supervised
    Semantic Segmentation") define it, on the study's CAM head.

    The CAM head (1x1 conv, ReLU, global average pool, bias-free linear ``W = fc.weight``,
    ``(N, N)``) is unchanged and classifies with its plain logits (``forward``). Its
    class maps ``M = maps(f)`` ``(B, N, h, w)`` play the part of the paper's backbone
    features, on which ``W`` computes the CAM of class c: ``CAM_c = sum_k W[c, k] M_k``.
    ReCAM adds a predictor ``W' = predictor.weight`` ``(N, N)``, bias-free (the paper's
    1x1 ``Class_Predictor``). Training loss (:meth:`loss`):

    - single-label ``y`` ``(B,)``: ``CE(logits, y) + lam * CE(W' p_y, y)``;
    - multi-hot ``y`` ``(B, N)``: ``multilabel_soft_margin(logits, y) + lam * sum_b
      mean_{c in y_b} CE(W' p_{b,c}, c) / B``;

    with ``p_c = mean_hw(M * relu_max(CAM_c))`` ``(N,)``: the maps masked by the
    class's CAM after ReLU divided by its max (the mask is not detached), then
    average-pooled. ReCAM map of class c (:meth:`recam_maps`, raw; normalize by the max
    for display): ``ReLU(sum_k W'[c, k] W[c, k] M_k)``, the element-wise product of the
    two weight matrices, as ``CAM.forward2`` in the authors' ``net/resnet50_cam.py``.
    Chen et al. add 1e-5 to the max; :func:`camkit.normalize.relu_max` gives 0 for a map
    with no positive value instead.

    Args:
        in_channels (int): ``C``, the features' channels.
        num_classes (int): ``N``.
        lam (float, optional): The predictor loss's weight, finite and >= 0. Default: 1.0.

    Raises:
        InputError: As :class:`CAMHead`, or a bad ``lam``; from the methods,
            targets that are not integer ``(B,)`` / ``(B, K)`` classes in ``0..N-1``.
    """

    def __init__(self, in_channels: int, num_classes: int, lam: float = 1.0) -> None:
        super().__init__(in_channels, num_classes)
        try:
            lam = float(lam)
        except (TypeError, ValueError):
            raise InputError(f"lam must be a finite number >= 0, got {lam!r}") from None
        if not lam >= 0.0 or lam == float("inf"):
            raise InputError(f"lam must be a finite number >= 0, got {lam}")
        self.lam = lam
        self.predictor = nn.Linear(num_classes, num_classes, bias=False)

    def _targets(self, f: Tensor, targets: Tensor) -> Tensor:
        t = torch.as_tensor(targets, device=f.device)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise InputError(f"targets must be integer class indices, got dtype {t.dtype}")
        t = t.long()
        if t.dim() == 1:
            t = t[:, None]
        if t.dim() != 2 or t.shape[0] != f.shape[0]:
            raise InputError(f"targets must have shape ({f.shape[0]},) or ({f.shape[0]}, K), got {tuple(t.shape)}")
        self._check_classes(t)
        return t

    def pooled(self, f: Tensor, targets: Tensor) -> Tensor:
        """``p`` of each target: the maps masked by its normalized CAM, pooled.

        Args:
            f (Tensor): Features ``(B, C, h, w)``.
            targets (Tensor): ``(B,)`` or ``(B, K)`` class indices.

        Returns:
            *Tensor*: ``(B, K, N)``.
        """
        t = self._targets(f, targets)
        maps = self.maps(f)
        cams = torch.einsum("bkn,bnhw->bkhw", self.fc.weight[t], maps)
        mask = relu_max(cams)
        return torch.einsum("bkhw,bnhw->bkn", mask, maps) / (maps.shape[-2] * maps.shape[-1])

    def predictor_logits(self, f: Tensor, targets: Tensor) -> Tensor:
        """``W' p`` of each target.

        Args:
            f (Tensor): Features ``(B, C, h, w)``.
            targets (Tensor): ``(B,)`` or ``(B, K)`` class indices.

        Returns:
            *Tensor*: ``(B, K, N)``.
        """
        return self.predictor(self.pooled(f, targets))

    def loss(self, f: Tensor, y: Tensor) -> Tensor:
        """The paper's training loss.

        Args:
            f (Tensor): Features ``(B, C, h, w)``.
            y (Tensor): ``(B,)`` labels or ``(B, N)`` multi-hot.

        Returns:
            *Tensor*: 0-d.

        Raises:
            InputError: ``y`` of another shape, or labels outside ``0..N-1``.
        """
        y = torch.as_tensor(y, device=f.device)
        logits = self(f)
        if y.dim() == 1:
            t = self._targets(f, y)[:, 0]
            return F.cross_entropy(logits, t) + self.lam * F.cross_entropy(self.predictor_logits(f, t)[:, 0], t)
        if y.dim() != 2 or y.shape != logits.shape:
            raise InputError(f"y must be labels ({f.shape[0]},) or multi-hot ({f.shape[0]}, {self.num_classes}), "
                             f"got {tuple(y.shape)}")
        y = y.to(logits.dtype)
        cls = F.multilabel_soft_margin_loss(logits, y)
        everyone = torch.arange(self.num_classes, device=f.device).expand(f.shape[0], -1)
        pl = self.predictor_logits(f, everyone)  # (B, N, N): row c predicts from the maps masked by CAM_c
        ce = F.cross_entropy(pl.flatten(0, 1), everyone.flatten(), reduction="none").view_as(y)
        per_image = (ce * (y > 0)).sum(1) / (y > 0).sum(1).clamp(min=1)
        return cls + self.lam * per_image.sum() / f.shape[0]

    def recam_maps(self, f: Tensor, targets: Tensor) -> Tensor:
        """Raw ReCAM maps ``ReLU(sum_k W'[c, k] W[c, k] M_k)`` of each target.

        Normalize each map by its max (:func:`camkit.normalize.relu_max`) to
        get the paper's map.

        Args:
            f (Tensor): Features ``(B, C, h, w)`` (the head's input).
            targets (Tensor): ``(B,)`` or ``(B, K)`` class indices.

        Returns:
            *Tensor*: ``(B, K, h, w)``, >= 0.
        """
        t = self._targets(f, targets)
        combined = self.predictor.weight * self.fc.weight  # (N, N), element-wise
        return torch.einsum("bkn,bnhw->bkhw", combined[t], self.maps(f)).clamp(min=0)


_HEADS = {"CAMHead": CAMHead, "ReCAMHead": ReCAMHead, "PaperReCAMHead": PaperReCAMHead}


def save_head(head: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Save the head's weights alone (a few tens of KB for 512 -> 17).

    A ReCAMHead's normalizer is stored by name, so it must be one of camkit's
    (:data:`camkit.normalize.NORMALIZERS`); a custom callable is refused here
    rather than written to a file that cannot be loaded.

    Args:
        head (nn.Module): A :class:`CAMHead`, :class:`ReCAMHead` or :class:`PaperReCAMHead`.
        path (str or os.PathLike): The file to write.

    Raises:
        InputError: Another type of module, or a ReCAMHead with a custom normalizer.
    """
    if type(head) not in _HEADS.values():
        raise InputTypeError(f"save_head saves camkit heads ({', '.join(_HEADS)}), got {type(head).__name__}")
    meta = {"class": type(head).__name__, "in_channels": head.in_channels, "num_classes": head.num_classes}
    if isinstance(head, ReCAMHead):
        name = next((n for n, fn in NORMALIZERS.items() if fn is head.normalize), None)
        if name is None:
            raise InputError(
                f"cannot save a ReCAMHead whose normalizer is a custom callable ({head.normalize_name!r}): "
                f"save_head stores the normalizer by name, one of {sorted(NORMALIZERS)}. Save "
                "head.state_dict() yourself and rebuild the head with your callable, or use a named normalizer."
            )
        meta["normalize"] = name
    if isinstance(head, PaperReCAMHead):
        meta["lam"] = head.lam
    torch.save({"meta": meta, "state_dict": head.state_dict()}, path)


def _build_head(cls: type, meta: dict, device: Optional[torch.device]) -> CAMHead:
    """The head the metadata describe (on ``device``: ``meta`` allocates nothing)."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        if cls is ReCAMHead:
            return ReCAMHead(meta["in_channels"], meta["num_classes"], normalize=str(meta.get("normalize", "")))
        if cls is PaperReCAMHead:
            return PaperReCAMHead(meta["in_channels"], meta["num_classes"], lam=meta.get("lam", 1.0))
        return CAMHead(meta["in_channels"], meta["num_classes"])


def _check_shapes(path: Union[str, os.PathLike], probe: nn.Module, state: dict, meta: dict) -> None:
    """The file's tensors must be the shapes the metadata claim, before anything is allocated."""
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    if want != got:
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))[:3]
        shown = ", ".join(f"{k}: file {got.get(k)}, expected {want.get(k)}" for k in diff)
        raise InputError(f"{path}: the weights do not fit a {meta['class']}({meta['in_channels']}, "
                         f"{meta['num_classes']}), as its metadata say ({shown})")


def load_head(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu") -> CAMHead:
    """Rebuild a head saved by :func:`save_head`.

    Args:
        path (str or os.PathLike): The file.
        map_location (str or torch.device, optional): Where to load the
            weights. Default: ``"cpu"``.

    Returns:
        *CAMHead*: The head, of the saved class, with its weights.

    Raises:
        InputError: A missing file, or any file :func:`save_head` did not write.
    """
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise InputError(f"no such head file: {path}") from None
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
        raise InputError(f"{path}: not a head file written by camkit.save_head ({type(e).__name__}: {e})") from None
    meta = blob.get("meta") if isinstance(blob, dict) else None
    need = {"class": str, "in_channels": int, "num_classes": int}
    missing = [k for k, tp in need.items() if not isinstance(meta, dict) or not isinstance(meta.get(k), tp)]
    if missing or not isinstance(blob.get("state_dict"), dict):
        what = "no metadata" if not isinstance(meta, dict) else f"metadata without {', '.join(repr(k) for k in missing)}"
        raise InputError(
            f"{path}: a head file written by camkit.save_head holds 'meta' (class, in_channels, num_classes) "
            f"and 'state_dict'; this one has {what if missing else 'no state_dict'}. A bare state_dict loads "
            "with head.load_state_dict(torch.load(path)) into a head you build yourself."
        )
    cls = _HEADS.get(meta["class"])
    if cls is None:
        raise InputError(f"{path}: unknown head class {meta['class']!r}; known: {', '.join(_HEADS)}")
    bad = [k for k in ("in_channels", "num_classes") if isinstance(meta[k], bool) or meta[k] < 1]
    if bad:
        raise InputError(f"{path}: its metadata's {bad[0]} is {meta[bad[0]]!r}, not a positive int")
    _check_shapes(path, _build_head(cls, meta, torch.device("meta")), blob["state_dict"], meta)
    head = _build_head(cls, meta, None)
    try:
        head.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise InputError(f"{path}: the weights do not fit a {meta['class']}({meta['in_channels']}, "
                         f"{meta['num_classes']}): {e}") from None
    return head
