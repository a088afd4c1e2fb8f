"""Where the network's input lies in the original photo, and maps put back there.

A preset's transform resizes and center-crops the photo before the model sees
it, so a map computed on the network input covers only part of the photo, at
another scale. :func:`crop_box` finds that part, in original-pixel
coordinates; :func:`to_original` resamples maps onto the photo's own pixel
grid so that an overlay on the photo is aligned.

The geometry is read from the transform, not re-implemented: every resize
step is run on an empty ``meta`` tensor of the current size (torchvision's or
timm's own code gives the new size), every center-crop step on a view of a
row and a column index (its own code gives the offsets, padding included).
Understood steps: torchvision ``Compose`` (v1 and v2), ``Resize``,
``CenterCrop``, the weights' ``ImageClassification`` and
``SemanticSegmentation`` presets, timm's ``ResizeKeepRatio`` (without random
scale or aspect) and ``CenterCropOrPad``, and the steps that keep the
geometry (to-tensor, dtype conversion, ``Normalize``, ``Grayscale``). Anything
else (random crops, flips, a ``Lambda``, a plain function) is refused with an
:class:`~camkit.errors.InputError`: camkit cannot know where it put the pixels.

Coordinates are continuous: pixel ``i`` spans ``[i, i + 1)``, as in PIL's and
torch's resizing (``align_corners=False``).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError, InputTypeError

Box = Tuple[float, float, float, float]
SizeLike = Union[Sequence[int], Any]  # (H, W), a PIL image, an (H, W, C) array or a (C, H, W) tensor
Step = Tuple[str, Callable[[Tensor], Tensor]]


# --------------------------------------------------------------------------- parsing the transform

def _classes(module: Any, names: Sequence[str]) -> Tuple[type, ...]:
    return tuple(getattr(module, n) for n in names if isinstance(getattr(module, n, None), type))


def _known() -> Tuple[Tuple[type, ...], ...]:
    """(composes, resizes, crops, geometry-neutral steps) of torchvision v1/v2 and timm."""
    from torchvision import transforms as T
    from torchvision.transforms import v2

    neutral = ("ToTensor", "PILToTensor", "ConvertImageDtype", "Normalize", "Grayscale", "ToImage", "ToDtype",
               "ToPureTensor")
    composes = _classes(T, ["Compose"]) + _classes(v2, ["Compose"])
    resizes = _classes(T, ["Resize"]) + _classes(v2, ["Resize"])
    crops = _classes(T, ["CenterCrop"]) + _classes(v2, ["CenterCrop"])
    keep = _classes(T, neutral) + _classes(v2, neutral)
    try:
        import timm.data.transforms as tt

        keep += _classes(tt, ["MaybeToTensor", "MaybePILToTensor", "ToTensor"])
    except ImportError:  # pragma: no cover - timm is a dependency
        pass
    return composes, resizes, crops, keep


def _steps(transform: Any) -> List[Step]:
    """The transform's geometric steps, in order: ("resize" | "crop", fn on a (C, H, W) tensor)."""
    if transform is None:
        return []
    import torchvision.transforms.functional as TF
    from torchvision.transforms import _presets

    composes, resizes, crops, keep = _known()
    if isinstance(transform, composes):
        return [s for t in transform.transforms for s in _steps(t)]
    if isinstance(transform, _presets.ImageClassification):
        return [("resize", partial(TF.resize, size=transform.resize_size, interpolation=transform.interpolation,
                                   antialias=transform.antialias)),
                ("crop", partial(TF.center_crop, output_size=transform.crop_size))]
    if isinstance(transform, _presets.SemanticSegmentation):
        if not transform.resize_size:
            return []
        return [("resize", partial(TF.resize, size=transform.resize_size, interpolation=transform.interpolation,
                                   antialias=transform.antialias))]
    if isinstance(transform, resizes):
        return [("resize", transform)]
    if isinstance(transform, crops):
        return [("crop", transform)]
    if isinstance(transform, keep):
        return []
    timm_step = _timm_step(transform)
    if timm_step is not None:
        return [timm_step]
    raise InputError(
        f"cannot map a map back through the transform step {_describe(transform)}: camkit knows Resize, "
        "CenterCrop, torchvision's ImageClassification / SemanticSegmentation presets, timm's ResizeKeepRatio / "
        "CenterCropOrPad, and steps that keep the geometry (ToTensor, Normalize, ...). Use such a transform, "
        "or compute the map on an image you resized yourself and pass transform=None"
    )


