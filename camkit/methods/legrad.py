"""LeGrad (Bousselham et al., "LeGrad: An Explainability Method for Vision
Transformers via Feature Formation Sensitivity", 2024, arXiv 2404.03214), as
torchcam 0.5.0 has it.

For each hooked transformer block ``l``: the block's tokens ``z^l (B, N, D)``
go through the model's head (mean over the tokens, the final norm, the
classifier: ``s^l = head(norm(mean_n z^l))``, LeGrad's and torchcam's
pooling); the gradient of the target's score ``s^l_c`` with respect to that
block's post-softmax attention ``P^l (B, heads, N, N)`` is taken, its ReLU
averaged over the heads and the queries, the prefix (class) tokens' columns
dropped and the rest laid out on the patch grid. The map is the mean over the
blocks (then normalized). No attention value multiplies the gradients.

The attention probabilities are read for one call: timm's ``Attention``
runs its explicit softmax path (``fused_attn`` is set False during the call and
restored) and its ``attn_drop`` output is recorded; ``nn.MultiheadAttention``
(torchvision's ViT) is asked for per-head weights and its output is recomputed
from them, as torchcam does, so that the output depends on the recorded tensor.
K targets are one batched backward per block.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from math import isqrt
from typing import Callable, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, InputTypeError
from .base import NO_PATH, CallContext, Layers, _GradientMethod, all_zero, target_gradients
from .options import GradientOptions
from .precision import float32_math, work_dtype
from .registry import register_method

Head = Callable[[Tensor], Tensor]
NO_ATTENTION = ("LeGrad explains vision transformers: {what} holds no attention layer (nn.MultiheadAttention or "
                "timm's Attention); hook transformer blocks")


def legrad_formula(grads: Sequence[Tensor], prefix: int, grid: Tuple[int, int]) -> Tensor:
    """LeGrad's map from the attention gradients of each block.

    Args:
        grads: per block, ``d s^l_c / d P^l`` of shape ``(B, K, heads, N, N)`` (queries, keys).
        prefix: the number of prefix (class, register) tokens, dropped from the keys.
        grid: the patch grid ``(h, w)``, ``h * w = N - prefix``.

    Returns:
        ``(B, K, h, w)``: ``mean_l mean_{heads, queries} ReLU(grad)`` over the patch keys.
    """
    rel = torch.stack([g.clamp(min=0).mean(dim=(2, 3))[..., prefix:] for g in grads]).mean(dim=0)
    return rel.unflatten(-1, grid)


def is_attention(m: nn.Module) -> bool:
    """``nn.MultiheadAttention`` or a timm-style attention (``fused_attn`` flag and an ``attn_drop`` module)."""
    return isinstance(m, nn.MultiheadAttention) or (
        hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), nn.Module))


def attention_in(block: nn.Module) -> Optional[Tuple[str, nn.Module]]:
    """The first attention module strictly inside ``block`` (relative name), or None."""
    return next(((n, m) for n, m in block.named_modules() if n and is_attention(m)), None)


def transformer_blocks(model: nn.Module, layers: Sequence[Tuple[str, nn.Module]]) -> List[Tuple[str, str]]:
    """For each hooked layer, the block holding it (itself, or its closest ancestor below the
    model that holds an attention module) and that attention's full name, in order, once each.

    Raises:
        InputError: a layer in no block with attention.
    """
    out: List[Tuple[str, str]] = []
    for name, _ in layers:
        parts = name.split(".")
        found = None
        for cut in range(len(parts), 0, -1):
            bname = ".".join(parts[:cut])
            att = attention_in(model.get_submodule(bname))
            if att is not None:
                found = (bname, f"{bname}.{att[0]}")
                break
        if found is None:
            raise InputError(NO_ATTENTION.format(what=f"layer {name!r}"))
        if found not in out:
            out.append(found)
    return out


def default_head(model: nn.Module) -> Optional[Head]:
    """``tokens (B, N, D) -> logits (B, C)`` for timm's and torchvision's ViTs: the mean token
    through the final norm and the classifier (a distilled DeiT's two heads averaged, as its eval
    output is); None for other models."""
    head, norm = getattr(model, "head", None), getattr(model, "norm", None)
    if hasattr(model, "num_prefix_tokens") and isinstance(head, nn.Module) and isinstance(norm, nn.Module):
        fc_norm = getattr(model, "fc_norm", None) or nn.Identity()
        dist = getattr(model, "head_dist", None)  # timm's distilled DeiT: the mean of its two heads (eval)
        if isinstance(dist, nn.Module):
            return lambda t: (head(fc_norm(norm(t.mean(dim=1)))) + dist(fc_norm(norm(t.mean(dim=1))))) / 2
        return lambda t: head(fc_norm(norm(t.mean(dim=1))))
    ln, heads = getattr(getattr(model, "encoder", None), "ln", None), getattr(model, "heads", None)
    if isinstance(ln, nn.Module) and isinstance(heads, nn.Module):
        return lambda t: heads(ln(t.mean(dim=1)))
    return None


def _timm_hook(store: Dict[str, Tensor], name: str):
    def hook(module: nn.Module, inputs: object, out: Tensor) -> Tensor:
        if not torch.is_inference_mode_enabled():
            torch.set_grad_enabled(True)  # the graph starts here (the caller's no_grad block restores the mode)
        if torch.is_grad_enabled() and not out.requires_grad:
            out = out.detach().requires_grad_(True)
        store[name] = out
        return out

    return hook


def _mha_pre_hook(flags: Dict[str, Tuple[bool, bool]], name: str):
    def hook(module: nn.Module, args: tuple, kwargs: dict):
        if not torch.is_inference_mode_enabled():
            torch.set_grad_enabled(True)
        args, kwargs = list(args), dict(kwargs)
        flags[name] = (bool(args[4] if len(args) > 4 else kwargs.get("need_weights", True)),
                       bool(args[6] if len(args) > 6 else kwargs.get("average_attn_weights", True)))
        for pos, key, value in ((4, "need_weights", True), (6, "average_attn_weights", False)):
            if len(args) > pos:
                args[pos] = value
            else:
                kwargs[key] = value
        return tuple(args), kwargs

    return hook


def _mha_hook(store: Dict[str, Tensor], flags: Dict[str, Tuple[bool, bool]], name: str):
    def hook(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: tuple):
        w = output[1]
        value = args[2] if len(args) > 2 else kwargs["value"]
        if not isinstance(w, Tensor) or w.dim() != 4 or value.dim() != 3:
            raise InputError(f"LeGrad: attention {name!r} gave no per-head weights (batch, heads, queries, keys)")
        if torch.is_grad_enabled() and not w.requires_grad:
            w = w.detach().requires_grad_(True)
        e, h = module.embed_dim, module.num_heads
        b_v = None if module.in_proj_bias is None else module.in_proj_bias[2 * e:]
        v = F.linear(value, module.in_proj_weight[2 * e:], b_v).unflatten(-1, (h, e // h)).transpose(1, 2)
        out = module.out_proj((w @ v).transpose(1, 2).flatten(2))  # the output, from the recorded weights
        store[name] = w
        requested, averaged = flags[name]
        return out, ((w.mean(dim=1) if averaged else w) if requested else None)

    return hook


def check_mha(name: str, m: nn.MultiheadAttention) -> None:
    """The ``nn.MultiheadAttention`` LeGrad can replay: batch-first, one in-projection, no added keys."""
    if not m.batch_first or m.in_proj_weight is None or m.bias_k is not None or m.add_zero_attn:
        raise InputError(f"LeGrad: attention {name!r} must be batch-first nn.MultiheadAttention with one "
                         "in-projection and no added key/value tokens (torchvision's ViT has it)")


@contextmanager
def attention_recorded(model: nn.Module, names: Sequence[str], store: Dict[str, Tensor]) -> Iterator[None]:
    """Inside the block, each named attention module's post-softmax probabilities
    ``(B, heads, N, N)`` land in ``store[name]`` as the model runs (hooks and timm's
    ``fused_attn`` flags are restored on exit, also on error)."""
    handles, fused, flags = [], [], {}  # type: ignore[var-annotated]
    try:
        for name in names:
            m = model.get_submodule(name)
            if isinstance(m, nn.MultiheadAttention):
                handles.append(m.register_forward_pre_hook(_mha_pre_hook(flags, name), with_kwargs=True))
                handles.append(m.register_forward_hook(_mha_hook(store, flags, name), with_kwargs=True))
            else:
                fused.append((m, m.__dict__.get("fused_attn", None), "fused_attn" in m.__dict__))
                m.fused_attn = False
                handles.append(m.attn_drop.register_forward_hook(_timm_hook(store, name)))
        yield
    finally:
        for h in handles:
            h.remove()
        for m, value, own in fused:
            if own:
                m.fused_attn = value
            else:
                del m.fused_attn


@dataclass(frozen=True)
class LeGradOptions(GradientOptions):
    """Plus ``head`` (``tokens (B, N, D) -> logits (B, C)``, for models other than timm's and
    torchvision's ViTs), ``prefix_tokens`` (default: the model's ``num_prefix_tokens``, else 1)
    and ``grid`` (the patch grid ``(h, w)``; default: the patch embedding's, else square).
    ``eigen_smooth`` does not apply."""

    head: Optional[Head] = None
    prefix_tokens: Optional[int] = None
    grid: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eigen_smooth:
            raise InputError("LeGrad has no channel sum to smooth: eigen_smooth does not apply")
        if self.head is not None and not callable(self.head):
            raise InputTypeError(f"head must be a function of the tokens, got {self.head!r}")
        p = self.prefix_tokens
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 0):
            raise InputError(f"prefix_tokens must be an int >= 0, got {p!r}")
        g = self.grid
        if g is not None and (len(tuple(g)) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                                                         for v in g)):
            raise InputError(f"grid must be two positive ints (h, w), got {g!r}")


@register_method("legrad", layers="stages", fuses=False)
class LeGrad(_GradientMethod):
    """LeGrad on transformer blocks (given as the blocks or modules inside them; default: every
    block with attention): the mean over the blocks of the positive gradients of each block's own
    class score with respect to its attention probabilities. One map, named after the last block."""

    Options = LeGradOptions
    needs_attention: ClassVar[bool] = True  # the presets offer it for vision transformers only

    def _setup(self) -> None:
        self._local = threading.local()

    def _default_layers(self, layers: Layers):
        if layers is not None:
            return layers
        names = [n.rsplit(".", 1)[0] for n, m in self.model.named_modules() if "." in n and is_attention(m)]
        if not names:
            raise InputError(NO_ATTENTION.format(what=f"the model ({type(self.model).__name__})"))
        return list(dict.fromkeys(names))

    def _hooked(self) -> List[Tuple[str, nn.Module]]:
        self._blocks = transformer_blocks(self.model, self.layers)
        for _, aname in self._blocks:
            m = self.model.get_submodule(aname)
            if isinstance(m, nn.MultiheadAttention):
                check_mha(aname, m)
        self._head = self.options.head or default_head(self.model)
        if self._head is None:
            raise InputError("LeGrad needs the model's head for a block's tokens: pass head=fn(tokens (B, N, D)) "
                             "-> logits (B, C)")
        return [(b, self.model.get_submodule(b)) for b, _ in self._blocks]

    def _run_model(self, x: Tensor) -> object:
        store: Dict[str, Tensor] = {}
        self._local.attn = store
        with attention_recorded(self.model, [a for _, a in self._blocks], store):
            return super()._run_model(x)

    def _grid(self, patches: int) -> Tuple[int, int]:
        grid = self.options.grid or getattr(getattr(self.model, "patch_embed", None), "grid_size", None)
        if grid is not None and int(grid[0]) * int(grid[1]) == patches:
            return int(grid[0]), int(grid[1])
        side = isqrt(max(patches, 0))
        if self.options.grid is not None or side * side != patches or patches == 0:
            raise InputError(f"LeGrad: {patches} patch tokens do not fill the grid {grid or 'square'}; "
                             "pass grid=(h, w) and prefix_tokens=")
        return side, side

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        target, scores = ctx.target, ctx.scores
        classes = target.classes(scores) if getattr(target, "logit", False) else None
        if classes is None:
            raise InputError("LeGrad explains class targets (ints, topk=, 'all'): each block's own score for the class")
        classes, store, grads = classes.clamp(min=0), self._local.attn, []
        for bname, aname in self._blocks:
            if aname not in store:
                raise InputError(f"LeGrad: the attention {aname!r} did not run in the forward")
            with torch.enable_grad():
                s = self._head(ctx.acts[bname])
                if not isinstance(s, Tensor) or s.dim() != 2 or s.shape[0] != classes.shape[0]:
                    raise InputError(f"LeGrad: head= must map block {bname!r}'s tokens to logits (B, C), got "
                                     f"{tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__}")
                v = s.gather(1, classes)
            g = target_gradients(v, [store[aname]], self._batched([store[aname]]))[0] if v.requires_grad else None
            if g is None:
                raise InputError(NO_PATH.format(names=[bname]))
            grads.append(work_dtype(g))
        ctx.flag("zero_gradients", all_zero(grads))
        prefix = self.options.prefix_tokens
        prefix = int(getattr(self.model, "num_prefix_tokens", 1)) if prefix is None else prefix
        grid = self._grid(grads[0].shape[-1] - prefix)
        with float32_math(scores.device.type):
            return {self._blocks[-1][0]: legrad_formula(grads, prefix, grid)}
