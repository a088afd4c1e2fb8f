"""For methods that run the model again on variants of the call's input (perturbed,
noisy, or as a leaf that requires grad): the input, kept for the call."""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor


class KeepInput:
    """Mixin before a method's base class: ``_take_input()`` gives, inside
    ``_layer_maps``, the input as the call passed it to the model (the model's lock
    is held from that forward on); nothing of it outlives the call."""

    _input: Optional[Tensor] = None

    def _run_model(self, x: Tensor) -> object:
        self._input = x
        return super()._run_model(x)  # type: ignore[misc]

    def __call__(self, x: Tensor, targets: Any = None, topk: Optional[int] = None) -> Any:
        try:
            return super().__call__(x, targets, topk)  # type: ignore[misc]
        finally:
            self._input = None

    def _take_input(self) -> Tensor:
        x, self._input = self._input, None
        if x is None:  # pragma: no cover - the forward always runs first
            raise RuntimeError("no input was recorded for this call")
        return x
