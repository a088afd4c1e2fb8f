"""Training of all heads at once on the cached features.

Every (model, lr) of the grid trains on the same batches (batch 8, the same
seeded shuffle each epoch). Because the heads share their input, their 1x1
convolutions run as one matrix product (``StackedHeads``); what follows the
convolution is the same computation as ``camkit.heads.CAMHead.forward`` /
``ReCAMHead.forward`` (checked in tests/test_flower17.py against those modules),
and each head has its own Adam state and learning rate (``StackedAdam``, same
update as ``torch.optim.Adam`` with default betas/eps).

Protocol (the study's): cross-entropy; ReCAM heads train with the label as the
ReCAM target (``ReCAMHead.forward(f, target=labels)``) and are evaluated with the
default target (the plain CAM head's top-1), which is also how the validation loss
is computed. After each epoch: the head is saved (``best_val_loss.pt``) when its
validation loss improves; the head stops when validation loss > 2 x training loss
(training loss = mean of the epoch's batch losses). Reported per (model, lr)
(:func:`select_epoch`): the epoch with the best validation top-1 among epochs whose
training loss is not below half the validation loss (ties: lower validation loss,
then earlier epoch); that head is saved as ``selected.pt``.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .models import MODEL_NAMES, NORMALIZER_OF, checkpoint_path, lr_tag, make_head

DEFAULT_LRS = (1e-5, 5e-5, 1e-4, 2e-4)


class StackedHeads(nn.Module):
    """M heads (CAMHead or ReCAMHead) over the same features, evaluated together.

    Parameters: ``weight`` (M, N, C) and ``bias`` (M, N) of the 1x1 convs,
    ``fc`` (M, N, N) of the bias-free linear layers.
    """

    def __init__(self, heads: Sequence[nn.Module]):
        super().__init__()
        from camkit.heads import ReCAMHead

        self.weight = nn.Parameter(torch.stack([h.conv.weight.detach()[:, :, 0, 0] for h in heads]).clone())
        self.bias = nn.Parameter(torch.stack([h.conv.bias.detach() for h in heads]).clone())
        self.fc = nn.Parameter(torch.stack([h.fc.weight.detach() for h in heads]).clone())
        self.normalizers = [h.normalize if isinstance(h, ReCAMHead) else None for h in heads]
        self.kinds = [getattr(h, "normalize_name", None) if isinstance(h, ReCAMHead) else None for h in heads]
        self.channels = heads[0].in_channels
        self.num_classes = heads[0].num_classes

    @property
    def num_models(self) -> int:
        return self.weight.shape[0]

    def forward(self, f: Tensor, target: Optional[Tensor] = None, active: Optional[Sequence[int]] = None,
                with_plain: bool = False):
        """Logits ``(B, M', N)`` of the ``active`` heads (default all).

        ReCAM heads use ``target`` (B,) as ReCAM target, or their own plain top-1
        when ``target`` is None; CAM heads ignore it. ``with_plain=True`` also
        returns the plain CAM logits (before re-activation) of every head.
        """
        idx = list(range(self.num_models)) if active is None else list(active)
        if idx == list(range(self.num_models)):
            W, b, Fc = self.weight, self.bias, self.fc
        else:
            it = torch.as_tensor(idx, dtype=torch.long)
            W, b, Fc = self.weight[it], self.bias[it], self.fc[it]
        B, C, h, w = f.shape
        M, N = W.shape[0], W.shape[1]
        x = f.flatten(2).transpose(1, 2).reshape(B * h * w, C)
        z = (x @ W.reshape(M * N, C).t()).view(B, h * w, M, N) + b  # (B, P, M, N)
        maps = torch.relu(z)
        # the small contractions as broadcast products: torch's bmm path for these
        # shapes is far slower on CPU than the arithmetic they need
        plain = (maps.mean(1).unsqueeze(2) * Fc.unsqueeze(0)).sum(-1)  # (B, M, N)
        rec = [j for j, i in enumerate(idx) if self.normalizers[i] is not None]
        if not rec:
            return (plain, plain) if with_plain else plain
        rj = torch.as_tensor(rec, dtype=torch.long)
        mr, Fr = maps[:, :, rj], Fc[rj]  # (B, P, R, N), (R, N, N)
        if target is None:
            t = plain[:, rj].detach().argmax(-1)  # (B, R)
        else:
            t = torch.as_tensor(target, dtype=torch.long).view(B, 1).expand(B, len(rec))
        wt = Fr[torch.arange(len(rec)).view(1, -1), t]  # (B, R, N): fc rows of the targets
        cams = (mr * wt.unsqueeze(1)).sum(-1).transpose(1, 2).reshape(B, len(rec), h, w)
        masks = torch.empty_like(cams)
        for r, j in enumerate(rec):
            masks[:, r] = self.normalizers[idx[j]](cams[:, r])
        masked = mr * masks.flatten(2).transpose(1, 2).unsqueeze(-1)  # (B, P, R, N)
        recam = (masked.mean(1).unsqueeze(2) * Fr.unsqueeze(0)).sum(-1)  # (B, R, N)
        out = plain.clone()
        out[:, rj] = recam
        return (out, plain) if with_plain else out

    def export(self, i: int, head: nn.Module) -> nn.Module:
        """Copy the weights of head ``i`` into ``head`` (a CAMHead/ReCAMHead) and return it."""
        with torch.no_grad():
            head.conv.weight.copy_(self.weight[i].detach()[:, :, None, None])
            head.conv.bias.copy_(self.bias[i].detach())
            head.fc.weight.copy_(self.fc[i].detach())
        return head


class StackedAdam:
    """Adam (torch.optim.Adam's update, betas 0.9/0.999, eps 1e-8) for stacked
    parameters whose first dimension is the model; ``lrs`` (M,) per model;
    only the rows in ``active`` are updated."""

    def __init__(self, params: Sequence[Tensor], lrs: Sequence[float], betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lrs = torch.as_tensor(lrs, dtype=torch.float32)
        self.b1, self.b2, self.eps = betas[0], betas[1], eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = torch.zeros(len(lrs))

    @torch.no_grad()
    def step(self, active: Sequence[int]) -> None:
        # Every row is updated in place with a per-row learning rate that is 0 for
        # stopped heads (their weights stay exactly as they were); cheaper than
        # gathering and scattering the active rows.
        on = torch.zeros(len(self.lrs))
        on[list(active)] = 1.0
        self.t += on
        t = self.t.clamp(min=1)
        bc1 = 1 - self.b1 ** t
        bc2 = 1 - self.b2 ** t
        step_size = self.lrs * on / bc1
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad
            shape = (-1,) + (1,) * (p.dim() - 1)
            m.mul_(self.b1).add_(g, alpha=1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            denom = (v.sqrt() / bc2.sqrt().view(shape)).add_(self.eps)
            p.addcdiv_(m * step_size.view(shape), denom, value=-1.0)
            p.grad = None


def topk_correct(logits: Tensor, y: Tensor, ks=(1, 3, 5)) -> Dict[int, Tensor]:
    """Number of correct top-k predictions per model; logits (B, M, N), y (B,)."""
    top = logits.topk(max(ks), dim=-1).indices  # (B, M, K)
    hit = top == y.view(-1, 1, 1)
    return {k: hit[..., :k].any(-1).sum(0) for k in ks}


def evaluate_stacked(heads: StackedHeads, x: Tensor, y: Tensor, active: Sequence[int], batch_size: int = 170) -> dict:
    """Loss and top-1/3/5 (fractions) per active head with the default ReCAM target."""
    n = x.shape[0]
    loss = torch.zeros(len(active))
    hits = {k: torch.zeros(len(active)) for k in (1, 3, 5)}
    with torch.no_grad():
        for s in range(0, n, batch_size):
            f, t = x[s:s + batch_size].float(), y[s:s + batch_size]
            lo = heads(f, None, active)
            loss += F.cross_entropy(lo.permute(0, 2, 1), t.view(-1, 1).expand(-1, lo.shape[1]), reduction="none").sum(0)
            for k, c in topk_correct(lo, t).items():
                hits[k] += c
    return {"loss": (loss / n).tolist(), **{f"top{k}": (hits[k] / n).tolist() for k in hits}}


def select_epoch(history: Sequence[dict]) -> Optional[dict]:
    """The study's reporting rule: among epochs with ``train_loss >= val_loss / 2``,
    the one with the best ``val_top1`` (ties: lower ``val_loss``, then earlier)."""
    eligible = [h for h in history if h["train_loss"] >= 0.5 * h["val_loss"]]
    if not eligible:
        return None
    return min(eligible, key=lambda h: (-h["val_top1"], h["val_loss"], h["epoch"]))


def _better(h: dict, best: Optional[dict]) -> bool:
    return best is None or (-h["val_top1"], h["val_loss"], h["epoch"]) < (-best["val_top1"], best["val_loss"], best["epoch"])


def train_grid(cache: dict, run_dir: Path, models: Sequence[str] = MODEL_NAMES, lrs: Sequence[float] = DEFAULT_LRS,
               epochs: int = 40, batch_size: int = 8, seed: int = 0, stop_rule: bool = True,
               loss: str = "recam") -> dict:
    """Train every (model, lr) on the cached features; returns the results dict and
    writes checkpoints under ``run_dir/heads``.

    ``loss="recam"`` (the study's protocol): cross-entropy of each head's output
    (re-activated logits with the label as target for ReCAM heads). ``loss="joint"``
    (a supplementary variant, not the study's): for ReCAM heads, cross-entropy of
    the plain CAM logits plus that of the re-activated logits, as in the ReCAM
    paper's training objective; CAM heads are unchanged."""
    if loss not in ("recam", "joint"):
        raise ValueError(f"loss must be 'recam' or 'joint', got {loss!r}")
    from camkit.heads import save_head

    xtr, ytr = cache["train"]["x"], cache["train"]["y"]
    xva, yva = cache["val"]["x"], cache["val"]["y"]
    channels = xtr.shape[1]
    grid: List[Tuple[str, float]] = [(m, lr) for m in models for lr in lrs]
    fresh = []
    for m, _lr in grid:
        torch.manual_seed(seed)  # every head starts from the same initial weights
        fresh.append(make_head(m, channels))
    heads = StackedHeads(fresh)
    opt = StackedAdam([heads.weight, heads.bias, heads.fc], [lr for _, lr in grid])
    M = len(grid)
    active = list(range(M))
    history: List[List[dict]] = [[] for _ in range(M)]
    best_loss = [math.inf] * M
    best_sel: List[Optional[dict]] = [None] * M
    stopped_at: List[Optional[int]] = [None] * M
    g = torch.Generator().manual_seed(seed)
    n = xtr.shape[0]
    steps = math.ceil(n / batch_size)
    t0 = time.perf_counter()
    for ep in range(1, epochs + 1):
        if not active:
            break
        perm = torch.randperm(n, generator=g)
        run_loss = torch.zeros(len(active))
        run_hit = torch.zeros(len(active))
        for s in tqdm(range(steps), desc=f"epoch {ep}/{epochs} ({len(active)} heads)", leave=False, mininterval=2.0):
            bi = perm[s * batch_size:(s + 1) * batch_size]
            f, y = xtr[bi].float(), ytr[bi]
            lo, plain = heads(f, y, active, with_plain=True)  # (B, M', N); ReCAM target = label
            yy = y.view(-1, 1).expand(-1, lo.shape[1])
            per = F.cross_entropy(lo.permute(0, 2, 1), yy, reduction="none").mean(0)
            if loss == "joint" and any(heads.normalizers[i] is not None for i in active):
                isrec = torch.tensor([heads.normalizers[i] is not None for i in active], dtype=per.dtype)
                extra = F.cross_entropy(plain.permute(0, 2, 1), yy, reduction="none").mean(0) * isrec
                (per + extra).sum().backward()
            else:
                per.sum().backward()
            opt.step(active)
            run_loss += per.detach() * len(bi)
            run_hit += (lo.detach().argmax(-1) == y.view(-1, 1)).sum(0)
        ev = evaluate_stacked(heads, xva, yva, active)
        still = []
        for j, i in enumerate(active):
            h = {"epoch": ep, "train_loss": float(run_loss[j] / n), "train_top1": float(run_hit[j] / n),
                 "val_loss": ev["loss"][j], "val_top1": ev["top1"][j], "val_top3": ev["top3"][j], "val_top5": ev["top5"][j]}
            history[i].append(h)
            name, lr = grid[i]
            if h["val_loss"] < best_loss[i]:
                best_loss[i] = h["val_loss"]
                p = checkpoint_path(run_dir, name, lr, "best_val_loss")
                p.parent.mkdir(parents=True, exist_ok=True)
                save_head(heads.export(i, make_head(name, channels)), p)
            if h["train_loss"] >= 0.5 * h["val_loss"] and _better(h, best_sel[i]):
                best_sel[i] = h
                p = checkpoint_path(run_dir, name, lr, "selected")
                p.parent.mkdir(parents=True, exist_ok=True)
                save_head(heads.export(i, make_head(name, channels)), p)
            if stop_rule and h["val_loss"] > 2 * h["train_loss"]:
                stopped_at[i] = ep
            else:
                still.append(i)
        active = still
        print(f"epoch {ep}: {len(active)} heads still training, {time.perf_counter() - t0:.1f} s", flush=True)
    seconds = time.perf_counter() - t0
    runs = []
    for i, (name, lr) in enumerate(grid):
        sel = select_epoch(history[i])
        runs.append({"model": name, "lr": lr, "lr_tag": lr_tag(lr), "normalizer": NORMALIZER_OF.get(name),
                     "selected": sel, "stopped_at": stopped_at[i], "epochs_run": len(history[i]),
                     "best_val_loss_epoch": min(history[i], key=lambda h: h["val_loss"])["epoch"] if history[i] else None,
                     "history": history[i]})
    return {"runs": runs, "train_seconds": seconds, "epochs": epochs, "batch_size": batch_size, "seed": seed, "loss": loss,
            "n_train": int(n), "n_val": int(xva.shape[0]), "head_epochs": sum(len(h) for h in history)}


def save_results(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
