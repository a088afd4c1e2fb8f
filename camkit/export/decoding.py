"""How an export decodes its images: the same pixels as :func:`camkit.load_image`, decoded faster.

Three decoders, chosen per run by :func:`choose_decoder` and per file by :func:`jpeg_orientation`:

- ``"pil-jpeg"`` (CPU, the default): a plain JPEG (PIL's header says format ``JPEG``, mode ``RGB``
  or ``L``: 8-bit YCbCr, RGB or grayscale, one frame) is decoded by PIL once, turned upright only
  when its EXIF orientation says so and converted only when gray (:func:`load_fast`), without the
  two full-image copies of ``load_image`` (``exif_transpose`` copies an upright image,
  ``convert("RGB")`` copies an RGB one); then the preset's transform, as before. Same decoder, same
  operations: the model input is byte-identical to the PIL path (all 1360 Flower-17 JPEGs,
  ``benchmarks/export/decode.py``). ``torchvision.io.decode_jpeg`` decodes the same pixels faster,
  but handing them to PIL for the exact resize (``Image.fromarray``) costs more than it saves, and
  torch's resize is not PIL's: it is used on the GPU only.
- ``"nvjpeg"`` (a CUDA device and a transform made of steps that also run on tensors,
  :func:`tensor_plan`): the workers only read the file's bytes; the main process decodes a batch
  of JPEGs at once on the GPU (``decode_jpeg(list, device="cuda")``), turns them upright
  (:func:`orient`) and runs the transform's steps there (resize, crop, scaling, normalization on
  the GPU). The resize is torch's antialiased one rather than PIL's, so the model input differs
  from the PIL path by a few grey levels (measured on CPU with the same tensor code:
  ``benchmarks/export/decode.py``).
- ``"pil"``: :func:`camkit.load_image` then the transform (the reference; every file the fast
  decoders do not take: PNG, CMYK, 16-bit, palette, MPO, a file PIL's header read refuses, a
  JPEG torchvision fails on).

Anything a fast decoder cannot do falls back to the PIL path, which also words the errors
(a truncated or corrupt file fails there as it always did).
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..app import load_image

PathLike = Union[str, "os.PathLike[str]"]
DECODERS = ("pil", "pil-jpeg", "nvjpeg")
PLAIN_JPEG_MODES = ("RGB", "L")
ORIENTATION_TAG = 0x0112  # EXIF Orientation, as PIL.ImageOps.exif_transpose reads it
# PIL.ImageOps.exif_transpose's table: orientation -> PIL.Image.Transpose member name
TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
             7: "TRANSVERSE", 8: "ROTATE_90"}
_DEPRECATION = ".*decoding and encoding capabilities of TorchVision are deprecated"


@dataclass
class Raw:
    """A JPEG's bytes for the GPU decoder: ``data`` ``(n,)`` uint8, ``orientation`` 1..8."""

    data: np.ndarray
    orientation: int


def choose_decoder(device: torch.device, transform: Any) -> str:
    """``"nvjpeg"`` when the model runs on a CUDA device and the transform runs on tensors
    (:func:`tensor_plan`), else ``"pil-jpeg"`` (CPU decoding in the workers)."""
    if torch.device(device).type == "cuda" and tensor_plan(transform) is not None:
        return "nvjpeg"
    return "pil-jpeg"


def jpeg_orientation(path: PathLike) -> Optional[int]:
    """The EXIF orientation (1..8) of a plain JPEG, from PIL's header read (no pixels decoded).

    Returns:
        None for any other file (format other than JPEG, mode other than RGB / L, a file PIL will
        not open): the PIL path takes it, and words its error if it has one.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format != "JPEG" or im.mode not in PLAIN_JPEG_MODES:
                return None
            o = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - the PIL path reports it
        return None
    return o if o in TRANSPOSE else 1


def read_bytes(path: PathLike) -> np.ndarray:
    """The file's bytes, ``(n,)`` uint8."""
    return np.fromfile(path, dtype=np.uint8)


def decode_jpeg(data: Union[Tensor, List[Tensor]], device: Union[str, torch.device] = "cpu"):
    """``torchvision.io.decode_jpeg`` to RGB (grayscale replicated), without its deprecation warning."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as tv_decode_jpeg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION)
        return tv_decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def load_fast(path: PathLike):
    """:func:`camkit.load_image`'s image (RGB, upright, fully decoded), a plain JPEG read without its copies.

    ``load_image`` runs ``ImageOps.exif_transpose`` (which returns a copy when there is nothing to
    turn) and ``convert("RGB")`` (another copy of an RGB image); here a plain JPEG is decoded by
    PIL once, transposed only when its orientation says so and converted only when gray: the same
    decoder and the same operations, so the same pixels.

    Returns:
        A PIL image with the same pixels as ``camkit.load_image(path)``.

    Raises:
        InputError: as :func:`camkit.load_image` (other files, and any failure, go there).
    """
    from PIL import Image

    im = None
    try:
        im = Image.open(path)
        if im.format == "JPEG" and im.mode in PLAIN_JPEG_MODES:
            o = im.getexif().get(ORIENTATION_TAG, 1)
            im.load()  # PIL closes the file it opened once decoded
            out = im.transpose(getattr(Image.Transpose, TRANSPOSE[o])) if o in TRANSPOSE else im
            return out if out.mode == "RGB" else out.convert("RGB")
    except Exception:  # noqa: BLE001 - e.g. truncated: load_image words the error
        pass
    finally:
        if im is not None and im.fp is not None:  # not decoded here (another format, a failure)
            im.close()
    return load_image(path)


def orient(x: Tensor, orientation: int) -> Tensor:
    """``(C, H, W)`` -> the image PIL's ``exif_transpose`` makes for this EXIF orientation (1..8)."""
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-2, -1)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(x, -1, (-2, -1))
    if orientation == 7:
        return x.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(x, 1, (-2, -1))
    return x


