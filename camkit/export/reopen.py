"""An export read back: the model and method it was made with, its images and their classes, so that
another command (``camkit evaluate DIR``) works on exactly what the export explained."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

from torch import nn

from ..adapters import Preset
from ..app import ExplainSpec, MethodSpec, ModelSpec, state_sha256
from ..errors import InputError
from .files import PathLike
from .manifest import read_manifest


@dataclass(frozen=True)
class ExportedRun:
    """What :func:`read_export` returns.

    Attributes:
        spec: the model and method of the export (from ``export.json``).
        images: the paths of the images it explained (status ok, at least one class), in work-list order.
        targets: each image's first class (``keys[0]``: its first label, or its top-1), one per image.
        settings: ``export.json``'s settings, as written.
    """

    spec: ExplainSpec
    images: Tuple[str, ...]
    targets: Tuple[int, ...]
    settings: Dict[str, Any]


def is_export(path: PathLike) -> bool:
    """Whether ``path`` is the output folder of ``camkit export`` (``export.json`` and ``manifest.jsonl``)."""
    p = Path(path)
    return p.is_dir() and (p / "export.json").is_file() and (p / "manifest.jsonl").is_file()


def _settings(out: Path) -> Dict[str, Any]:
    try:
        settings = json.loads((out / "export.json").read_text()).get("settings")
    except (OSError, json.JSONDecodeError, AttributeError):
        settings = None
    if not isinstance(settings, dict) or "model" not in settings or "method" not in settings:
        raise InputError(f"{out}/export.json is not a camkit export's settings file (unreadable or damaged)")
    return settings


def _spec(out: Path, s: Dict[str, Any]) -> ExplainSpec:
    if s.get("weights") is None:
        raise InputError(f"{out} was exported from a model passed from Python ({s['model']}): camkit cannot "
                         "rebuild it by name; evaluate it from Python (camkit.evaluation)")
    if s.get("head") and not Path(s["head"]).is_file():
        raise InputError(f"{out} was exported with the head {s['head']}, which is not found from here; "
                         "run from the folder the export ran in")
    model = ModelSpec(s["model"], s["weights"], s.get("head"))
    method = MethodSpec(s["method"], layers=s.get("layers"), fusion=s.get("fusion") or "max",
                        layer_weights=s.get("layer_weights"), normalize=s.get("normalize"),
                        scales=s.get("scales"), flip=bool(s.get("flip")))
    return ExplainSpec(model, method)


def read_export(out: PathLike) -> ExportedRun:
    """The export in ``out`` read back.

    Args:
        out: an output folder of ``camkit export``.

    Returns:
        :class:`ExportedRun`; images that failed or have no class (all background) are left out.

    Raises:
        InputError: not an export folder, damaged settings, a model that cannot be rebuilt by name,
            no image explained.
    """
    out = Path(out)
    if not is_export(out):
        raise InputError(f"{out} is not the output folder of camkit export (no export.json and manifest.jsonl)")
    settings = _settings(out)
    recs = [r for r in read_manifest(out) if r.get("status") == "ok" and r.get("keys")]
    if not recs:
        raise InputError(f"{out}: the export explained no image (every record failed or has no class)")
    return ExportedRun(_spec(out, settings), tuple(str(r["path"]) for r in recs),
                       tuple(int(r["keys"][0]) for r in recs), settings)


def check_same_model(run: ExportedRun, model: nn.Module, preset: Preset) -> None:
    """Refuse a model whose weights or preprocessing differ from the export's (a changed weights file,
    another version of the model's code): its maps would not be the export's.

    Raises:
        InputError: naming what differs.
    """
    s = run.settings
    if s.get("weights_sha256") and state_sha256(model) != s["weights_sha256"]:
        raise InputError(f"the model built from the export's settings ({s['model']}, weights {s['weights']}) "
                         "has other weights than the export's (weights_sha256 differs): its maps would not be "
                         "the export's")
    if s.get("transform") and repr(preset.transform) != s["transform"]:
        raise InputError("the model built from the export's settings prepares images otherwise than the "
                         f"export did (transform {repr(preset.transform)[:80]} ...)")

