"""What every method returns: :class:`CAMResult`."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .. import display
from ..errors import InputError


class CAMResult:
    """What every method returns. Per target, ``K`` columns (column k of image b is map
    ``maps[b, k]``):

    - ``maps`` ``(B, K, H, W)`` at the input's resolution (normalized, fused; in [0, 1] for the
      built-in normalizers; raw with ``normalize=None``), float32 (float64 for a float64 model);
      for a video or 3-D volume input ``(B, C, T, H, W)``: ``(B, K, T, H, W)``, each volume
      normalized as one map (``layer_maps`` then ``(B, K, t, h, w)``);
    - ``targets`` ``(B, K)`` long: the class of each map (-1 where a target is not one class,
      e.g. a padded MultiLabel column or a custom function);
    - ``scores`` ``(B, K)``: the target values the maps explain (e.g. the classes' logits);
    - ``target_probs`` ``(B, K)``: each target class's softmax probability (NaN where not a class);
    - ``valid`` ``(B, K)`` bool: False for padding (those maps are all zeros);
    - ``layer_maps`` ``{layer: (B, K, h, w)}``: raw per-layer maps after the method's own ReLU,
      before normalization and upsampling.

    Per class, ``C`` columns (index them with ``targets``, not with k): ``logits``, what
    ``output=`` selected from the model's output, e.g. ``(B, C)``, and ``probs`` ``(B, C)``.

    ``maps`` is computed from ``layer_maps`` on first access and kept: a call
    for many classes (``targets="all"``) costs no upsampling until the maps at
    input resolution are asked for (B * K * H * W floats: 1.6 GB for 8 images,
    1000 classes, 224 x 224).
    """

    def __init__(
        self,
        maps: Optional[Tensor] = None,
        targets: Optional[Tensor] = None,
        logits: Optional[Tensor] = None,
        layer_maps: Optional[Dict[str, Tensor]] = None,
        *,
        scores: Optional[Tensor] = None,
        valid: Optional[Tensor] = None,
        make_maps: Optional[Callable[[Tuple[int, ...]], Tensor]] = None,
        size: Optional[Tuple[int, ...]] = None,
    ) -> None:
        if maps is None and (make_maps is None or size is None):
            raise InputError("CAMResult needs maps, or make_maps and the input size")
        self._maps, self._make_maps, self._size = maps, make_maps, size
        self.targets = targets
        self.logits = logits
        self.scores = scores
        self.valid = valid
        self.layer_maps = layer_maps if layer_maps is not None else {}
        self.inputs: Optional[Tensor] = None  # the call's input, drawn by show() and in Jupyter (camkit.display)
        self.categories: Optional[Sequence[str]] = None  # class names for show() and Jupyter, e.g. preset.categories

    @property
    def maps(self) -> Tensor:
        """(B, K, H, W) (volumes: (B, K, T, H, W)) at the input's resolution (computed on first access)."""
        if self._maps is None:
            self._maps = self._make_maps(self._size)  # type: ignore[misc]
        return self._maps

    def maps_at(self, size: Tuple[int, ...]) -> Tensor:
        """(B, K, h, w): the layer maps normalized, upsampled to ``size`` ``(h, w)`` and fused, as
        ``maps`` is at the input's size (e.g. at the finest layer's resolution); for volumes
        ``size`` is ``(t, h, w)`` and the maps ``(B, K, t, h, w)``."""
        if self._make_maps is None:
            raise InputError("this result holds finished maps only (e.g. aug_smooth's average); use .maps")
        if self._size is not None and len(tuple(size)) != len(self._size):
            raise InputError(f"maps_at takes a size of {len(self._size)} numbers, like the input's "
                             f"{tuple(self._size)}; got {tuple(size)}")
        return self._make_maps(tuple(int(s) for s in size))

    def _repr_png_(self) -> Optional[bytes]:
        """Jupyter's picture: the overlays of the images and targets with their classes (:mod:`camkit.display`)."""
        return display.result_png(self)

    def show(self, image: Any = None, **kwargs: Any) -> Any:
        """Image ``b``'s maps in a matplotlib figure, on ``image`` (the photo; aligned with ``transform=``) or on
        the input; see :func:`camkit.display.show_result` for the options."""
        return display.show_result(self, image, **kwargs)

    def __repr__(self) -> str:
        shapes = {n: tuple(m.shape) for n, m in self.layer_maps.items()}
        return (f"CAMResult(targets={tuple(self.targets.shape)}, logits={tuple(self.logits.shape)}, "
                f"layer_maps={shapes}, maps={'computed' if self._maps is not None else 'on first access'})")

    @property
    def probs(self) -> Tensor:
        """``(B, C)``: the softmax of the logits over the classes (per class, not per target)."""
        if self.logits is None or self.logits.dim() != 2:
            shape = None if self.logits is None else tuple(self.logits.shape)
            raise InputError(f"probs needs logits of shape (B, C), got {shape}")
        return self.logits.softmax(dim=-1)

    @property
    def target_probs(self) -> Tensor:
        """``(B, K)``: the softmax probability of each map's class (NaN where a target is not one class)."""
        probs = self.probs
        t = self.targets
        got = probs.gather(1, t.clamp(min=0).to(probs.device))
        return torch.where(t.to(probs.device) >= 0, got, torch.full_like(got, float("nan")))