def _to_float(x: Tensor) -> Tensor:
    """``ToTensor`` on a uint8 tensor: float32 in [0, 1] (its ``float().div(255)``)."""
    return x.to(torch.float32).div(255)


def tensor_plan(transform: Any) -> Optional[List[Callable[[Tensor], Tensor]]]:
    """The transform as steps on a uint8 ``(3, H, W)`` tensor, or None where a step works on PIL images only.

    Understood: torchvision ``Compose`` (v1, v2), ``Resize``, ``CenterCrop``, ``Normalize``,
    ``ConvertImageDtype`` / ``ToDtype``, the ``ImageClassification`` preset, ``ToTensor`` and timm's
    ``MaybeToTensor`` (as :func:`_to_float`), ``PILToTensor`` / ``ToImage`` / ``ToPureTensor`` and
    timm's ``MaybePILToTensor`` (nothing to do on a tensor). Anything else: None (the PIL path).
    """
    from torchvision import transforms as T
    from torchvision.transforms import _presets

    # v2 and timm only where already imported: a transform of theirs cannot exist otherwise (and
    # importing v2 costs seconds)
    v2, tt = sys.modules.get("torchvision.transforms.v2"), sys.modules.get("timm.data.transforms")
    if isinstance(transform, (T.Compose, v2.Compose) if v2 else T.Compose):
        parts = [tensor_plan(t) for t in transform.transforms]
        return None if any(p is None for p in parts) else [f for p in parts for f in p]  # type: ignore[union-attr]
    as_is = [T.Resize, T.CenterCrop, T.Normalize, T.ConvertImageDtype, _presets.ImageClassification]
    to_float, nothing = [T.ToTensor], [T.PILToTensor]
    if v2 is not None:
        as_is += [v2.Resize, v2.CenterCrop, v2.Normalize, v2.ToDtype]
        nothing += [v2.ToImage, v2.PILToTensor, v2.ToPureTensor]
    if tt is not None:
        to_float.append(tt.MaybeToTensor)
        nothing.append(tt.MaybePILToTensor)
    if type(transform) in as_is:  # exact types: a subclass may do more than its parent on tensors
        return [transform]
    if type(transform) in to_float:
        return [_to_float]
    if type(transform) in nothing:
        return []
    return None


def _apply(plan: Sequence[Callable[[Tensor], Tensor]], x: Tensor) -> Tensor:
    for step in plan:
        x = step(x)
    return torch.as_tensor(x)


def decode_batch(raws: Sequence[Raw], plan: Sequence[Callable[[Tensor], Tensor]],
                 device: Union[str, torch.device]) -> List[Optional[Tuple[Tensor, Tuple[int, int]]]]:
    """Model inputs of a batch of plain JPEGs, decoded and transformed on ``device``.

    Args:
        raws: the files' bytes and EXIF orientations.
        plan: :func:`tensor_plan` of the preset's transform.
        device: where to decode (``cuda``: nvjpeg, one call for the batch; ``cpu``: libjpeg-turbo).

    Returns:
        Per file ``(input, (H, W))``: the ``(C, h, w)`` float tensor on ``device`` (the upright image
        through ``plan``) and the upright image's size; None where that file did not decode (the
        caller takes the PIL path for it).
    """
    if not raws:
        return []
    datas = [torch.from_numpy(r.data) for r in raws]
    try:
        images: List[Optional[Tensor]] = list(decode_jpeg(datas, device=device))
    except (RuntimeError, OSError, ValueError):  # one bad file fails the batch call: each on its own
        images = []
        for d in datas:
            try:
                images.append(decode_jpeg(d, device=device))
            except (RuntimeError, OSError, ValueError):
                images.append(None)
    out: List[Optional[Tuple[Tensor, Tuple[int, int]]]] = []
    for x, r in zip(images, raws):
        if x is None:
            out.append(None)
            continue
        up = orient(x, r.orientation)
        out.append((_apply(plan, up), (int(up.shape[-2]), int(up.shape[-1]))))
    return out
