"""Timing harness for benchmarks: interleaved rounds, same-round ratios, peak memory, results with provenance.

Every library in a comparison is a :class:`Runner` (a timed ``call`` with untimed
``setup`` / ``teardown``). :func:`interleave` runs them in rounds A B C, A B C ...
after untimed warm-up rounds, timing each call with :func:`timer_for`'s timer
(host clock on CPU; CUDA events after a synchronize on a GPU). Load on a shared
machine slows a whole round, so speed is reported as same-round ratios
(:func:`ratio_medians`, :func:`same_round_ratio`): the median over rounds of a
runner's time divided by the baseline's time *in the same round*.
:func:`peak_memory` measures one call's peak: ``torch.cuda.max_memory_allocated``
on a GPU, the resident-size high-water mark on CPU (:func:`peak_rss_increase`,
meant for a fresh process). :func:`write_results` writes a Markdown file and a
JSON file beside it, both carrying :func:`run_provenance` (command, commit,
date, torch, device, cores, load average).

Adding a comparison (e.g. Score-CAM against pytorch-grad-cam and torchcam)::

    from benchmarks.harness import Runner, interleave, ratio_medians, timer_for

    runners = [
        Runner("camkit ScoreCAM", lambda: cam(x).maps),
        Runner("torchcam ScoreCAM", lambda: tc_call(x), setup=attach_tc, teardown=detach_tc),
    ]
    times = interleave(runners, reps=5, warmup=1, timer=timer_for(device))
    ratios = ratio_medians(times, "camkit ScoreCAM")      # {runner: median same-round ratio}

In ``benchmarks/peers.py`` that is one function returning ``(title, runners)``
appended to ``peers.SCENARIOS``; the driver then times it, measures memory and
writes it with the others.
"""
from __future__ import annotations

import gc
import json
import os
import re
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from benchmarks.provenance import markdown_header, provenance

Times = Dict[str, List[float]]


def _nothing() -> None:
    return None


@dataclass
class Runner:
    """A timed ``call`` with untimed ``setup`` (e.g. hooks attached) and ``teardown`` (hooks removed)."""

    name: str
    call: Callable[[], object]
    setup: Callable[[], None] = _nothing
    teardown: Callable[[], None] = _nothing
    note: str = ""


# --------------------------------------------------------------------------- timers


class WallTimer:
    """Seconds of ``fn()`` on the host clock (synchronizing a CUDA device before and after)."""

    def __init__(self, device: str | torch.device = "cpu", clock: Callable[[], float] = time.perf_counter) -> None:
        self.device, self.clock = torch.device(device), clock

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn: Callable[[], object]) -> Tuple[object, float]:
        self._sync()
        t0 = self.clock()
        out = fn()
        self._sync()
        return out, self.clock() - t0


