"""Training of all heads at once on the cached features.

For one seed, every (model, lr) of the grid trains on the same batches (batch 8,
the same seeded shuffle each epoch). Because the heads share their input, their
1x1 convolutions run as one matrix product (``StackedHeads``); what follows the
convolution is the same computation as ``camkit.heads`` (``CAMHead.forward``,
``ReCAMHead.forward``, ``PaperReCAMHead.loss``; checked in tests/test_flower17.py
against those modules), and each head has its own Adam state and learning rate
(``StackedAdam``, same update as ``torch.optim.Adam`` with default betas/eps).

Protocol, as the study's code does it (``KelvinHong/DL-assignment``: ``main.py``,
``utils.py`` class ``ReCAM``, method ``recam_features``):

- Loss: cross-entropy of each head's output. A ReCAM head's output is its
  re-activated logits, the maps masked by the normalized CAM of the **plain
  head's top-1 class** (``mask="top1"``), in training and in evaluation, with
  gradients flowing through the mask.
- After each epoch: validation loss and top-1/3/5; a head stops when validation
  loss > 2 x training loss (training loss = mean of the epoch's batch losses).
- Selection, both recorded per (model, lr, seed) (:func:`select_study`,
  :func:`select_today`): the study kept a checkpoint only when the validation
  loss improved on every earlier epoch and reported the best validation top-1
  among those whose training loss is not below half the validation loss (so the
  stop epoch never counts); "today's" rule takes the best top-1 among all epochs
  with that property. Checkpoints ``study.pt``, ``today.pt`` and
  ``best_val_loss.pt`` (the study's last saved file).
- Seeds: the seed sets the initial weights (within a seed, every head of one
  architecture starts from the same weights) and the batch order; the augmented
  copies come from the feature cache (its own seed).

Supplementary variants (not the study's protocol): ``mask="label"`` (training
masks by the label's CAM; evaluation still by the top-1's, as at test time no
label is known), ``loss="joint"`` (adds the plain logits' cross-entropy for
ReCAM heads), and ``paper_recam`` heads (Chen et al.'s loss,
``camkit.heads.PaperReCAMHead``: plain logits' cross-entropy + lam x the
predictor's cross-entropy on the features masked by the label's CAM; they
classify with the plain logits). The loss recorded (training and validation)
is each head's whole objective.
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

from .models import ALL_MODELS, NORMALIZER_OF, checkpoint_path, lr_tag, make_head

DEFAULT_LRS = (1e-5, 5e-5, 1e-4, 2e-4)
DEFAULT_SEEDS = (0, 1, 2)
MASKS = ("top1", "label")
LOSSES = ("recam", "joint")
RULES = ("study", "today")


class StackedHeads(nn.Module):
    """M heads (CAMHead, ReCAMHead or PaperReCAMHead) over the same features, evaluated together.

    Parameters: ``weight`` (M, N, C) and ``bias`` (M, N) of the 1x1 convs, ``fc``
    (M, N, N) of the bias-free linear layers, ``pred`` (M, N, N) of the paper
    heads' predictors (unused, zero, for the other heads).
    """

    def __init__(self, heads: Sequence[nn.Module]):
        super().__init__()
        from camkit.heads import PaperReCAMHead, ReCAMHead

        n = heads[0].num_classes
        self.weight = nn.Parameter(torch.stack([h.conv.weight.detach()[:, :, 0, 0] for h in heads]).clone())
        self.bias = nn.Parameter(torch.stack([h.conv.bias.detach() for h in heads]).clone())
        self.fc = nn.Parameter(torch.stack([h.fc.weight.detach() for h in heads]).clone())
        self.pred = nn.Parameter(torch.stack([h.predictor.weight.detach() if isinstance(h, PaperReCAMHead)
                                              else torch.zeros(n, n) for h in heads]).clone())
        self.kinds = ["paper" if isinstance(h, PaperReCAMHead) else "recam" if isinstance(h, ReCAMHead) else "cam"
                      for h in heads]
        from camkit.normalize import relu_max

        self.normalizers = [h.normalize if k == "recam" else relu_max if k == "paper" else None
                            for h, k in zip(heads, self.kinds)]
        self.lams = torch.tensor([float(h.lam) if k == "paper" else 0.0 for h, k in zip(heads, self.kinds)])
        self.channels = heads[0].in_channels
        self.num_classes = n

    @property
    def num_models(self) -> int:
        return self.weight.shape[0]

    def _run(self, f: Tensor, idx: List[int], target: Optional[Tensor], labels: Optional[Tensor]):
        """``(out, plain, pred)``, each (B, M', N) for the heads ``idx``: out = each head's
        classification output (ReCAM: re-activated with ``target``, or the plain top-1
        when None), plain = the plain CAM logits, pred = the paper heads' predictor
        logits on the maps masked by the label's CAM (None without labels)."""
        if idx == list(range(self.num_models)):
            W, b, Fc, Pr = self.weight, self.bias, self.fc, self.pred
        else:
            it = torch.as_tensor(idx, dtype=torch.long)
            W, b, Fc, Pr = self.weight[it], self.bias[it], self.fc[it], self.pred[it]
        B, C, h, w = f.shape
        M, N = W.shape[0], W.shape[1]
        x = f.flatten(2).transpose(1, 2).reshape(B * h * w, C)
        z = (x @ W.reshape(M * N, C).t()).view(B, h * w, M, N) + b  # (B, P, M, N)
        maps = torch.relu(z)
        # the small contractions as broadcast products: torch's bmm path for these
        # shapes is far slower on CPU than the arithmetic they need
        plain = (maps.mean(1).unsqueeze(2) * Fc.unsqueeze(0)).sum(-1)  # (B, M, N)
        kinds = [self.kinds[i] for i in idx]
        rows = [j for j, k in enumerate(kinds) if k == "recam" or (k == "paper" and labels is not None)]
        if not rows:
            return plain, plain, None
        rj = torch.as_tensor(rows, dtype=torch.long)
        R = len(rows)
        mr, Fr = maps[:, :, rj], Fc[rj]  # (B, P, R, N), (R, N, N)
        top1 = plain[:, rj].detach().argmax(-1)  # (B, R)
        recam_t = top1 if target is None else torch.as_tensor(target, dtype=torch.long).view(B, 1).expand(B, R)
        paper = torch.tensor([kinds[j] == "paper" for j in rows])
        t = torch.where(paper.view(1, R), labels.view(B, 1).expand(B, R), recam_t) if labels is not None else recam_t
        wt = Fr[torch.arange(R).view(1, -1), t]  # (B, R, N): fc rows of the targets
        cams = (mr * wt.unsqueeze(1)).sum(-1).transpose(1, 2).reshape(B, R, h, w)
        masks = torch.empty_like(cams)
        for r, j in enumerate(rows):
            masks[:, r] = self.normalizers[idx[j]](cams[:, r])
        pooled = (mr * masks.flatten(2).transpose(1, 2).unsqueeze(-1)).mean(1)  # (B, R, N)
        out, pred = plain, None
        rec = [r for r in range(R) if not paper[r]]
        if rec:
            rr = torch.as_tensor(rec, dtype=torch.long)
            out = plain.clone()
            out[:, rj[rr]] = (pooled[:, rr].unsqueeze(2) * Fr[rr].unsqueeze(0)).sum(-1)
        pap = [r for r in range(R) if paper[r]]
        if pap:
            pr = torch.as_tensor(pap, dtype=torch.long)
            pred = torch.zeros_like(plain)
            pred[:, rj[pr]] = (pooled[:, pr].unsqueeze(2) * Pr[rj[pr]].unsqueeze(0)).sum(-1)
        return out, plain, pred

    def forward(self, f: Tensor, target: Optional[Tensor] = None, active: Optional[Sequence[int]] = None,
                with_plain: bool = False):
        """Outputs ``(B, M', N)`` of the ``active`` heads (default all): a ReCAM head's
        re-activated logits with ``target`` (B,) as ReCAM target, or its own plain top-1
        when ``target`` is None; the plain logits of CAM and paper heads.
        ``with_plain=True`` also returns the plain CAM logits of every head."""
        idx = list(range(self.num_models)) if active is None else list(active)
        out, plain, _ = self._run(f, idx, target, None)
        return (out, plain) if with_plain else out

    def losses(self, f: Tensor, y: Tensor, active: Optional[Sequence[int]] = None, mask: str = "top1",
               loss: str = "recam") -> Tuple[Tensor, Tensor]:
        """``(per-head objective (M',), outputs (B, M', N))`` on features f with labels y (B,).

        ``mask``: the ReCAM heads' mask class ("top1": plain top-1; "label": y);
        ``loss="joint"`` adds the plain logits' cross-entropy for ReCAM heads. Paper
        heads: plain cross-entropy + lam x the predictor's cross-entropy.
        """
        idx = list(range(self.num_models)) if active is None else list(active)
        out, plain, pred = self._run(f, idx, y if mask == "label" else None, y)
        yy = y.view(-1, 1).expand(-1, out.shape[1])
        per = F.cross_entropy(out.permute(0, 2, 1), yy, reduction="none").mean(0)
        if loss == "joint":
            isrec = torch.tensor([self.kinds[i] == "recam" for i in idx], dtype=per.dtype)
            if isrec.any():
                per = per + isrec * F.cross_entropy(plain.permute(0, 2, 1), yy, reduction="none").mean(0)
        if pred is not None:
            lam = self.lams[torch.as_tensor(idx, dtype=torch.long)]
            per = per + lam * F.cross_entropy(pred.permute(0, 2, 1), yy, reduction="none").mean(0)
        return per, out

    def export(self, i: int, head: nn.Module) -> nn.Module:
        """Copy the weights of head ``i`` into ``head`` (a camkit head of the same kind) and return it."""
        with torch.no_grad():
            head.conv.weight.copy_(self.weight[i].detach()[:, :, None, None])
            head.conv.bias.copy_(self.bias[i].detach())
            head.fc.weight.copy_(self.fc[i].detach())
            if self.kinds[i] == "paper":
                head.predictor.weight.copy_(self.pred[i].detach())
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
            if g is None:  # a parameter no active head uses (the predictor of non-paper heads)
                continue
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


def evaluate_stacked(heads: StackedHeads, x: Tensor, y: Tensor, active: Sequence[int], batch_size: int = 170,
                     loss: str = "recam") -> dict:
    """Objective and top-1/3/5 (fractions) per active head, ReCAM heads masked by their plain top-1."""
    n = x.shape[0]
    active = list(active)
    total = torch.zeros(len(active))
    hits = {k: torch.zeros(len(active)) for k in (1, 3, 5)}
    with torch.no_grad():
        for s in range(0, n, batch_size):
            f, t = x[s:s + batch_size].float(), y[s:s + batch_size]
            per, lo = heads.losses(f, t, active, mask="top1", loss=loss)
            total += per * len(t)
            for k, c in topk_correct(lo, t).items():
                hits[k] += c
    return {"loss": (total / n).tolist(), **{f"top{k}": (hits[k] / n).tolist() for k in hits}}


def _key(h: dict):
    return (-h["val_top1"], h["val_loss"], h["epoch"])


def eligible(h: dict) -> bool:
    """Not overfitted by the study's criterion: training loss >= half the validation loss."""
    return h["train_loss"] >= 0.5 * h["val_loss"]


def saved_epochs(history: Sequence[dict]) -> List[dict]:
    """The epochs the study's code saved: validation loss below that of every earlier epoch."""
    out, best = [], math.inf
    for h in history:
        if h["val_loss"] < best:
            best = h["val_loss"]
            out.append(h)
    return out


def select_study(history: Sequence[dict]) -> Optional[dict]:
    """The study's rule: among saved epochs (:func:`saved_epochs`) not overfitted
    (:func:`eligible`), the best ``val_top1`` (ties: lower ``val_loss``, then earlier)."""
    cand = [h for h in saved_epochs(history) if eligible(h)]
    return min(cand, key=_key) if cand else None


def select_today(history: Sequence[dict]) -> Optional[dict]:
    """Today's rule: among all epochs not overfitted, the best ``val_top1`` (same ties)."""
    cand = [h for h in history if eligible(h)]
    return min(cand, key=_key) if cand else None


SELECT = {"study": select_study, "today": select_today}


def train_grid(cache: dict, run_dir: Path, models: Sequence[str] = ALL_MODELS, lrs: Sequence[float] = DEFAULT_LRS,
               epochs: int = 40, batch_size: int = 8, seed: int = 0, stop_rule: bool = True, mask: str = "top1",
               loss: str = "recam", lam: float = 1.0) -> dict:
    """Train every (model, lr) for one seed on the cached features; returns the results
    dict and writes checkpoints under ``run_dir/heads`` (see the module docstring)."""
    if mask not in MASKS or loss not in LOSSES:
        raise ValueError(f"mask must be one of {MASKS} and loss one of {LOSSES}, got {mask!r}, {loss!r}")
    from camkit.heads import save_head

    xtr, ytr = cache["train"]["x"], cache["train"]["y"]
    xva, yva = cache["val"]["x"], cache["val"]["y"]
    channels = xtr.shape[1]
    grid: List[Tuple[str, float]] = [(m, lr) for m in models for lr in lrs]
    fresh = []
    for m, _lr in grid:
        torch.manual_seed(seed)  # within a seed, every head of one architecture starts from the same weights
        fresh.append(make_head(m, channels, lam=lam))
    heads = StackedHeads(fresh)
    opt = StackedAdam([heads.weight, heads.bias, heads.fc, heads.pred], [lr for _, lr in grid])
    M = len(grid)
    active = list(range(M))
    history: List[List[dict]] = [[] for _ in range(M)]
    best_loss = [math.inf] * M
    best: Dict[str, List[Optional[dict]]] = {r: [None] * M for r in RULES}
    stopped_at: List[Optional[int]] = [None] * M
    g = torch.Generator().manual_seed(seed)
    n = xtr.shape[0]
    steps = math.ceil(n / batch_size)
    t0 = time.perf_counter()

    def save(i: int, which: str) -> None:
        name, lr = grid[i]
        p = checkpoint_path(run_dir, name, lr, which, seed)
        p.parent.mkdir(parents=True, exist_ok=True)
        save_head(heads.export(i, make_head(name, channels, lam=lam)), p)

    for ep in range(1, epochs + 1):
        if not active:
            break
        perm = torch.randperm(n, generator=g)
        run_loss = torch.zeros(len(active))
        run_hit = torch.zeros(len(active))
        for s in tqdm(range(steps), desc=f"seed {seed} epoch {ep}/{epochs} ({len(active)} heads)", leave=False,
                      mininterval=5.0):
            bi = perm[s * batch_size:(s + 1) * batch_size]
            f, y = xtr[bi].float(), ytr[bi]
            per, lo = heads.losses(f, y, active, mask=mask, loss=loss)
            per.sum().backward()
            opt.step(active)
            run_loss += per.detach() * len(bi)
            run_hit += (lo.detach().argmax(-1) == y.view(-1, 1)).sum(0)
        ev = evaluate_stacked(heads, xva, yva, active, loss=loss)
        still = []
        for j, i in enumerate(active):
            h = {"epoch": ep, "train_loss": float(run_loss[j] / n), "train_top1": float(run_hit[j] / n),
                 "val_loss": ev["loss"][j], "val_top1": ev["top1"][j], "val_top3": ev["top3"][j], "val_top5": ev["top5"][j]}
            h["saved"] = h["val_loss"] < best_loss[i]  # the study's code saved this epoch
            history[i].append(h)
            if h["saved"]:
                best_loss[i] = h["val_loss"]
                save(i, "best_val_loss")
            for rule in RULES:
                if eligible(h) and (rule == "today" or h["saved"]) and (best[rule][i] is None or _key(h) < _key(best[rule][i])):
                    best[rule][i] = h
                    save(i, rule)
            if stop_rule and h["val_loss"] > 2 * h["train_loss"]:
                stopped_at[i] = ep
            else:
                still.append(i)
        active = still
        print(f"seed {seed} epoch {ep}: {len(active)} heads still training, {time.perf_counter() - t0:.1f} s", flush=True)
    seconds = time.perf_counter() - t0
    runs = []
    for i, (name, lr) in enumerate(grid):
        sel = {rule: SELECT[rule](history[i]) for rule in RULES}
        assert all(sel[r] == best[r][i] for r in RULES), "checkpoints and selection rules disagree"
        runs.append({"model": name, "lr": lr, "lr_tag": lr_tag(lr), "seed": seed, "normalizer": NORMALIZER_OF.get(name),
                     **sel, "stopped_at": stopped_at[i], "epochs_run": len(history[i]),
                     "best_val_loss_epoch": min(history[i], key=lambda h: h["val_loss"])["epoch"] if history[i] else None,
                     "history": history[i]})
    return {"runs": runs, "train_seconds": seconds, "epochs": epochs, "batch_size": batch_size, "seed": seed,
            "mask": mask, "loss": loss, "lam": lam, "n_train": int(n), "n_val": int(xva.shape[0]),
            "head_epochs": sum(len(h) for h in history)}


def _train_from_file(cache_path: str, run_dir: Path, seed: int, threads: int, kw: dict) -> dict:
    """One seed in a worker process: its own cache read, ``threads`` torch threads."""
    from .cache import load_cache

    torch.set_num_threads(threads)
    return train_grid(load_cache(Path(cache_path)), run_dir, seed=seed, **kw)


def train_seeds(cache: dict, run_dir: Path, seeds: Sequence[int] = DEFAULT_SEEDS, jobs: int = 1,
                cache_path: Optional[Path] = None, threads: int = 1, **kw) -> dict:
    """:func:`train_grid` for each seed; runs merged in seed order, times per seed.

    ``jobs > 1`` trains that many seeds at once, each in its own process (spawned,
    reading the cache from ``cache_path``, ``threads`` torch threads): the same
    results as one after the other, since each seed's computation is the same."""
    if jobs > 1 and len(seeds) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        if cache_path is None:
            raise ValueError("jobs > 1 needs cache_path")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
            futures = [ex.submit(_train_from_file, str(cache_path), run_dir, s, threads, kw) for s in seeds]
            parts = [f.result() for f in futures]
    else:
        parts = [train_grid(cache, run_dir, seed=s, **kw) for s in seeds]
    out = {k: v for k, v in parts[0].items() if k not in ("runs", "train_seconds", "seed", "head_epochs")}
    out.update({"seeds": list(seeds), "runs": [r for p in parts for r in p["runs"]],
                "train_seconds": sum(p["train_seconds"] for p in parts),
                "train_seconds_per_seed": [p["train_seconds"] for p in parts],
                "head_epochs": sum(p["head_epochs"] for p in parts)})
    return out


def save_results(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
