"""An export's processes: this one's place in a torchrun job, and its share of the work.

Under ``torchrun`` the sorted work list is cut into batches of ``batch_size``
images and each rank takes a contiguous run of whole batches (counts differ by
at most one), so every image is computed in the same batch whatever the number
of processes. Ranks exchange only JSON bytes (``tdist.broadcast`` of uint8
tensors: no pickle), over gloo on CPU and NCCL on GPU.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as tdist

from ..errors import InputError


def share(n: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of ``n`` items: the first ``n % world`` ranks take
    ``ceil(n / world)``, the others one fewer (so the last ranks' shares may be shorter)."""
    per, extra = divmod(n, world)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (rank < extra))


def rank_batches(n: int, batch_size: int, rank: int, world: int) -> List[range]:
    """Rank ``rank``'s batches: the work list ``0..n-1`` cut into batches of ``batch_size``,
    a contiguous :func:`share` of the batches per rank."""
    cuts = [range(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    return [cuts[b] for b in share(len(cuts), rank, world)]


def pick_device(device: Optional[str], local_rank: int = 0) -> torch.device:
    """``auto`` (``cuda:LOCAL_RANK`` where there is a GPU, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        InputError: not a device, or a CUDA device where there is none.
    """
    want = device or "auto"
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(want)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {device}: camkit export runs on cpu, cuda or mps devices, not {dev.type}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device}: no Apple MPS device is available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices here")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


class Dist:
    """This process's place in a torchrun job (or a lone process): rank, world size, device."""

    def __init__(self, device: Optional[str]) -> None:
        self.own = False
        launched = "WORLD_SIZE" in os.environ and "RANK" in os.environ
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0)) if launched else 0
        self.device = dev = pick_device(device, self.local_rank)
        if launched and not tdist.is_initialized():
            tdist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                     timeout=_dt.timedelta(hours=24))
            self.own = True
        self.on = tdist.is_initialized()
        self.rank = tdist.get_rank() if self.on else 0
        self.world = tdist.get_world_size() if self.on else 1

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (JSON-serializable) on every rank, sent as JSON bytes: no pickle."""
        if not self.on:
            return obj
        dev = self.device if tdist.get_backend() == "nccl" else torch.device("cpu")
        data = json.dumps(obj).encode() if self.rank == 0 else b""
        n = torch.tensor([len(data)], dtype=torch.int64, device=dev)
        tdist.broadcast(n, src=0)
        if self.rank == 0:
            buf = torch.tensor(np.frombuffer(data, dtype=np.uint8), device=dev)
        else:
            buf = torch.empty(int(n.item()), dtype=torch.uint8, device=dev)
        tdist.broadcast(buf, src=0)
        return json.loads(buf.cpu().numpy().tobytes())

    def sum(self, values: Sequence[float]) -> List[float]:
        """The element-wise sum of ``values`` over the ranks."""
        if not self.on:
            return list(values)
        dev = self.device if tdist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor(list(values), dtype=torch.float64, device=dev)
        tdist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.on:
            tdist.barrier()

    def close(self) -> None:
        """End the process group this process started."""
        if self.own:
            tdist.destroy_process_group()
