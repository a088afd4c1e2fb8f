"""``--target`` / ``--target-class``: top1 / topK, a class index or a class name."""
from __future__ import annotations

import difflib
import re
from typing import Optional, Sequence, Tuple

from ..errors import InputError

_TOPK = re.compile(r"top(\d+)$", re.IGNORECASE)


def check_target_syntax(spec: str, flag: str = "--target", allow_topk: bool = True) -> None:
    """What can be refused before the model exists: topK forms, negative indices, an empty string."""
    s = spec.strip()
    m = _TOPK.match(s)
    if m and allow_topk:
        if int(m.group(1)) < 1:
            raise InputError(f"{flag} {spec}: k must be at least 1 (top1, top3, ...)")
        return
    if not s:
        raise InputError(f"{flag} is empty; give top1/topK, a class index or a class name")
    if re.fullmatch(r"[+-]?\d+", s) and int(s) < 0:
        raise InputError(f"{flag} {spec}: a class index is >= 0")
    if (m or s.lower().startswith("top")) and not allow_topk:
        raise InputError(f"{flag} takes one class (an index or a name), not {spec!r}; use --target topK for the best K")


def parse_target(spec: str, categories: Optional[Sequence[str]]) -> Tuple[Optional[int], Optional[int]]:
    """'top1' / 'top5' -> (None, k); 'CLASS' (index or name) -> (index, None).

    ``categories``: the class names when known (None: only indices work).
    """
    s = spec.strip()
    m = _TOPK.match(s)
    if m:
        k = int(m.group(1))
        if k < 1 or (categories is not None and k > len(categories)):
            upper = len(categories) if categories is not None else "C"
            raise InputError(f"--target {spec}: k must lie in 1..{upper}")
        return None, k
    if re.fullmatch(r"\+?\d+", s):
        c = int(s)
        if categories is not None and c >= len(categories):
            raise InputError(f"--target {spec}: class index out of range 0..{len(categories) - 1}")
        return c, None
    if categories is None:
        raise InputError(f"--target {spec!r}: this model's class names are not known; give a class index, "
                         "or the names with --classes FILE")
    low = s.lower()
    matches = [i for i, n in enumerate(categories) if n.lower() == low]
    if not matches:
        close = difflib.get_close_matches(s, list(categories), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise InputError(f"--target {spec!r} is neither top1/topK, a class index nor a class name{hint}")
    return matches[0], None
