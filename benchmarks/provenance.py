"""Where a benchmark result came from: recorded in every results file.

``provenance()`` returns the exact command, the git commit (and whether the
tree had uncommitted changes), the date, the torch version, the device and
the number of CPU cores, so that each number in a README can be traced to
the run that produced it.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def command_line(argv: Optional[Sequence[str]] = None, module: Optional[str] = None) -> str:
    """The command as typed: ``python -m MODULE ARGS`` when ``module`` is given, else ``python ARGV``."""
    args = list(sys.argv[1:] if argv is None else argv)
    head = ["python", "-m", module] if module else ["python", sys.argv[0]]
    return " ".join(shlex.quote(a) for a in head + args)


def device_name(device: str | torch.device = "cpu") -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()})"


def provenance(argv: Optional[Sequence[str]] = None, module: Optional[str] = None,
               device: str | torch.device = "cpu") -> Dict[str, Any]:
    """Command, git commit, date, torch version, device, cores and load of this run."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on Linux
        load = None
    return {
        "command": command_line(argv, module),
        "git_commit": _git("rev-parse", "HEAD"),
        # the code's state: results written by earlier runs of the same commit do not count
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device_name(device),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min_at_start": load,
    }


def markdown_header(prov: Dict[str, Any]) -> str:
    """The provenance as a few Markdown lines for the top of a results file."""
    dirty = " (with uncommitted changes)" if prov.get("git_dirty") else ""
    return (
        f"Command: `{prov['command']}`  \n"
        f"Commit: `{prov['git_commit'][:12]}`{dirty}; date {prov['date']}; torch {prov['torch']}; "
        f"device {prov['device']}; {prov['cpu_cores']} cores ({prov['torch_threads']} torch threads); "
        f"load average at start {prov['load_avg_1min_at_start']}\n"
    )
