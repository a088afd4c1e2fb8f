"""Presets for torchvision's video classifiers: inputs ``(B, 3, T, H, W)``, maps ``(B, K, T, H, W)``.

:func:`video_fields` gives the :class:`camkit.adapters.Preset` fields (``presets.resolve`` builds the
preset from them), read from the model's class and structure, with one dry run on a small random
clip ``(1, C, 4, 32, 32)`` (S3D: its ``features`` alone, on ``(1, C, 8, 64, 64)``) where a question needs one:

* **R3D-18, MC3-18, R(2+1)D-18** (``VideoResNet``): LayerCAM ``layer2``, ``layer3``, ``layer4``;
  Grad-CAM and CAM ``layer4`` with ``fc`` (the dry run confirms ``fc(GAP(layer4)) == logits``).
* **S3D**: the last child of ``features`` at each of the three coarsest ``(t, h, w)`` resolutions
  (``features.6``, ``.12``, ``.15``); Grad-CAM the last (``features.15``). No CAM: its head averages
  a stride-1 ``(2, 7, 7)`` pooling, which is global average pooling only for one clip size.
* **Video Swin** (``swin3d_t`` / ``_s`` / ``_b``): its stages and ``norm`` return channels-last
  ``(B, t, h, w, C)``, read through :func:`ndhwc_to_ncdhw`; LayerCAM the three coarsest stage ends
  (``features.2``, ``.4``, ``.6``); Grad-CAM and CAM ``norm`` (the pooling's input) with ``fc`` ``head``.
* **MViT** (``mvit_v1_b``, ``mvit_v2_s``): ``norm1`` of the last three blocks, their tokens
  ``(B, 1 + t*h*w, C)`` laid out on the block's token grid by :class:`VideoTokens` (the class token
  dropped; the grids computed from the model's patch embedding and query pooling); Grad-CAM the last
  block's ``norm1``. No CAM (class-token pooling). MViT takes one clip size only
  (:func:`clip_size`, 16 x 224 x 224 for torchvision's), so no dry run is made.

``task`` is ``"video"``: scores ``(B, num_classes)`` of clips ``(B, C, T, H, W)``, explained per class as
a classifier's are; the command line's ``explain`` / ``export`` / ``evaluate`` (images) refuse it.
The transform is torchvision's ``VideoClassification`` of the family's Kinetics-400 weights
(built offline, nothing downloaded): a ``(T, C, H, W)`` uint8 or float clip -> ``(C, T, H', W')``
resized, center-cropped to ``input_size`` and normalized. A model on the meta device is read from
its structure alone (the dry run then checks shapes, not values).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from camkit.errors import InputError
from camkit.hooks import dry_run
from camkit.methods import gap_linear_mismatch
from camkit.methods.volume import conv3d_channels, fold

PROBE = (4, 32, 32)  # the dry run's clip (T, H, W): small and cheap (S3D's features need (8, 64, 64))
S3D_PROBE = (8, 64, 64)


def ndhwc_to_ncdhw(t: Tensor) -> Tensor:
    """Channels-last video maps ``(B, t, h, w, C)`` (video Swin's stages) as ``(B, C, t, h, w)``."""
    if t.dim() != 5:
        raise InputError(f"expected channels-last video maps (B, t, h, w, C), got {tuple(t.shape)}")
    return t.permute(0, 4, 1, 2, 3)


class VideoTokens:
    """Turn video transformer tokens ``(B, N, C)`` into maps ``(B, C, t, h, w)``.

    The first ``num_prefix_tokens`` (MViT: the class token) are dropped; the ``t*h*w`` others are
    laid out on the one grid of ``grids`` with that many positions (MViT's tokens are ordered
    time, row, column). 5-D inputs pass through unchanged.
    """

    def __init__(self, num_prefix_tokens: int, grids: Sequence[Tuple[int, int, int]]) -> None:
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.grids = tuple(tuple(int(s) for s in g) for g in grids)

    def __call__(self, t: Tensor) -> Tensor:
        if t.dim() == 5:
            return t
        if t.dim() != 3:
            raise InputError(f"expected video tokens of shape (B, N, C), got {tuple(t.shape)}")
        n = t.shape[1] - self.num_prefix_tokens
        grid = next((g for g in self.grids if g[0] * g[1] * g[2] == n), None)
        if grid is None:
            raise InputError(f"{t.shape[1]} tokens minus {self.num_prefix_tokens} class token = {n} patch tokens, "
                             f"which fit none of the model's token grids {list(self.grids)} (MViT takes one clip size)")
        return t[:, self.num_prefix_tokens:].transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)

    def __repr__(self) -> str:
        return f"VideoTokens(num_prefix_tokens={self.num_prefix_tokens}, grids={list(self.grids)})"


