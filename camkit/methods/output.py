"""The scores in a model's raw output (``output=``): a tensor, a dict key, an attribute,
a tuple index or a function of the output."""
from __future__ import annotations

from typing import Any, Callable, Union

from torch import Tensor

from ..errors import InputError, InputTypeError

Output = Union[None, str, int, Callable[[Any], Tensor]]


def describe_output(raw: object) -> str:
    """A one-line description of a model output, naming its keys / items / tensor attributes."""
    if isinstance(raw, Tensor):
        return f"a tensor of shape {tuple(raw.shape)}"
    if isinstance(raw, dict) or hasattr(raw, "keys") and hasattr(raw, "__getitem__"):
        return f"a {type(raw).__name__} with keys {list(raw.keys())}"  # type: ignore[union-attr]
    if isinstance(raw, (tuple, list)):
        items = ", ".join(f"[{i}] " + (f"tensor {tuple(v.shape)}" if isinstance(v, Tensor) else type(v).__name__)
                          for i, v in enumerate(raw))
        return f"a {type(raw).__name__} of {len(raw)} ({items})"
    attrs = [a for a in dir(raw) if not a.startswith("_") and isinstance(getattr(raw, a, None), Tensor)]
    return f"a {type(raw).__name__} with tensor attributes {attrs}"


def select_output(raw: object, output: Output) -> Tensor:
    """The scores in a model's raw output: the output itself (``output=None``), a
    dict key or attribute name (str), a tuple / list index (int), or ``output(raw)``."""
    if output is None:
        got: object = raw
    elif callable(output):
        got = output(raw)
    elif isinstance(output, str):
        if hasattr(raw, "keys") and hasattr(raw, "__getitem__") and output in raw.keys():  # type: ignore[union-attr]
            got = raw[output]  # type: ignore[index]
        elif not isinstance(raw, (dict, tuple, list, Tensor)) and hasattr(raw, output):
            got = getattr(raw, output)
        else:
            raise InputError(f"output={output!r} is neither a key nor an attribute of the model's output, "
                             f"{describe_output(raw)}")
    elif isinstance(output, int) and not isinstance(output, bool):
        if not isinstance(raw, (tuple, list)) or not -len(raw) <= output < len(raw):
            raise InputError(f"output={output} does not index the model's output, {describe_output(raw)}")
        got = raw[output]
    else:
        raise InputTypeError(f"output must be a key / attribute name, an index or a callable, got {output!r}")
    if not isinstance(got, Tensor):
        if output is None and _detector_output(raw):
            raise InputError("the model returned a detector's list of dicts (boxes, scores, labels): use the "
                             "detection preset (camkit.adapters.resolve(model).method_kwargs(method)) or pass "
                             "output=camkit.detection.DetectorOutput(num_classes), with camkit.targets.BoxScore "
                             "or TopDetections as targets")
        if output is None:
            raise InputError(f"the model returned {describe_output(raw)}; pass output=... to choose the scores "
                             "(a key or attribute name, a tuple index, or a function of the output)")
        raise InputError(f"output={output!r} selected {describe_output(got)}, not a tensor")
    return got


def _detector_output(raw: object) -> bool:
    """Whether ``raw`` looks like a torchvision detector's eval output: a list of dicts with ``boxes``."""
    return isinstance(raw, (list, tuple)) and bool(raw) and all(isinstance(d, dict) and "boxes" in d for d in raw)
