"""Perturbation methods: the model's output on perturbed copies of each image weights
the channels of a layer's output ``A (B, C, h, w)``; no gradients.

* Score-CAM and its smoothed (SS-CAM) and integrated (IS-CAM) variants mask the
  input by each channel's upsampled, min-max-normalized activation;
* Ablation-CAM zeroes each channel in the layer's output.

``S (B, K, C)`` holds the K targets' values on the C perturbed copies of each
image; each formula turns it into channel weights. Costs and how camkit keeps
them down:

* one forward per perturbed copy, ``batch_size`` copies per forward (memory
  grows with it), every target of an image read off the same forward;
* Score-CAM: channels whose normalized maps are equal (e.g. all the
  all-zero channels) share one forward; the masked inputs run, channels-last,
  on a copy of the model with each BatchNorm folded into the convolution
  before it (``torch.fx``), unless ``fold_batchnorm=False``, the model cannot
  be traced or it carries hooks of its own (then on the model itself);
* Ablation-CAM: an all-zero channel cannot change the output (weight 0, no
  forward); with ``reuse_below=True`` the layers below the hooked one run on
  the one image and a temporary forward hook replaces the layer's output by
  the ``batch_size`` ablated copies, so only the layers above run on all of
  them (tensors from below broadcast against the copies); if the model
  refuses that (e.g. it concatenates a tensor from below with one from
  above), the call falls back to running the whole model on the copies.

Targets on a perturbed copy: a class target (indices, ``topk``, ``"all"``,
``ClassScore``, ``MultiLabel``) reads the same class's score (``topk`` keeps
the classes of the unperturbed image); any other target is evaluated on the
perturbed output in place of its image's row.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..normalize import minmax, normalize_volume
from ..targets import Target, check_values
from .base import CallContext, _Method
from .eigen import channel_map
from .options import SmoothingOptions, check_noise, positive_int
from .output import select_output
from .precision import float32_math, work_dtype
from .registry import register_method
from .volume import upsample

# --------------------------------------------------------------------------- formulas


def scorecam_formula(A: Tensor, S: Tensor, softmax: bool = True, eigen: bool = False) -> Tensor:
    """Score-CAM (Wang et al., 2020): ``w = softmax_k(S)`` over the channels, map
    ``ReLU(sum_k w_k A_k)``. S ``(B, K, C)``: each target's value on the input masked
    by channel k. ``softmax=False``: ``w = S`` as it is."""
    return channel_map(S.softmax(dim=-1) if softmax else S, A, eigen)


def ablationcam_formula(A: Tensor, y: Tensor, S: Tensor, eigen: bool = False) -> Tensor:
    """Ablation-CAM (Desai and Ramaswamy, 2020): ``w_k = (y - S_k) / y``, map
    ``ReLU(sum_k w_k A_k)``. y ``(B, K)``: the targets' values; S ``(B, K, C)``:
    their values with channel k of A set to 0. Where ``y = 0``: ``w_k = y - S_k``."""
    y = y[..., None]
    return channel_map((y - S) / torch.where(y != 0, y, torch.ones_like(y)), A, eigen)


def score_masks(a: Tensor, size: Sequence[int]) -> Tensor:
    """Score-CAM's masks: each map ``(N, h, w)`` upsampled (bilinear) to ``size`` and
    min-max normalized to [0, 1] (0 for a constant map): ``(N, H, W)``; a volume's ``(N, t, h, w)``
    trilinearly to ``(T, H, W)``, each normalized as one map."""
    up = upsample(a[:, None], size)[:, 0]
    return minmax(up) if up.dim() == 3 else normalize_volume(up)


# --------------------------------------------------------------------------- targets on perturbed copies


Values = Callable[[Tensor, int], Tensor]


def perturbed_values(target: Target, scores: Tensor) -> Values:
    """``fn(out, b) -> (N, K)``: image b's K target values on N perturbed copies of it,
    ``out`` being the selected output of those copies (N, ...); ``scores`` the
    unperturbed output (B, ...). See the module's notes."""
    scores = scores.detach()
    classes = target.classes(scores) if target.logit else None
    if classes is not None:
        valid = classes >= 0
        idx = classes.clamp(min=0)

        def by_class(out: Tensor, b: int) -> Tensor:
            return out[:, idx[b]] * valid[b].to(out.dtype)

        return by_class

    def in_place_of_row(out: Tensor, b: int) -> Tensor:
        rows = []
        for o in out:
            s = scores.clone()
            s[b] = o
            rows.append(check_values(target(s), s.shape[0])[b])
        return torch.stack(rows)

    return in_place_of_row


