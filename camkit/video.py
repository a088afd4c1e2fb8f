"""Overlays for videos and 3-D volumes: one overlay per frame (or slice), a strip of them,
an animated GIF.

A video (or a volume, its depth as the frames) is a ``(C, T, H, W)`` tensor in [0, 1]
(C = 1 or 3: the network input of one clip, un-normalized), a ``(T, H, W, 3)`` or
``(T, H, W)`` array (uint8, or floats in [0, 1]), or a sequence of frames as
:func:`camkit.overlay.to_uint8` takes them. A map is ``(T, H, W)`` (leading dims of size
1 dropped, e.g. ``res.maps[b, k]``); one of another size (a layer's ``(t, h, w)``) is
resized to the video's trilinearly (``align_corners=False``). Each frame is blended with
:func:`camkit.overlay.overlay`, so colours and the ``alpha`` / ``vmin`` / ``vmax`` rules are
those of a 2-D overlay.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from .errors import InputError, InputTypeError
from .overlay import ImageLike, MapLike, _font, overlay, to_uint8

VideoLike = Union[Tensor, np.ndarray, Sequence[ImageLike]]
Frames = Union[None, int, Sequence[int]]

__all__ = ["video_frames", "frame_overlays", "frame_strip", "save_gif"]


def video_frames(video: VideoLike) -> List[np.ndarray]:
    """A video's frames as ``(H, W, 3)`` uint8 arrays.

    Args:
        video: ``(C, T, H, W)`` tensor in [0, 1] (C = 1 or 3), ``(T, H, W, 3)`` / ``(T, H, W)`` array,
            or a sequence of frames.

    Returns:
        *list of np.ndarray*: T frames ``(H, W, 3)`` uint8.

    Raises:
        InputError: another shape, no frames, frames of different sizes, or float values outside [0, 1].
    """
    if isinstance(video, Tensor):
        if video.dim() != 4 or video.shape[0] not in (1, 3):
            raise InputError(f"expected a video tensor (C, T, H, W) with C = 1 or 3, in [0, 1], got "
                             f"{tuple(video.shape)} (for a batch, pass x[b]; un-normalize it first)")
        frames = [to_uint8(video[:, t]) for t in range(video.shape[1])]
    elif isinstance(video, np.ndarray):
        if video.ndim not in (3, 4):
            raise InputError(f"expected a video array (T, H, W, 3) or (T, H, W), got {video.shape}")
        frames = [to_uint8(f) for f in video]
    elif isinstance(video, (list, tuple)):
        frames = [to_uint8(f) for f in video]
    else:
        raise InputTypeError(f"expected a video tensor, array or a list of frames, got {type(video).__name__}")
    if not frames:
        raise InputError("the video has no frames")
    if len({f.shape for f in frames}) != 1:
        raise InputError(f"the frames have different sizes: {sorted({f.shape for f in frames})}")
    return frames


def _volume_map(cam: MapLike, size: Sequence[int]) -> Tensor:
    """A map as float32 ``(T, H, W)`` at ``size`` (leading dims of size 1 dropped; trilinear)."""
    t = torch.as_tensor(np.asarray(cam.detach().cpu() if isinstance(cam, Tensor) else cam), dtype=torch.float32)
    while t.dim() > 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or 0 in t.shape:
        raise InputError(f"expected a map of shape (T, H, W) for a video, got {tuple(t.shape)} "
                         "(one map: res.maps[b, k])")
    if tuple(t.shape) != tuple(size):
        t = F.interpolate(t[None, None], size=tuple(size), mode="trilinear", align_corners=False)[0, 0]
    return t


def frame_overlays(video: VideoLike, cam: MapLike, alpha: float = 0.5, cmap: str = "jet",
                   vmin: float = 0.0, vmax: float = 1.0) -> List[Image.Image]:
    """One overlay per frame: frame t blended with the map's frame t (:func:`camkit.overlay.overlay`).

    Args:
        video: As :func:`video_frames` takes.
        cam: ``(T, H, W)`` map in [vmin, vmax] (another size is resized to the video's, trilinear).
        alpha, cmap, vmin, vmax: As :func:`camkit.overlay.overlay` takes.

    Returns:
        *list of PIL.Image.Image*: T RGB images, the frames' size.

    Raises:
        InputError: a bad video or map, or what :func:`camkit.overlay.overlay` refuses.
    """
    frames = video_frames(video)
    m = _volume_map(cam, (len(frames), *frames[0].shape[:2]))
    return [overlay(f, m[t], alpha=alpha, cmap=cmap, vmin=vmin, vmax=vmax) for t, f in enumerate(frames)]


def _chosen(frames: Frames, count: int) -> List[int]:
    """Frame indices: all (None), ``n`` evenly spaced (an int), or the given ones."""
    if frames is None:
        return list(range(count))
    if isinstance(frames, int) and not isinstance(frames, bool):
        if frames < 1:
            raise InputError(f"frames must be a positive count or a list of indices, got {frames}")
        n = min(frames, count)
        return sorted({round(i * (count - 1) / max(n - 1, 1)) for i in range(n)})
    idx = [int(i) for i in frames]
    bad = [i for i in idx if not 0 <= i < count]
    if not idx or bad:
        raise InputError(f"frame indices must lie in [0, {count - 1}], got {idx}")
    return idx


def frame_strip(video: VideoLike, cam: MapLike, frames: Frames = None, alpha: float = 0.5, cmap: str = "jet",
                labels: bool = True, pad: int = 2, vmin: float = 0.0, vmax: float = 1.0) -> Image.Image:
    """A row of frame overlays, left to right in time, each labelled with its index (``t=3``).

    Args:
        video: As :func:`video_frames` takes.
        cam: ``(T, H, W)`` map (see :func:`frame_overlays`).
        frames: None (every frame), a count n (n frames evenly spaced, first and last included)
            or a list of frame indices.
        alpha, cmap, vmin, vmax: As :func:`camkit.overlay.overlay` takes.
        labels: Write ``t=i`` in a band above each frame. Default: True.
        pad: Pixels between and around the frames. Default: 2.

    Returns:
        *PIL.Image.Image*: RGB, ``len(frames) * (W + pad) + pad`` wide.

    Raises:
        InputError: a bad video, map or frame selection.
    """
    tiles = frame_overlays(video, cam, alpha, cmap, vmin, vmax)
    idx = _chosen(frames, len(tiles))
    w, h = tiles[0].size
    band = max(10, w // 8) + 4 if labels else 0
    out = Image.new("RGB", (len(idx) * (w + pad) + pad, h + band + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    font = _font(max(10, w // 8)) if labels else None
    for j, t in enumerate(idx):
        x = pad + j * (w + pad)
        if labels:
            draw.text((x + 1, pad), f"t={t}", fill=(0, 0, 0), font=font)
        out.paste(tiles[t], (x, pad + band))
    return out


def save_gif(path: Union[str, os.PathLike], video: VideoLike, cam: MapLike, fps: float = 4.0,
             alpha: float = 0.5, cmap: str = "jet", loop: int = 0, vmin: float = 0.0,
             vmax: float = 1.0) -> Path:
    """An animated GIF of the frame overlays (PIL; each frame its own palette).

    Args:
        path: Where to write it (``.gif``).
        video: As :func:`video_frames` takes.
        cam: ``(T, H, W)`` map (see :func:`frame_overlays`).
        fps: Frames per second (> 0). Default: 4.
        alpha, cmap, vmin, vmax: As :func:`camkit.overlay.overlay` takes.
        loop: Times to loop, 0 for ever. Default: 0.

    Returns:
        *Path*: ``path``.

    Raises:
        InputError: a bad ``fps``, video or map, or a file that cannot be written.
    """
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise InputError(f"fps must be a positive number, got {fps!r}")
    tiles = frame_overlays(video, cam, alpha, cmap, vmin, vmax)
    path = Path(path)
    try:
        tiles[0].save(path, format="GIF", save_all=True, append_images=tiles[1:], duration=int(round(1000 / fps)),
                      loop=int(loop), optimize=False, disposal=1)
    except OSError as e:
        raise InputError(f"cannot write the GIF {str(path)!r}: {e.strerror or e}") from e
    return path
