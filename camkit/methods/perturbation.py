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
  all-zero channels) share one forward; the masked inputs run on a copy of
  the model with each BatchNorm folded into the convolution before it
  (``torch.fx``), unless ``fold_batchnorm=False``, the model cannot be traced
  or it carries hooks of its own (then on the model itself); on that copy
  images run channels-last (on the CPU 1.3-1.5x faster for ResNets at
  224 x 224 and MobileNets and VGG at any size, but 1.2-1.6x slower for
  ResNets below about 100 x 100: ``python -m benchmarks.perturbation --layouts``);
* Ablation-CAM: an all-zero channel cannot change the output (weight 0, no
  forward); with ``reuse_below=True`` only the layers above the hooked one
  run on the ``batch_size`` ablated copies, tensors from below (computed on
  the one image) broadcasting against them. The model is traced with
  ``torch.fx`` through the modules that hold the layer (every other module
  stays one call, run as it is): per image, the values the part above reads
  from below are computed once (nothing at all for a last layer under a
  pooling head), then only the nodes that depend on the layer's output run
  on each chunk of copies (:class:`Above`). Where the model cannot be traced,
  or those holding modules carry hooks of their own, a temporary forward hook
  replaces the layer's output by the copies in a forward of the one image
  per chunk (the layers below then run once per chunk). If the model refuses
  the broadcast (e.g. it concatenates a tensor from below with one from
  above), the call falls back to running the whole model on the copies.

Targets on a perturbed copy: a class target (indices, ``topk``, ``"all"``,
``ClassScore``, ``MultiLabel``) reads the same class's score (``topk`` keeps
the classes of the unperturbed image); any other target is evaluated on the
perturbed output in place of its image's row.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, fx, nn

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


def _hook_ids(model: nn.Module, modules: Optional[Sequence[nn.Module]] = None) -> List[Tuple[int, int]]:
    """(module id, hook id) of every forward / backward hook on the model's modules (or on ``modules``)."""
    out = []
    for m in model.modules() if modules is None else modules:
        for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            out += [(id(m), k) for k in getattr(m, d, {})]
    return out


def _global_hooks() -> bool:
    from torch.nn.modules import module as _module

    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks)


def folded_copy(model: nn.Module, own_hooks: Sequence[Tuple[int, int]] = ()) -> Optional[nn.Module]:
    """A copy of ``model`` (in eval mode) with each BatchNorm folded into the
    convolution before it (``torch.fx.experimental.optimization.fuse``): the same
    function up to float rounding. None when the model cannot be traced or
    copied, or carries hooks other than ``own_hooks`` (the copy could lose them)."""
    own = set(own_hooks)
    if any(h not in own for h in _hook_ids(model)) or _global_hooks():
        return None
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(model)
    except Exception:  # untraceable or uncopyable: run the model itself
        return None


# --------------------------------------------------------------------------- the model above a layer


def _holds(qualname: str, name: str) -> bool:
    """The module at ``qualname`` ("" the model) holds the module at ``name`` (strictly)."""
    return qualname == "" or name.startswith(qualname + ".")