# --------------------------------------------------------------------------- the model on perturbed inputs


def _hook_ids(model: nn.Module) -> List[Tuple[int, int]]:
    """(module id, hook id) of every forward / backward hook on the model's modules."""
    out = []
    for m in model.modules():
        for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            out += [(id(m), k) for k in getattr(m, d, {})]
    return out


def folded_copy(model: nn.Module, own_hooks: Sequence[Tuple[int, int]] = ()) -> Optional[nn.Module]:
    """A copy of ``model`` (in eval mode) with each BatchNorm folded into the
    convolution before it (``torch.fx.experimental.optimization.fuse``): the same
    function up to float rounding. None when the model cannot be traced or
    copied, or carries hooks other than ``own_hooks`` (the copy could lose them)."""
    from torch.nn.modules import module as _module

    own = set(own_hooks)
    if any(h not in own for h in _hook_ids(model)) or _module._global_forward_hooks or \
            _module._global_forward_pre_hooks:
        return None
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(model)
    except Exception:  # untraceable or uncopyable: run the model itself
        return None


# --------------------------------------------------------------------------- base


@dataclass(frozen=True)
class PerturbationOptions(SmoothingOptions):
    """Plus ``batch_size``: perturbed copies per forward (None: the class's ``default_batch_size``)."""

    batch_size: Optional[int] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size is not None:
            positive_int("batch_size", self.batch_size)


class _PerturbationMethod(_Method):
    """Gradient-free methods that run the model on perturbed copies of the input."""

    Options = PerturbationOptions
    needs_grad = False
    default_batch_size = 16

    @property
    def batch_size(self) -> int:
        """Perturbed copies per forward."""
        return self.options.batch_size or type(self).default_batch_size

    def _scores(self, raw: object, n: int) -> Tensor:
        out = select_output(raw, self.options.output)
        if out.shape[0] != n:
            raise InputError(f"the model's output has batch {out.shape[0]} for {n} perturbed inputs")
        return out


# --------------------------------------------------------------------------- Score-CAM family


@dataclass(frozen=True)
class ScoreCAMOptions(PerturbationOptions):
    """Plus ``softmax`` (the channel weights are the softmax of the values, else the values)
    and ``fold_batchnorm`` (run the masked inputs on a BatchNorm-folded copy of the model)."""

    softmax: bool = True
    fold_batchnorm: bool = True