def _timm_step(transform: Any) -> Optional[Step]:
    try:
        import timm.data.transforms as tt
    except ImportError:  # pragma: no cover
        return None
    if isinstance(transform, getattr(tt, "ResizeKeepRatio", ())):
        if getattr(transform, "random_scale_prob", 0) > 0 or getattr(transform, "random_aspect_prob", 0) > 0:
            raise InputError(f"cannot map a map back through a random resize: {_describe(transform)}")
        return ("resize", transform)
    if isinstance(transform, getattr(tt, "CenterCropOrPad", ())):
        # its own function, with a scalar fill (a per-channel fill works on PIL images only)
        return ("crop", partial(tt.center_crop_or_pad, output_size=transform.size, fill=0))
    return None


def _describe(t: Any) -> str:
    text = " ".join(repr(t).split())
    return text if len(text) <= 100 else text[:97] + "..."


# --------------------------------------------------------------------------- running the steps on probes

def _resized(step: Callable[[Tensor], Tensor], hw: Tuple[int, int]) -> Tuple[int, int]:
    """The size ``step`` gives an image of size ``hw`` (run on an empty meta tensor: no pixels, no cost)."""
    try:
        out = step(torch.empty(3, hw[0], hw[1], device="meta"))
    except (NotImplementedError, RuntimeError):  # a resize without a meta kernel: run it on a tiny real image
        out = step(torch.zeros(1, hw[0], hw[1], dtype=torch.uint8))
    return int(out.shape[-2]), int(out.shape[-1])