class CudaEventTimer:
    """Seconds of ``fn()`` between two CUDA events on the current stream; the device is idle at the start."""

    def __init__(self, device: str | torch.device = "cuda") -> None:
        self.device = torch.device(device)

    def __call__(self, fn: Callable[[], object]) -> Tuple[object, float]:
        torch.cuda.synchronize(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return out, start.elapsed_time(end) / 1000.0


def timer_for(device: str | torch.device) -> Callable[[Callable[[], object]], Tuple[object, float]]:
    """CUDA events on a GPU, the host clock otherwise."""
    return CudaEventTimer(device) if torch.device(device).type == "cuda" else WallTimer(device)


def interleave(
    runners: Sequence[Runner],
    reps: int,
    warmup: int = 1,
    timer: Optional[Callable[[Callable[[], object]], Tuple[object, float]]] = None,
    between: Optional[Callable[[], None]] = None,
) -> Times:
    """Rounds of A B C ...: ``warmup`` untimed rounds, then ``reps`` timed ones.

    Only ``runner.call()`` is timed; its setup and teardown run just before
    and after, untimed (teardown also when the call raises), and so does
    ``between`` (e.g. ``gc.collect``). Returns {name: [seconds per timed round]}.
    """
    timer = timer or WallTimer()
    times: Times = {r.name: [] for r in runners}
    for rnd in range(warmup + reps):
        for r in runners:
            r.setup()
            try:
                out, seconds = timer(r.call)
            finally:
                r.teardown()
            del out
            if rnd >= warmup:
                times[r.name].append(seconds)
            if between is not None:
                between()
    return times


class RssTimer(WallTimer):
    """Host-clock timer that also records each call's peak resident size above the size before it
    (MiB, Linux; the bookkeeping stays outside the timed region)."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.peaks: List[float] = []

    def __call__(self, fn: Callable[[], object]) -> Tuple[object, float]:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        before = _status_kb("VmRSS")
        out, seconds = super().__call__(fn)
        self.peaks.append((_status_kb("VmHWM") - before) / 1024.0)
        return out, seconds


def timed_rounds(runners: Sequence[Runner], rounds: int, device: str | torch.device = "cpu",
                 memory: bool = True) -> Tuple[Times, List[float]]:
    """``rounds`` interleaved timed rounds (no warm-up) and each runner's peak memory in MiB (NaN without
    ``memory``): on CUDA, CUDA-event times and the peak of one more call (``cuda_peak_increase``); on
    CPU, host-clock times and the first round's peak resident size (:class:`RssTimer`)."""
    dev = torch.device(device)
    nan = [float("nan")] * len(runners)
    if dev.type == "cuda":
        times = interleave(runners, rounds, 0, timer=timer_for(dev))
        return times, [cuda_peak_increase(r.call, dev) for r in runners] if memory else nan
    timer = RssTimer() if memory else WallTimer("cpu")
    times = interleave(runners, rounds, 0, timer=timer)
    return times, timer.peaks[:len(runners)] if memory else nan


# --------------------------------------------------------------------------- ratios


def same_round_ratio(times: Times, a: str, b: str) -> float:
    """Median over rounds of ``times[a][r] / times[b][r]``."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def ratio_medians(times: Times, base: str) -> Dict[str, float]:
    """Every runner's :func:`same_round_ratio` to ``base``."""
    return {name: same_round_ratio(times, name, base) for name in times}


def fastest(times: Times, names: Sequence[str]) -> str:
    """The name among ``names`` with the lowest median time."""
    return min(names, key=lambda n: statistics.median(times[n]))


# --------------------------------------------------------------------------- comparisons and tables


def max_diff(ref: Tensor, other: Tensor) -> Tuple[float, float]:
    """(max |ref - other|, that divided by max |ref|) after matching shapes by reshape."""
    ref = ref.detach().double().cpu()
    other = other.detach().double().cpu().reshape(ref.shape)
    d = (ref - other).abs().max().item()
    scale = ref.abs().max().item()
    return d, (d / scale if scale > 0 else (0.0 if d == 0 else float("inf")))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats to 3 significant digits (integers from 1000 up)."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- memory


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else -1


def peak_rss_increase(fn: Callable[[], object]) -> float:
    """MiB: peak resident size during ``fn()`` minus the resident size before it (Linux).

    Memory the allocator kept from earlier calls is reused without growing the
    resident size, so run it in a fresh process for a fair reading.
    """
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current VmRSS
    before = _status_kb("VmRSS")
    out = fn()
    peak = _status_kb("VmHWM")
    del out
    return (peak - before) / 1024.0