@register_method("scorecam", layers="last")
class ScoreCAM(_PerturbationMethod):
    """Score-CAM: for each channel k, the input masked by the channel's upsampled,
    min-max-normalized activation; the targets' values on the C masked inputs,
    softmax over the channels, weight the channels (``softmax=False``: the values
    as they are; with ``targets=camkit.targets.Softmax(...)`` that is the class
    probability of each masked input, as in the authors' released code).

    ``fold_batchnorm`` (default True): run the masked inputs channels-last on a
    BatchNorm-folded copy of the model (see the module's notes).
    """

    Options = ScoreCAMOptions
    volumes = True  # masks of a (B, C, t, h, w) layer: trilinear, normalized per volume
    dedupe = True  # channels with equal normalized maps share a forward
    default_batch_size = 16  # whole-model forwards: 16 fit the CPU's caches better than 64

    def _samples(self, masks: Tensor, b: int, channels: range) -> Iterator[Tensor]:
        """The mask(s) ``(n, H, W)`` the input is multiplied by; S is the mean of their values.
        ``masks`` are image ``b``'s channels ``channels`` (positions in the maps scored)."""
        yield masks

    def _forward_fn(self) -> Callable[[Tensor], object]:
        model: nn.Module = self.model
        fast = False
        if self.options.fold_batchnorm:
            own = [(id(m), h.id) for (_, m), h in zip(self.layers, self._recorder._handles)]
            copy = folded_copy(self.model, own)
            model, fast = (copy, True) if copy is not None else (model, False)

        def run(inp: Tensor) -> object:
            if fast and inp.dim() == 4:
                inp = inp.contiguous(memory_format=torch.channels_last)
            return model(inp)

        return run

    def _masked_values(self, run: Callable[[Tensor], object], x: Tensor, A: Tensor, values: Values) -> Tensor:
        """S (B, K, C): the targets' values on the input masked by each channel of A."""
        B, spatial = A.shape[0], A.shape[2:]  # (h, w), or a volume's (t, h, w)
        size = x.shape[2:]
        low = minmax(work_dtype(A)) if A.dim() == 4 else normalize_volume(work_dtype(A))
        S = []
        for b in range(B):
            if self.dedupe:
                maps, inverse = torch.unique(low[b].flatten(1), dim=0, return_inverse=True)
                maps = maps.view(-1, *spatial)
            else:
                maps, inverse = low[b], None
            vals = []
            for start in range(0, len(maps), self.batch_size):
                chunk = range(start, min(len(maps), start + self.batch_size))
                masks = score_masks(maps[chunk.start:chunk.stop], size)
                draws = [values(self._scores(run(x[b] * m[:, None].to(x.dtype)), len(m)), b)
                         for m in self._samples(masks, b, chunk)]
                vals.append(sum(draws[1:], draws[0]) / len(draws))
            s = torch.cat(vals)
            S.append(s[inverse] if inverse is not None else s)
        return torch.stack(S).transpose(1, 2)

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        x = ctx.x.contiguous()
        fn = perturbed_values(ctx.target, ctx.scores)
        out: Dict[str, Tensor] = {}
        with self._recorder.paused():
            run = self._forward_fn()
            for name in self.layer_names:
                A = self._as_4d(name, ctx.acts[name])
                spatial = self._spatial(name, ctx.acts[name])
                S = self._masked_values(run, x, A.unflatten(2, spatial[:2]) if len(spatial) == 3 else A, fn)
                with float32_math(A.device.type):
                    out[name] = scorecam_formula(work_dtype(A), work_dtype(S), self.options.softmax,
                                                 self.options.eigen_smooth)
        return out


@dataclass(frozen=True)
class SSCAMOptions(ScoreCAMOptions):
    """Plus ``num_samples`` noise draws of standard deviation ``std`` per mask, from a private
    generator seeded by ``seed``."""

    num_samples: int = 35
    std: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_noise(self)


@register_method("sscam", layers="last", cli=False, listed=False)
class SSCAM(ScoreCAM):
    """SS-CAM (smoothed Score-CAM): each mask plus Gaussian noise of standard deviation
    ``std`` (at the input's resolution, drawn per channel and draw), the targets'
    values averaged over ``num_samples`` draws, then Score-CAM's softmax. The noise
    comes from a private generator seeded by ``seed`` (the global RNG is not used).
    Costs ``num_samples`` forwards per channel."""

    Options = SSCAMOptions
    dedupe = False  # each channel draws its own noise

    def _samples(self, masks: Tensor, b: int, channels: range) -> Iterator[Tensor]:
        # Each (image, channel) has its own generator: the noise does not depend on batch_size.
        gens = [torch.Generator().manual_seed((self.options.seed * 1_000_003 + b) * 65_537 + c) for c in channels]
        shape = masks.shape[1:]
        for _ in range(self.options.num_samples):
            noise = torch.stack([torch.randn(shape, generator=g) for g in gens])
            yield masks + noise.mul_(self.options.std).to(masks)


@dataclass(frozen=True)
class ISCAMOptions(ScoreCAMOptions):
    """Plus ``num_samples``: the integration steps."""

    num_samples: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int("num_samples", self.num_samples)


