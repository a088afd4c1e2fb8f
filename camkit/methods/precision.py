"""Precision: the map formulas, normalization and fusion run in float32 (float64 for a
float64 model), whatever the model's dtype or autocast, so half-precision activations
cannot overflow a channel sum."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import Tensor


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


@contextmanager
def float32_math(device_type: str) -> Iterator[None]:
    """Autocast off: the map formulas, normalization and fusion run in the dtype of
    their (float32 or float64) inputs, never in bfloat16 / float16."""
    try:
        ctx = torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # a device type autocast does not know
        ctx = nullcontext()
    with ctx:
        yield


def work_dtype(t: Tensor) -> Tensor:
    """float16 / bfloat16 -> float32; float32 and float64 unchanged."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()
