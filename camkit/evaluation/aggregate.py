"""A running mean of metric values over a loop of batches, in the spirit of torchcam's metric objects
(``update`` / ``summary`` / ``reset``): the one stateful object of :mod:`camkit.evaluation`, whose state is
real (the sums so far)."""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from ..errors import InputError, InputTypeError

__all__ = ["RunningMetrics"]


class RunningMetrics:
    """Means of per-image metric values accumulated over batches; NaN values are counted apart and left out.

    >>> agg = RunningMetrics()
    >>> agg.update(road=torch.tensor([0.1, 0.3]))
    >>> agg.update(road=torch.tensor([0.5]))
    >>> round(agg.summary()["road"], 6)
    0.3
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every value seen so far."""
        self._sum: Dict[str, float] = {}
        self._count: Dict[str, int] = {}
        self._nan: Dict[str, int] = {}

    def update(self, **values: Tensor) -> None:
        """Add a batch of per-image values for each named metric.

        Args:
            **values: ``name=(B,)`` tensors (any shape: every element is one value), bool or numeric.

        Raises:
            InputError: A value that is not a tensor, or holds an infinite value.
        """
        for name, v in values.items():
            if not isinstance(v, Tensor):
                raise InputTypeError(f"{name} must be a tensor of per-image values, got {type(v).__name__}")
            v = v.detach().double().reshape(-1)
            if torch.isinf(v).any():
                raise InputError(f"{name} holds infinite values")
            nan = torch.isnan(v)
            self._sum[name] = self._sum.get(name, 0.0) + float(v[~nan].sum())
            self._count[name] = self._count.get(name, 0) + int((~nan).sum())
            self._nan[name] = self._nan.get(name, 0) + int(nan.sum())

    def summary(self) -> Dict[str, float]:
        """The mean of each metric over every value seen since the last reset (NaN when none was finite).

        Returns:
            *dict*: ``{name: mean}``.
        """
        return {k: self._sum[k] / self._count[k] if self._count[k] else float("nan") for k in self._sum}

    def counts(self) -> Dict[str, Dict[str, int]]:
        """How many values each mean holds, and how many NaN values were left out.

        Returns:
            *dict*: ``{name: {"values": n, "nan": m}}``.
        """
        return {k: {"values": self._count[k], "nan": self._nan[k]} for k in self._sum}