@register_method("iscam", layers="last", cli=False, listed=False)
class ISCAM(ScoreCAM):
    """IS-CAM (integrated Score-CAM): the targets' values averaged over ``num_samples``
    masks scaled by ``c_i = sum_{j <= i} j / N`` (i = 1..N, torchcam's coefficients),
    then Score-CAM's softmax. Costs ``num_samples`` forwards per distinct channel."""

    Options = ISCAMOptions

    def _samples(self, masks: Tensor, b: int, channels: range) -> Iterator[Tensor]:
        n = self.options.num_samples
        coeff = 0.0
        for i in range(1, n + 1):
            coeff += i / n
            yield masks * coeff


# --------------------------------------------------------------------------- Ablation-CAM


@dataclass(frozen=True)
class AblationOptions(PerturbationOptions):
    """Plus ``reuse_below``: run only the layers above the hooked one on the ablated copies."""

    reuse_below: bool = True


@register_method("ablationcam", layers="last")
class AblationCAM(_PerturbationMethod):
    """Ablation-CAM: the drop of each target's value when one channel of the layer's
    output is set to 0, relative to the value, weights the channels.

    ``reuse_below`` (default True): run only the layers above the hooked one on the
    ablated copies (see the module's notes). The layer's output must be
    ``(B, C, h, w)`` (no ``reshape``).
    """

    Options = AblationOptions
    volumes = True  # the ablated copies keep the layer's (C, t, h, w)
    default_batch_size = 64  # only the layers above run on the copies

    def _setup(self) -> None:
        if self.options.reshape is not None:
            raise InputError("AblationCAM ablates the layer's own output: it needs layers whose output is "
                             "(B, C, h, w), without reshape=")

    @contextmanager
    def _replaced(self, module: nn.Module, copies: Tensor) -> Iterator[None]:
        """The module's output replaced by ``copies`` during the block (a temporary forward hook)."""
        handle = module.register_forward_hook(lambda m, i, o: copies)
        try:
            yield
        finally:
            handle.remove()

    def _run_ablated(self, module: nn.Module, x1: Tensor, copies: Tensor, state: Dict[str, bool]) -> Tensor:
        """The selected output of the model with the module's output replaced by ``copies`` (n, C, h, w)."""
        n = copies.shape[0]
        with self._replaced(module, copies):
            if state["reuse"]:
                try:
                    return self._scores(self.model(x1), n)
                except (RuntimeError, InputError):
                    state["reuse"] = False  # the model does not broadcast: whole model on the copies
            return self._scores(self.model(x1.expand(n, *x1.shape[1:]).contiguous()), n)

    def _ablated_values(self, module: nn.Module, x: Tensor, A: Tensor, y: Tensor, values: Values,
                        state: Dict[str, bool]) -> Tensor:
        """S (B, K, C): the targets' values with each channel of A (the module's output) set to 0."""
        B, C = A.shape[:2]
        S = y[:, :, None].expand(B, y.shape[1], C).clone()  # an all-zero channel changes nothing
        alive = A.flatten(2).ne(0).any(dim=2).cpu()
        for b in range(B):
            for chunk in alive[b].nonzero().flatten().split(self.batch_size):
                copies = A[b].expand(len(chunk), *A.shape[1:]).clone()
                copies[torch.arange(len(chunk)), chunk.to(A.device)] = 0
                S[b, :, chunk.to(A.device)] = values(self._run_ablated(module, x[b:b + 1], copies, state), b).T
        return S

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        x = ctx.x.contiguous()
        fn = perturbed_values(ctx.target, ctx.scores)
        y = ctx.values.detach()
        state = {"reuse": self.options.reuse_below}
        out: Dict[str, Tensor] = {}
        with self._recorder.paused():
            for name, module in self.layers:
                A = self._as_4d(name, ctx.acts[name])  # a volume's folded; the copies keep the layer's shape
                S = self._ablated_values(module, x, ctx.acts[name], y, fn, state)
                with float32_math(A.device.type):
                    out[name] = ablationcam_formula(work_dtype(A), work_dtype(y), work_dtype(S),
                                                    self.options.eigen_smooth)
        return out
