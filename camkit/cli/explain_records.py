"""``camkit explain``'s record of its run, ``OUT/explain.jsonl`` (what ``camkit report`` reads).

The first line holds the run's settings (``{"settings": {...}}``); then one line per image explained,
``{"path", "key", "truth", "preds": [[class, probability or pixel share], ...], "files": {method:
[[class, overlay file relative to OUT], ...]}}``, and one per image that could not be read,
``{"path", "status": "error", "error"}``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


class Records:
    """The records of one explain run, collected as the images are explained."""

    def __init__(self, root: Path, settings: Dict[str, Any]) -> None:
        self.root = root
        self.lines: List[Dict[str, Any]] = [{"settings": settings}]
        self._files: Dict[str, List[Tuple[str, str]]] = {}

    def add_file(self, method: str, class_name: str, path: Path) -> None:
        """One overlay of the image being explained."""
        self._files.setdefault(method, []).append((class_name, path.relative_to(self.root).as_posix()))

    def image(self, path: str, key: str, truth: Optional[str], preds: Sequence[Tuple[str, float]]) -> None:
        """The image explained, with the overlays added since the last image."""
        self.lines.append({"path": path, "key": key, "truth": truth,
                           "preds": [[n, round(float(v), 6)] for n, v in preds], "files": self._files})
        self._files = {}

    def write(self, outputs: Any, failed: Sequence[Tuple[str, str]]) -> None:
        """Write ``explain.jsonl`` through the run's :class:`~camkit.cli.outputs.Outputs`."""
        lines = self.lines + [{"path": p, "status": "error", "error": why} for p, why in failed]
        text = "".join(json.dumps(r, default=str) + "\n" for r in lines)  # an odd option value as text
        outputs.write(outputs.root / "explain.jsonl", lambda p: Path(p).write_text(text))


def settings_of(args: Any, explainers: Dict[str, Any]) -> Dict[str, Any]:
    """The explain options a report shows."""
    keys = ("model", "weights", "head", "target", "target_class", "normalize", "fusion", "layer_weights",
            "postprocess", "alpha", "cmap", "labels", "classes")
    out = {k: getattr(args, k, None) for k in keys}
    out["methods"] = {m: list(getattr(ex, "layer_names", [])) for m, ex in explainers.items()}
    return out