def _crop_offsets(step: Callable[[Tensor], Tensor], hw: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(top, left, height, width) of the crop ``step`` takes from an image of size ``hw``.

    top/left are negative where the step pads. Read from the step's output on
    index images (1-based, 0 = padding) that are views of one row and one column.
    """
    h, w = hw

    def first(index: Tensor, n_axis: int) -> Tuple[int, int]:
        vals = index[0].amax(dim=n_axis)  # the index of each output row (or column), 0 where padded
        inside = torch.nonzero(vals > 0).flatten()
        if inside.numel() == 0:  # pragma: no cover - a center crop always overlaps the image
            raise InputError("the crop does not overlap the image")
        i = int(inside[0])
        return int(vals[i]) - 1 - i, int(vals.numel())

    rows = step(torch.arange(1, h + 1, dtype=torch.float32).view(1, h, 1).expand(3, h, w))
    cols = step(torch.arange(1, w + 1, dtype=torch.float32).view(1, 1, w).expand(3, h, w))
    top, ch = first(rows, 1)
    left, cw = first(cols.transpose(-1, -2), 1)
    return top, left, ch, cw


def _image_hw(image_or_size: SizeLike) -> Tuple[int, int]:
    if isinstance(image_or_size, Tensor):
        if image_or_size.dim() < 2:
            raise InputError(f"expected an image tensor (..., H, W), got shape {tuple(image_or_size.shape)}")
        return int(image_or_size.shape[-2]), int(image_or_size.shape[-1])
    if isinstance(image_or_size, np.ndarray):
        if image_or_size.ndim not in (2, 3):
            raise InputError(f"expected an image array (H, W) or (H, W, C), got shape {image_or_size.shape}")
        return int(image_or_size.shape[0]), int(image_or_size.shape[1])
    if hasattr(image_or_size, "height") and hasattr(image_or_size, "width"):  # a PIL image
        return int(image_or_size.height), int(image_or_size.width)
    if isinstance(image_or_size, (tuple, list)) and len(image_or_size) == 2 \
            and all(isinstance(v, (int, np.integer)) for v in image_or_size):
        h, w = int(image_or_size[0]), int(image_or_size[1])
        if h < 1 or w < 1:
            raise InputError(f"image size must be positive (H, W), got {tuple(image_or_size)}")
        return h, w
    raise InputTypeError(
        "expected the original image (PIL image, (H, W, C) array, (C, H, W) tensor) or its size (H, W), "
        f"got {type(image_or_size).__name__}"
    )


def _trace(hw: Tuple[int, int], transform: Any) -> Tuple[Box, Tuple[int, int]]:
    """The network input's box in original coordinates and its size in pixels."""
    top, left, bh, bw = 0.0, 0.0, float(hw[0]), float(hw[1])
    cur = hw
    for kind, step in _steps(transform):
        if kind == "resize":
            cur = _resized(step, cur)
        else:
            t, lft, ch, cw = _crop_offsets(step, cur)
            sy, sx = bh / cur[0], bw / cur[1]
            top, left, bh, bw = top + t * sy, left + lft * sx, ch * sy, cw * sx
            cur = (ch, cw)
    return (top, left, bh, bw), cur


# --------------------------------------------------------------------------- public

def crop_box(image_size_hw: SizeLike, transform: Any) -> Box:
    """The network input's field of view in the original image.

    Args:
        image_size_hw (sequence of int, or an image): ``(H, W)``, or the image
            itself (PIL image, ``(H, W, C)`` array, ``(C, H, W)`` tensor).
        transform (callable or None): What made the network input from the image (e.g.
            ``preset.transform``); ``None``: the image itself.

    Returns:
        *tuple of float*: ``(top, left, height, width)`` in original-pixel
        coordinates (pixel ``i`` spans ``[i, i + 1)``); ``top`` / ``left`` are
        negative and the box larger than the image where the transform pads.

    Raises:
        InputError: A bad image or size, or a transform step camkit cannot
            invert (random crops, flips, a ``Lambda``, ...).
    """
    return _trace(_image_hw(image_size_hw), transform)[0]


def input_size(image_size_hw: SizeLike, transform: Any) -> Tuple[int, int]:
    """The size of the network input ``transform`` makes from an image of this size.

    Args:
        image_size_hw (sequence of int, or an image): As in :func:`crop_box`.
        transform (callable or None): As in :func:`crop_box`.

    Returns:
        *tuple of int*: ``(h, w)``.

    Raises:
        InputError: As :func:`crop_box`.
    """
    return _trace(_image_hw(image_size_hw), transform)[1]


def to_original(cam: Union[Tensor, np.ndarray], image_or_size: SizeLike, transform: Any,
                fill: float = 0.0) -> Tensor:
    """Maps on the network input, resampled onto the original image's pixel grid.

    Args:
        cam (Tensor or np.ndarray): ``(..., h, w)``, any leading dims (e.g.
            ``res.maps`` ``(B, K, H, W)`` of one image size), covering the
            network input's field of view at any resolution (a ``7x7`` layer
            map works too).
        image_or_size (image or sequence of int): The original image (PIL
            image, ``(H0, W0, C)`` array, ``(C, H0, W0)`` tensor) or ``(H0, W0)``.
        transform (callable or None): The one that made the network input from it
            (``preset.transform``); ``None``: the input was the image itself.
        fill (float, optional): The value outside the field of view (e.g.
            ``float("nan")`` to mark "not seen"). Default: 0.0.

    Returns:
        *Tensor*: ``(..., H0, W0)``, bilinear inside the field of view;
        float32 (float64 kept), on the map's device.

    Raises:
        InputError: ``cam`` is not ``(..., h, w)``, or what :func:`crop_box` refuses.
    """
    t = torch.as_tensor(cam)
    if t.dim() < 2 or t.shape[-2] < 1 or t.shape[-1] < 1:
        raise InputError(f"expected maps of shape (..., h, w), got {tuple(t.shape)}")
    if not (t.is_floating_point() and t.dtype == torch.float64):
        t = t.float()
    h0, w0 = _image_hw(image_or_size)
    (top, left, bh, bw), _ = _trace((h0, w0), transform)
    lead = t.shape[:-2]
    flat = t.reshape(1, -1, t.shape[-2], t.shape[-1])
    # Original pixel centres as positions in the box, -1..1 over its extent (grid_sample, align_corners=False).
    ys = (torch.arange(h0, dtype=t.dtype, device=t.device) + 0.5 - top) / bh
    xs = (torch.arange(w0, dtype=t.dtype, device=t.device) + 0.5 - left) / bw
    gy, gx = torch.meshgrid(2 * ys - 1, 2 * xs - 1, indexing="ij")
    out = F.grid_sample(flat, torch.stack([gx, gy], dim=-1)[None], mode="bilinear", padding_mode="border",
                        align_corners=False)
    inside = ((ys >= 0) & (ys <= 1))[:, None] & ((xs >= 0) & (xs <= 1))[None, :]
    out = torch.where(inside, out, torch.full((), fill, dtype=t.dtype, device=t.device))
    return out.reshape(*lead, h0, w0)