def cuda_peak_increase(fn: Callable[[], object], device: str | torch.device = "cuda") -> float:
    """MiB: ``torch.cuda.max_memory_allocated`` during ``fn()`` minus what was allocated before."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return (peak - before) / 2**20


def peak_memory(fn: Callable[[], object], device: str | torch.device) -> float:
    """MiB one call needs above what was allocated before it (see the two functions above)."""
    dev = torch.device(device)
    return cuda_peak_increase(fn, dev) if dev.type == "cuda" else peak_rss_increase(fn)


# --------------------------------------------------------------------------- device policy


def configure(device: str | torch.device, threads: Optional[int] = None, tf32: str = "default",
              cudnn_benchmark: bool = True) -> Dict[str, Any]:
    """Set the run's policy and return it for the results file.

    CPU: ``threads`` torch threads. CUDA: ``torch.backends.cudnn.benchmark``
    and TF32 (``"on"``, ``"off"`` or ``"default"``: torch's own, convolutions
    TF32 and matmuls not).
    """
    dev = torch.device(device)
    if tf32 not in ("on", "off", "default"):
        raise ValueError(f"tf32 must be 'on', 'off' or 'default', got {tf32!r}")
    if threads:
        torch.set_num_threads(threads)
    policy: Dict[str, Any] = {"device": str(dev), "torch_threads": torch.get_num_threads()}
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
        if tf32 != "default":
            torch.backends.cuda.matmul.allow_tf32 = tf32 == "on"
            torch.backends.cudnn.allow_tf32 = tf32 == "on"
        policy.update(cudnn_benchmark=torch.backends.cudnn.benchmark,
                      tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                      tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return policy


@contextmanager
def tf32_off() -> Iterator[None]:
    """TF32 off for matmuls and convolutions inside the block (exact float32 comparisons)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# --------------------------------------------------------------------------- results with provenance


def load_average() -> Optional[List[float]]:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return None


def run_provenance(argv: Sequence[str], module: str, device: str | torch.device = "cpu") -> Dict[str, Any]:
    """:func:`benchmarks.provenance.provenance` plus the full load average and the start time.

    Where the tree travels without ``.git`` (a GPU machine), the commit comes
    from the ``BENCH_GIT_COMMIT`` environment variable.
    """
    prov = provenance(list(argv), module=module, device=device)
    if not prov.get("git_commit"):
        prov["git_commit"] = os.environ.get("BENCH_GIT_COMMIT", "unknown")
        prov["git_dirty"] = os.environ.get("BENCH_GIT_DIRTY", "unknown") == "1"
    prov["load_avg_at_start"] = load_average()
    prov["_t0"] = time.time()
    return prov


def finish_provenance(prov: Dict[str, Any]) -> Dict[str, Any]:
    """The provenance with the elapsed minutes and the load average at the end."""
    out = {k: v for k, v in prov.items() if k != "_t0"}
    out["minutes"] = round((time.time() - prov.get("_t0", time.time())) / 60, 2)
    out["load_avg_at_end"] = load_average()
    return out


def write_results(md_path: str | Path, prov: Dict[str, Any], title: str, body: str,
                  data: Dict[str, Any]) -> Tuple[Path, Path]:
    """Write ``md_path`` (title, provenance header, body) and the JSON beside it (provenance + data)."""
    prov = finish_provenance(prov)
    md = Path(md_path)
    md.parent.mkdir(parents=True, exist_ok=True)
    loads = f"load average (1/5/15 min) at start {prov['load_avg_at_start']}, at end {prov['load_avg_at_end']}"
    md.write_text(f"# {title}\n\n{markdown_header(prov)}Run time {prov['minutes']} min; {loads}.\n\n{body.rstrip()}\n")
    js = md.with_suffix(".json")
    js.write_text(json.dumps({"provenance": prov, **data}, indent=1, default=str) + "\n")
    return md, js


#: glibc's threshold above which malloc uses mmap: low, so freed blocks return to the system and peak-RSS
#: measurements of one runner do not include another's cached arenas.
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


def rerun_with_low_mmap_threshold(module: str, argv: Sequence[str]) -> None:
    """Re-execute ``python -m module argv`` with ``MALLOC_MMAP_THRESHOLD_=65536`` (and tqdm off) on Linux,
    once: returns (does nothing) when the variable is already set or elsewhere."""
    if os.environ.get(MMAP_ENV) is None and sys.platform.startswith("linux"):
        env = dict(os.environ, **{MMAP_ENV: "65536", "TQDM_DISABLE": "1"})
        os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)