class _LayerTracer(fx.Tracer):
    """Traces through the model and the modules that hold the layer ``name``; every other module call
    (the layer's own included) stays one ``call_module`` node, run as it is."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return not _holds(module_qualified_name, self.name)


def _evaluate(model: nn.Module, node: fx.Node, env: Dict[fx.Node, object], consts: Dict[str, object]) -> object:
    """One node of the model's graph on the values in ``env`` (the model's own modules, looked up now)."""
    args = fx.node.map_arg(node.args, env.__getitem__)
    kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
    if node.op == "call_module":
        return model.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)  # type: ignore[index]
    if node.op == "get_attr":
        if node.target in consts:
            return consts[node.target]
        out: object = model
        for part in str(node.target).split("."):
            out = getattr(out, part)
        return out
    return args[0]  # the output node  # type: ignore[index]


#: Operations whose result may be (a view of) their first argument.
_VIEWS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "transpose", "permute", "t", "expand",
    "expand_as", "squeeze", "unsqueeze", "narrow", "select", "contiguous", "detach", "as_strided", "split", "chunk",
    "unbind", "movedim", "swapaxes", "swapdims", "diagonal", "getitem", "real", "imag", "to", "type", "type_as",
    "float", "double", "half", "bfloat16", "identity"})
_IN_PLACE_OPERATORS = frozenset({"iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "iand", "ior",
                                 "ixor", "ilshift", "irshift", "imatmul", "setitem"})
#: Modules that may return their input itself (or a view of it).
_PASSING = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Sequential, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
            nn.Dropout3d, nn.AlphaDropout)


def _op_name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_method" else str(getattr(node.target, "__name__", ""))


def _mutates(model: nn.Module, node: fx.Node) -> bool:
    """The node may change its first argument in place (``x.mul_``, ``x += y``, ``x[i] = v``, an
    ``inplace=True`` module or function, ``out=``)."""
    if node.op == "call_module":
        return getattr(model.get_submodule(str(node.target)), "inplace", False) is True
    if node.op not in ("call_method", "call_function"):
        return False
    name = _op_name(node)
    return (name.endswith("_") and not name.startswith("__")) or name in _IN_PLACE_OPERATORS or \
        node.kwargs.get("inplace") is True or "out" in node.kwargs


def _base(model: nn.Module, node: fx.Node) -> fx.Node:
    """The node whose tensor ``node``'s value may share memory with (itself for a new tensor); modules
    outside ``torch.nn`` count as returning their input."""
    while node.args and isinstance(node.args[0], fx.Node):
        if node.op == "call_module":
            m = model.get_submodule(str(node.target))
            passes = isinstance(m, _PASSING) or getattr(m, "inplace", False) is True or \
                not type(m).__module__.startswith("torch.nn")
        else:
            passes = node.op in ("call_method", "call_function") and (_op_name(node) in _VIEWS or _mutates(model, node))
        if not passes:
            break
        node = node.args[0]
    return node


def _mutation_reaches_above(model: nn.Module, nodes: List[fx.Node], down: set, needed: set,
                            frontier: List[fx.Node]) -> bool:
    """An in-place change below the layer could make the split differ from the model: a change that is
    skipped (not needed) to memory the needed values share, or to the input or a parameter; or a needed
    change to memory the part above reads, made after that read."""
    order = {n: i for i, n in enumerate(nodes)}
    shared = {_base(model, n) for n in needed | set(frontier)}
    first_read: Dict[fx.Node, int] = {}
    for n in nodes:
        if n in down:
            for a in n.all_input_nodes:
                if a not in down:
                    first_read.setdefault(_base(model, a), order[n])
    for n in nodes:
        if n in down or not _mutates(model, n) or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        b = _base(model, n.args[0])
        if n not in needed and (b in shared or b.op in ("placeholder", "get_attr")):
            return True
        if n in needed and first_read.get(b, len(nodes)) < order[n]:
            return True
    return False


@dataclass
class Above:
    """The model from one layer on, as a function of the layer's output (its ``torch.fx`` graph, split).

    :meth:`prepare` evaluates, on one input, only the nodes that do not depend on the layer's output but
    are read by nodes that do (e.g. a residual block's skip input); :meth:`run` evaluates only the nodes
    that depend on it, the layer's output replaced by ``copies`` ``(n, ...)``, and returns the model's
    output. The values from below keep the input's batch of 1 and broadcast against the copies, as in
    a forward whose layer output is replaced by a hook.
    """

    model: nn.Module
    layer: fx.Node
    inputs: fx.Node
    below: List[fx.Node]  # graph order
    frontier: List[fx.Node]
    above: List[fx.Node]  # graph order, the output node last
    free: Dict[fx.Node, List[fx.Node]]  # after each node of ``above``: the values no later node reads
    consts: Dict[str, object]

    def prepare(self, x1: Tensor) -> Dict[fx.Node, object]:
        env: Dict[fx.Node, object] = {self.inputs: x1}
        for n in self.below:
            env[n] = _evaluate(self.model, n, env, self.consts)
        return {n: env[n] for n in self.frontier}

    def run(self, prepared: Dict[fx.Node, object], copies: Tensor) -> object:
        # a fresh copy of each value from below: an in-place operation above must not reach the next chunk
        env = {n: v.clone() if isinstance(v, Tensor) and n.op != "get_attr" else v for n, v in prepared.items()}
        env[self.layer] = copies
        out: object = None
        for n in self.above:
            out = env[n] = _evaluate(self.model, n, env, self.consts)
            for done in self.free.get(n, ()):
                del env[done]
        return out


def _split(model: nn.Module, graph: fx.Graph, name: str, consts: Dict[str, object]) -> Optional[Above]:
    """The graph split at the one call of module ``name`` (None: no single call, not one input, an
    output that does not depend on it, or an in-place change below that the split could reorder or skip)."""
    nodes = list(graph.nodes)
    at = [n for n in nodes if n.op == "call_module" and n.target == name]
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(at) != 1 or len(inputs) != 1:
        return None
    down = {at[0]}
    for n in nodes:
        if any(a in down for a in n.all_input_nodes):
            down.add(n)
    if nodes[-1].op != "output" or nodes[-1] not in down:
        return None
    above = [n for n in nodes if n in down and n is not at[0]]
    frontier = list(dict.fromkeys(a for n in above for a in n.all_input_nodes if a not in down))
    needed = set(frontier)
    for n in reversed(nodes):
        if n in needed:
            needed.update(n.all_input_nodes)
    last = {a: n for n in above for a in n.all_input_nodes}  # each value's last reader
    free: Dict[fx.Node, List[fx.Node]] = {}
    for a, n in last.items():
        free.setdefault(n, []).append(a)
    if _mutation_reaches_above(model, nodes, down, needed, frontier):
        return None
    below = [n for n in nodes if n in needed and n.op != "placeholder"]
    return Above(model, at[0], inputs[0], below, frontier, above, free, consts)


#: Traced graphs per model and layer: (what they depend on, the graph or None if untraceable, constants).
_GRAPHS: weakref.WeakKeyDictionary[nn.Module, Dict[str, Tuple[tuple, Optional[fx.Graph], Dict[str, object]]]] = \
    weakref.WeakKeyDictionary()
_PLAIN = (bool, int, float, str, type(None))


def _holders_key(holders: Sequence[Tuple[str, nn.Module]]) -> tuple:
    """What a traced graph depends on: per module traced through, its identity, class, own ``forward``,
    children's names and plain attributes (the flags a forward may branch on)."""
    return tuple((q, id(m), type(m), vars(m).get("forward"), tuple(m._modules),
                  tuple(sorted((k, v) for k, v in vars(m).items() if isinstance(v, _PLAIN))))
                 for q, m in holders)


def _traced(model: nn.Module, name: str, key: tuple) -> Tuple[Optional[fx.Graph], Dict[str, object]]:
    """The model's graph traced through the modules that hold the layer ``name`` (None: untraceable),
    and the constants the tracer made; traced again only when ``key`` (:func:`_holders_key`) changed
    (tracing patches ``nn.Module`` for its duration, which also slows the next forward)."""
    known = _GRAPHS.setdefault(model, {}).get(name)
    if known is not None and known[0] == key:
        return known[1], known[2]
    before, graph = set(vars(model)), None
    try:
        graph = _LayerTracer(name).trace(model)
    except Exception:  # untraceable: the layers below run per chunk (AblationCAM's hook)
        pass
    finally:  # constants the tracer stored on the model: off it again
        consts = {k: vars(model).pop(k) for k in set(vars(model)) - before}
    _GRAPHS[model][name] = (key, graph, consts)
    return graph, consts


def trace_above(model: nn.Module, name: str, own_hooks: Sequence[Tuple[int, int]] = ()) -> Optional[Above]:
    """:class:`Above` for the layer ``name``; None when the model cannot be traced (``torch.fx``) through
    the modules that hold the layer, or those carry hooks other than ``own_hooks`` (a graph has no hooks;
    the modules it calls keep theirs). The graph is kept for the next call while those modules keep
    their identity, class, ``forward``, children and plain attributes."""
    holders = [(q, m) for q, m in model.named_modules() if _holds(q, name)]
    own = set(own_hooks)
    if any(h not in own for h in _hook_ids(model, [m for _, m in holders])) or _global_hooks():
        return None
    graph, consts = _traced(model, name, _holders_key(holders))
    return None if graph is None else _split(model, graph, name, consts)


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

    def _own_hooks(self) -> List[Tuple[int, int]]:
        """(module id, hook id) of the call's own recording hooks."""
        return [(id(m), h.id) for (_, m), h in zip(self.layers, self._recorder._handles)]

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
    canvas_crop = False  # its masks are the layer's outputs upsampled over the whole input
    default_batch_size = 16  # whole-model forwards: 16 fit the CPU's caches better than 64

    def _samples(self, masks: Tensor, b: int, channels: range) -> Iterator[Tensor]:
        """The mask(s) ``(n, H, W)`` the input is multiplied by; S is the mean of their values.
        ``masks`` are image ``b``'s channels ``channels`` (positions in the maps scored)."""
        yield masks

    def _forward_fn(self) -> Callable[[Tensor], object]:
        model: nn.Module = self.model
        fast = False
        if self.options.fold_batchnorm:
            copy = folded_copy(self.model, self._own_hooks())
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

    @staticmethod
    def _prepare(state: Dict[str, object], x1: Tensor) -> Optional[Dict[fx.Node, object]]:
        """What the layers above read from below for the one image ``x1`` (None: no :class:`Above`)."""
        above = state.get("above")
        if not isinstance(above, Above):
            return None
        try:
            return above.prepare(x1)
        except Exception:  # the graph does not run: the hook path decides
            state["above"] = None
            return None

    def _run_ablated(self, module: nn.Module, x1: Tensor, copies: Tensor, state: Dict[str, object],
                     prepared: Optional[Dict[fx.Node, object]] = None) -> Tensor:
        """The selected output of the model with the module's output replaced by ``copies`` (n, C, h, w):
        only the layers above on them (``prepared``: :meth:`Above.prepare`'s values from below), else a
        forward whose module output a hook replaces."""
        n = copies.shape[0]
        above = state.get("above")
        if prepared is not None and isinstance(above, Above):
            try:
                return self._scores(above.run(prepared, copies), n)
            except Exception:  # e.g. a tensor from below that does not broadcast: the hook path decides
                state["above"] = None
        with self._replaced(module, copies):
            if state["reuse"]:
                try:
                    return self._scores(self.model(x1), n)
                except (RuntimeError, InputError):
                    state["reuse"] = False  # the model does not broadcast: whole model on the copies
            return self._scores(self.model(x1.expand(n, *x1.shape[1:]).contiguous()), n)

    def _ablated_values(self, module: nn.Module, x: Tensor, A: Tensor, y: Tensor, values: Values,
                        state: Dict[str, object]) -> Tensor:
        """S (B, K, C): the targets' values with each channel of A (the module's output) set to 0."""
        B, C = A.shape[:2]
        S = y[:, :, None].expand(B, y.shape[1], C).clone()  # an all-zero channel changes nothing
        alive = A.flatten(2).ne(0).any(dim=2).cpu()
        for b in range(B):
            prepared, buffer = self._prepare(state, x[b:b + 1]), None
            for chunk in alive[b].nonzero().flatten().split(self.batch_size):
                if buffer is None:  # the first chunk is the largest: its memory serves the image's others
                    copies = buffer = A[b].expand(len(chunk), *A.shape[1:]).clone()
                else:
                    copies = buffer[:len(chunk)].copy_(A[b].expand(len(chunk), *A.shape[1:]))
                copies[torch.arange(len(chunk)), chunk.to(A.device)] = 0
                S[b, :, chunk.to(A.device)] = values(self._run_ablated(module, x[b:b + 1], copies, state, prepared),
                                                     b).T
        return S

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        x = ctx.x.contiguous()
        fn = perturbed_values(ctx.target, ctx.scores)
        y = ctx.values.detach()
        state: Dict[str, object] = {"reuse": self.options.reuse_below}
        out: Dict[str, Tensor] = {}
        with self._recorder.paused():
            for name, module in self.layers:
                state["above"] = trace_above(self.model, name, self._own_hooks()) if state["reuse"] else None
                A = self._as_4d(name, ctx.acts[name])  # a volume's folded; the copies keep the layer's shape
                S = self._ablated_values(module, x, ctx.acts[name], y, fn, state)
                with float32_math(A.device.type):
                    out[name] = ablationcam_formula(work_dtype(A), work_dtype(y), work_dtype(S),
                                                    self.options.eigen_smooth)
        return out