def _video_types() -> Dict[str, type]:
    from torchvision.models.video.mvit import MViT
    from torchvision.models.video.resnet import VideoResNet
    from torchvision.models.video.s3d import S3D
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    return {"resnet": VideoResNet, "s3d": S3D, "swin": SwinTransformer3d, "mvit": MViT}


def _kind(model: nn.Module) -> Optional[str]:
    return next((k for k, cls in _video_types().items() if isinstance(model, cls)), None)


def is_video_model(model: nn.Module) -> bool:
    """Whether ``model`` is one of torchvision's video classifiers (VideoResNet, S3D, video Swin, MViT)."""
    return _kind(model) is not None


def _weights(kind: str) -> Any:
    """The Kinetics-400 weights enum member whose transform the family uses (no download)."""
    import torchvision.models.video as tvv

    return {"resnet": tvv.R3D_18_Weights, "s3d": tvv.S3D_Weights, "swin": tvv.Swin3D_T_Weights,
            "mvit": tvv.MViT_V2_S_Weights}[kind].KINETICS400_V1


def clip_size(model: nn.Module) -> Tuple[int, int, int]:
    """``(T, H, W)`` of the clips the family's Kinetics-400 weights were made for; for MViT the only
    size the model takes (its token grid is fixed when it is built)."""
    kind = _kind(model)
    if kind is None:
        raise InputError(f"{type(model).__name__} is not a torchvision video model")
    if kind == "mvit":
        pe, stride = model.pos_encoding, model.conv_proj.stride
        return (pe.temporal_size * stride[0], pe.spatial_size[0] * stride[1], pe.spatial_size[1] * stride[2])
    crop = _weights(kind).transforms().crop_size
    frames = {"resnet": 16, "s3d": 128, "swin": 32}[kind]  # the weights' clip_len (torchvision's docs)
    return frames, int(crop[0]), int(crop[-1])


def probe_clip(model: nn.Module, size: Sequence[int] = PROBE) -> Tensor:
    """A random clip ``(1, C, *size)`` (``size`` ``(T, H, W)``; C the first Conv3d's input channels) in the
    model's dtype and device, from a private generator (the global RNG is not consumed)."""
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, conv3d_channels(model), *size, generator=g)
    return x if ref is None else x.to(device=ref.device, dtype=ref.dtype)


def _stage_ends(kept: Dict[str, Tensor], names: Sequence[str], count: int = 3) -> Tuple[str, ...]:
    """The last of ``names`` at each of the ``count`` coarsest ``(t, h, w)`` output resolutions."""
    ends: List[Tuple[str, Tuple[int, ...]]] = []
    for name in names:
        out = kept.get(name)
        if out is None or out.dim() != 5:
            break
        thw = tuple(int(s) for s in out.shape[2:])
        if ends and ends[-1][1] == thw:
            ends[-1] = (name, thw)
        else:
            ends.append((name, thw))
    return tuple(n for n, _ in ends[-count:])


def _gap_linear(features: Tensor, logits: Any, fc: nn.Module) -> bool:
    """Does ``fc(GAP(features))`` give ``logits``? ``features`` ``(B, C, t, h, w)``; on the meta
    device (no values) the shapes alone are checked."""
    if not isinstance(logits, Tensor) or not isinstance(fc, nn.Linear) or features.dim() != 5:
        return False
    if features.device.type == "meta":
        return features.shape[1] == fc.in_features and tuple(logits.shape) == (features.shape[0], fc.out_features)
    return not bool(gap_linear_mismatch(fold(features), logits, fc))


def _children(seq: nn.Module, prefix: str) -> List[str]:
    return [f"{prefix}{n}" for n, _ in seq.named_children()]


