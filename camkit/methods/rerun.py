"""For methods that run the model again on variants of the call's input (perturbed,
noisy, or as a leaf that requires grad): the input, kept for the call."""
from __future__ import annotations

import threading
from typing import Any, Optional

from torch import Tensor


class KeepInput:
    """Mixin before a method's base class: ``_take_input()`` gives, inside
    ``_layer_maps``, the input as the call passed it to the model (the model's lock
    is held from that forward on); nothing of it outlives the call. The input is kept
    per thread, so one method object can serve calls from several threads."""

    def _kept(self) -> threading.local:
        slot = self.__dict__.get("_kept_input")
        if slot is None:
            slot = self.__dict__.setdefault("_kept_input", threading.local())
        return slot

    def _run_model(self, x: Tensor) -> object:
        self._kept().x = x
        return super()._run_model(x)  # type: ignore[misc]

    def __call__(self, x: Tensor, targets: Any = None, topk: Optional[int] = None) -> Any:
        try:
            return super().__call__(x, targets, topk)  # type: ignore[misc]
        finally:
            self._kept().x = None

    def _take_input(self) -> Tensor:
        slot = self._kept()
        x, slot.x = getattr(slot, "x", None), None
        if x is None:  # pragma: no cover - the forward always runs first
            raise RuntimeError("no input was recorded for this call")
        return x