def _resnet(model: nn.Module) -> Dict[str, Any]:
    layers = ("layer2", "layer3", "layer4")
    kept, logits = dry_run(model, probe_clip(model), names=["layer4"])
    ok = _gap_linear(kept["layer4"], logits, model.fc)
    return {"family": "tv-video-resnet", "layers": layers, "gradcam_layer": "layer4",
            "cam_layer": "layer4" if ok else None, "fc": "fc" if ok else None}


def _s3d(model: nn.Module) -> Dict[str, Any]:
    children = _children(model.features, "features.")
    kept, _ = dry_run(model, probe_clip(model, S3D_PROBE), names=children, run=model.features)
    layers = _stage_ends(kept, children)
    return {"family": "tv-s3d", "layers": layers, "gradcam_layer": children[-1]}


def _swin(model: nn.Module) -> Dict[str, Any]:
    children = _children(model.features, "features.")
    kept, logits = dry_run(model, probe_clip(model), names=children + ["norm"])
    layers = _stage_ends({n: ndhwc_to_ncdhw(o) for n, o in kept.items() if o.dim() == 5}, children)
    ok = _gap_linear(ndhwc_to_ncdhw(kept["norm"]), logits, model.head)
    return {"family": "tv-video-swin", "layers": layers, "gradcam_layer": "norm", "reshape": ndhwc_to_ncdhw,
            "cam_layer": "norm" if ok else None, "fc": "head" if ok else None,
            "cam_reshape": ndhwc_to_ncdhw if ok else None}


def _pooled(n: int, pool: nn.Module, dim: int) -> int:
    """The size of dimension ``dim`` after a pooling / convolution ``pool`` (floor, as torch computes)."""
    def at(v: Any) -> int:
        return int(v[dim]) if isinstance(v, (tuple, list)) else int(v)

    return (n + 2 * at(pool.padding) - at(pool.kernel_size)) // at(pool.stride) + 1


def mvit_grids(model: nn.Module) -> List[Tuple[int, int, int]]:
    """The token grid ``(t, h, w)`` each block of an MViT reads (its input's; a block's query pooling
    gives the next block's), from the model's fixed patch grid."""
    pe = model.pos_encoding
    thw = (int(pe.temporal_size), int(pe.spatial_size[0]), int(pe.spatial_size[1]))
    grids = []
    for block in model.blocks:
        grids.append(thw)
        pool_q = getattr(block.attn, "pool_q", None)
        if pool_q is not None:
            thw = tuple(_pooled(n, pool_q.pool, d) for d, n in enumerate(thw))  # type: ignore[assignment]
    return grids


def _mvit(model: nn.Module) -> Dict[str, Any]:
    n = len(model.blocks)
    picked = list(range(max(0, n - 3), n))
    layers = tuple(f"blocks.{i}.norm1" for i in picked)
    grids = mvit_grids(model)
    return {"family": "tv-mvit", "layers": layers, "gradcam_layer": layers[-1],
            "reshape": VideoTokens(1, sorted({grids[i] for i in picked}))}


def _categories(model: nn.Module, kind: str) -> Tuple[str, ...]:
    head = {"resnet": "fc", "s3d": "classifier.1", "swin": "head", "mvit": "head.1"}[kind]
    layer = model.get_submodule(head)
    n = int(getattr(layer, "out_features", 0) or getattr(layer, "out_channels", 0))
    cats = _weights(kind).meta["categories"]
    return tuple(cats) if len(cats) == n else tuple(f"class {k}" for k in range(n))


def video_fields(model: nn.Module) -> Dict[str, Any]:
    """The :class:`camkit.adapters.Preset` fields of a torchvision video classifier (see the module)."""
    kind = _kind(model)
    if kind is None:
        raise InputError(f"{type(model).__name__} is not a torchvision video model")
    fields = {"resnet": _resnet, "s3d": _s3d, "swin": _swin, "mvit": _mvit}[kind](model)
    tf = _weights(kind).transforms()
    fields["layer_sets"] = {"default": fields["layers"]}
    return {**fields, "task": "video", "transform": tf, "mean": tuple(float(v) for v in tf.mean),
            "std": tuple(float(v) for v in tf.std), "input_size": (int(tf.crop_size[0]), int(tf.crop_size[-1])),
            "categories": _categories(model, kind)}
