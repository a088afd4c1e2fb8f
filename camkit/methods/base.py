"""The machinery every method shares: one forward with hooks, the targets,
the checks, the result, and the batched backward of gradient methods.

Notation: ``A`` is a layer's output ``(B, C, h, w)``; ``G`` the gradients of the
targets with respect to it, ``(B, K, C, h, w)`` for K targets per image;
every formula returns raw maps ``(B, K, h, w)``. Formulas run in float32 (or
float64 for a float64 model) whatever the model's dtype or autocast
(:mod:`camkit.methods.precision`).

A method class sets ``Options`` (its :mod:`~camkit.methods.options` dataclass),
``needs_grad`` and implements ``_layer_maps(ctx)``; it registers itself with
:func:`camkit.methods.registry.register_method`.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import Tensor, nn

from ..display import method_repr
from ..errors import InputError
from ..fusion import check_fusion, fuse_max, fuse_mean, fuse_weighted
from ..hooks import ActivationRecorder, LayerSpec, eval_mode, resolve_layers
from ..normalize import Normalizer, get_normalizer, normalize_volume
from ..targets import Target, TargetSpec, as_target, check_values
from .augment import aug_smooth
from .canvas import CanvasRegion
from .checks import as_4d, check_input, check_model, raise_problems
from .options import DEFAULT, GradientOptions, Options, changed, make_options, with_weights
from .output import select_output
from .precision import float32_math, work_dtype
from .registry import MethodInfo
from .result import CAMResult
from .volume import check_channels_first, check_input_dims, first_conv, fold, no_volumes, unfold, upsample

Layers = Union[None, LayerSpec, Sequence[LayerSpec]]


@dataclass
class CallContext:
    """What one call's ``_layer_maps`` works from.

    Attributes:
        x: the input ``(B, C, H, W)`` as it was passed to the model (channels-last with
            ``channels_last=True``; a leaf that requires grad for ``grad_from_input`` methods).
        acts: each hooked layer's output, by name.
        scores: the selected model output, e.g. ``(B, C)`` logits.
        values: the targets' values ``(B, K)``, with autograd history for gradient methods.
        target: the call's :class:`camkit.targets.Target`.
        problems: on-device checks ``(name, 0-d bool)``, raised after the call in one host read.
    """

    x: Tensor
    acts: Dict[str, Tensor]
    scores: Tensor
    values: Tensor
    target: Target
    problems: List[Tuple[str, Optional[Tensor]]] = field(default_factory=list)

    def flag(self, name: str, bad: Optional[Tensor]) -> None:
        """Record an on-device check (``name`` a key of ``camkit.methods.checks.PROBLEMS``)."""
        self.problems.append((name, bad))


class _Method:
    """Hooks on ``layers``, one forward per call, maps per target.

    ``camkit.X(model, layers, **options)``: ``layers`` are dotted names from
    ``model.named_modules()`` or modules (one or a list); ``options`` are the
    fields of the class's ``Options`` (e.g. :class:`camkit.methods.options.Options`).
    The hooks live for one call, or for a ``with`` block.
    """

    Options: ClassVar[Type[Options]] = Options
    info: ClassVar[Optional[MethodInfo]] = None  # set by register_method
    needs_grad: ClassVar[bool] = False
    grad_from_input: ClassVar[bool] = False  # record the graph from the input (a leaf that requires grad)
    # What the class's _layer_maps supports: videos / 3-D volumes (B, C, T, H, W) (see
    # camkit.methods.volume), and maps that keep their graph (the create_graph option). A subclass
    # that writes its own _layer_maps supports neither unless it says so in its own body.
    volumes: ClassVar[bool] = False
    differentiable: ClassVar[bool] = False
    # Whether the layer maps may be cut to a padding detector's image part after they are made
    # (camkit.methods.canvas); False where the method resamples layer outputs to the input on its own
    # (Score-CAM's masks, FullGrad's bias terms): those refuse a padded input.
    canvas_crop: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_layer_maps" in cls.__dict__:
            for flag in ("volumes", "differentiable"):
                if flag not in cls.__dict__:
                    setattr(cls, flag, False)

    def __init__(self, model: nn.Module, layers: Layers = None, **options: Any) -> None:
        self.model = check_model(model)
        self.options = make_options(type(self).Options, type(self).__name__, options)
        if self.options.create_graph and not self.differentiable:
            raise InputError(f"{type(self).__name__} has no differentiable path from the model's parameters to its "
                             "maps (perturbed forwards, noise or a trained head's scores): create_graph=True applies "
                             "to CAM, Eigen-CAM and the gradient methods (Grad-CAM, Grad-CAM++, LayerCAM, HiResCAM, "
                             "XGrad-CAM, Grad-CAM element-wise, Eigen-Grad-CAM)")
        self._conv = first_conv(model)
        if self._conv is not None and self._conv[1] == 3 and not self.volumes:
            raise no_volumes(type(self).__name__)  # a 3-D model (its first convolution is a Conv3d)
        self._setup()
        self.layers = resolve_layers(model, self._default_layers(layers))
        self._module_of = dict(self.layers)
        self._check_fusion_options()
        self.normalize: Optional[Normalizer] = self._normalizer(self.options.normalize)
        self._recorder = ActivationRecorder(model, self._hooked(), make_differentiable=self.needs_grad,
                                            grad_from_first_layer=self.needs_grad)
        self._weight_bytes: Optional[int] = None  # for the backward rule, counted on the first call that needs it

    # ---------------------------------------------------------------- construction hooks

    def _setup(self) -> None:
        """Checks and state a subclass needs before its layers are resolved."""

    def _default_layers(self, layers: Layers) -> Union[LayerSpec, Sequence[LayerSpec]]:
        """The layers to resolve when the caller gives ``layers`` (None: none given)."""
        return layers  # type: ignore[return-value]

    def _hooked(self) -> List[Tuple[str, nn.Module]]:
        """The modules whose outputs are recorded (the layers, unless a method reads others)."""
        return self.layers

    def _check_fusion_options(self) -> None:
        o = self.options
        if self.info is not None and not self.info.fuses and (o.fusion != "max" or o.weights is not None):
            raise InputError(f"{type(self).__name__} does not fuse layers: fusion= and weights= do not apply")
        self.options = with_weights(o, check_fusion(o.fusion, o.weights, len(self.layers)))

    def _as_4d(self, name: str, a: Tensor) -> Tensor:
        """A hooked output as ``(B, C, h, w)`` (``reshape`` applied; channels-last refused); a 3-D
        layer's ``(B, C, t, h, w)`` folded to ``(B, C, t * h, w)`` (:func:`camkit.methods.volume.fold`)."""
        if self.options.reshape is not None:
            a = self.options.reshape(a)
            return fold(a) if a.dim() == 5 else as_4d(name, a, None)
        if a.dim() == 5:
            return fold(check_channels_first(name, a, self._module_of.get(name)))
        return as_4d(name, a, None, self._module_of.get(name))

    def _spatial(self, name: str, a: Tensor) -> Tuple[int, ...]:
        """The spatial shape ``(h, w)`` or ``(t, h, w)`` of layer ``name``'s output ``a`` (after ``reshape``)."""
        return tuple((a if self.options.reshape is None else self.options.reshape(a)).shape[2:])

    def _unfolded(self, ctx: CallContext, layer_maps: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Each layer's folded maps ``(B, K, t * h, w)`` back to ``(B, K, t, h, w)`` for a volume input;
        a layer whose output does not match the input's dimensions is refused."""
        vol, out = ctx.x.dim() == 5, {}
        for name, m in layer_maps.items():
            spatial = self._spatial(name, ctx.acts[name]) if name in ctx.acts else None
            if spatial is not None and (len(spatial) == 3) != vol:
                want = "(B, C, t, h, w)" if vol else "(B, C, h, w)"
                raise InputError(f"layer {name!r} outputs shape {tuple(ctx.acts[name].shape)} for an input of shape "
                                 f"{tuple(ctx.x.shape)}: choose a layer whose output is {want}")
            out[name] = unfold(m, spatial) if vol and spatial is not None and m.dim() == 4 else m  # or as made
        return out

    def _normalizer(self, spec: Union[str, Normalizer, None]) -> Optional[Normalizer]:
        if spec == DEFAULT:
            spec = self.info.normalize if self.info is not None else "minmax"
        return None if spec is None else get_normalizer(spec)

    # ---------------------------------------------------------------- hooks' lifetime

    @property
    def layer_names(self) -> List[str]:
        return [n for n, _ in self.layers]

    def __enter__(self) -> _Method:
        self._recorder.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove the hooks (also done on leaving the ``with`` block)."""
        self._recorder.detach()

    def __del__(self) -> None:
        try:
            self.remove()
        except Exception:
            pass

    def __repr__(self) -> str:
        return method_repr(type(self).__name__, self.layer_names, changed(self.options))  # camkit.display

    # ---------------------------------------------------------------- the call

    def __call__(self, x: Tensor, targets: TargetSpec = None, topk: Optional[int] = None) -> CAMResult:
        """Maps of ``x`` for ``targets``.

        Args:
            x: ``(B, C, H, W)`` floating-point batch, normalized as the model expects; for a 3-D model
                (``nn.Conv3d``) videos or volumes ``(B, C, T, H, W)`` (see :mod:`camkit.methods.volume`).
            targets: None (each image's top-1), an int, ``(B,)`` or ``(B, K)`` class indices,
                ``"all"``, or a callable ``fn(scores) -> (B,) or (B, K)`` (see :mod:`camkit.targets`).
            topk: the k best predictions of each image (instead of ``targets``).

        Returns:
            A :class:`CAMResult`: ``maps (B, K, H, W)``, ``layer_maps {name: (B, K, h, w)}`` (for volumes
            ``(B, K, T, H, W)`` and ``(B, K, t, h, w)``), per target ``targets``/``scores``/``valid (B, K)``,
            and ``logits`` (the selected output).

        The model runs in eval mode during the call, under a per-model lock; every
        module's flag is restored after. With the ``create_graph=True`` option the maps keep
        their autograd graph back to the model's parameters (for a loss on them); the call
        itself writes no ``.grad``.
        """
        if getattr(self.options, "aug_smooth", False):
            res = aug_smooth(self._explain, x, targets, topk)
        else:
            res = self._explain(x, targets, topk)
        res.inputs = x.detach()  # drawn by res.show() and in Jupyter (camkit.display)
        return res

    def _check_call(self, modules: Sequence[nn.Module]) -> None:
        """Refusals that depend on the moment of the call, not on its arguments (``modules``: the model's)."""

    def _batched(self, tensors: Sequence[Tensor]) -> bool:
        """The ``batched_backward`` option, or by :func:`prefer_batched` where it is None (the default)."""
        chosen = getattr(self.options, "batched_backward", None)
        if chosen is not None:
            return bool(chosen)
        if self._weight_bytes is None:  # the model's parameter bytes, counted once (a traversal costs)
            self._weight_bytes = weight_bytes(self.model)
        return prefer_batched(self._weight_bytes, tensors)

    def _run_model(self, x: Tensor) -> object:
        try:
            return self.model(x)
        except InputError:
            raise  # camkit's own (a hook's), already one clear message
        except (RuntimeError, ValueError) as e:  # ValueError: e.g. transformers' "Input image size ... doesn't match"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(f"the model failed on the input of shape {tuple(x.shape)} ({x.dtype}): {first}") from e

    def _explain(self, x: Tensor, targets: TargetSpec, topk: Optional[int]) -> CAMResult:
        x = check_input(x, self.model)
        check_input_dims(x, self._conv, type(self).__name__, self.volumes)
        target = as_target(targets, topk)
        modules = list(self.model.modules())  # one traversal for the checks and eval_mode
        self._check_call(modules)
        if self.options.create_graph and torch.is_inference_mode_enabled():
            raise InputError("create_graph=True cannot keep a graph inside torch.inference_mode(); call outside it")
        # The forward starts without grad; for gradient methods the first hooked
        # layer turns grad mode on (ActivationRecorder), so no graph is kept for
        # the layers below it. no_grad's exit restores the caller's mode.
        # create_graph: the whole call records the graph, from the input on.
        grad = torch.enable_grad() if self.options.create_graph else torch.no_grad()
        with eval_mode(self.model, modules), self._recorder.recording() as acts, grad, CanvasRegion(self.model) as canvas:
            ctx = self._forward(x, acts, target)
            if canvas.fraction is not None and not self.canvas_crop:
                raise InputError(f"{type(self).__name__} resamples the layers' outputs over the detector's padded "
                                 f"canvas: pass the input at the detector's working size "
                                 f"(camkit.adapters.detection.fit_input(model, x)), got {tuple(x.shape[2:])}")
            layer_maps = canvas.crop(self._unfolded(ctx, self._layer_maps(ctx)))  # a detector's padding cut off
        raise_problems(x, ctx.scores, ctx.values, ctx.problems)
        return self._result(ctx, layer_maps, tuple(x.shape[2:]))

    def _forward(self, x: Tensor, acts: Dict[str, Tensor], target: Target) -> CallContext:
        """Run the model once (hooks recording) and evaluate the targets."""
        b = x.shape[0]
        layout = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        xin = x.contiguous(memory_format=layout) if self.options.channels_last else x
        if self.grad_from_input:
            xin = xin.detach().requires_grad_(True)
        with torch.enable_grad() if self.grad_from_input else nullcontext():
            raw = self._run_model(xin)
        torch.set_grad_enabled(self.options.create_graph)
        with torch.enable_grad() if self.needs_grad else nullcontext():  # an output= function may compute
            scores = select_output(raw, self.options.output)
        if scores.dim() == 0 or scores.shape[0] != b:
            raise InputError(f"the model's output has shape {tuple(scores.shape)} for {b} input images: "
                             "its first dimension must be the batch (does the model reduce over the batch?)")
        self._recorder.check_complete()
        with torch.enable_grad() if self.needs_grad else nullcontext():
            values = check_values(target(scores), b)
        ctx = CallContext(xin, acts, scores, values, target)
        ctx.flag("index", target.index_problem(scores))
        return ctx

    def _result(self, ctx: CallContext, layer_maps: Dict[str, Tensor], size: Tuple[int, ...]) -> CAMResult:
        scores, values, target = ctx.scores, ctx.values, ctx.target
        classes = target.classes(scores)
        if classes is None:
            classes = torch.full(values.shape, -1, dtype=torch.long, device=values.device)
        valid = target.valid(scores)
        keep = self.options.create_graph
        layer_maps = {n: (m if keep else m.detach()).contiguous() for n, m in layer_maps.items()}
        if valid is not None:
            layer_maps = {n: m * _per_map(valid, m) for n, m in layer_maps.items()}
        combine, normalize, o = self._combine, self.normalize, self.options
        return CAMResult(
            targets=classes, logits=scores.detach(), layer_maps=layer_maps, scores=values.detach(),
            valid=valid if valid is not None else torch.ones(values.shape, dtype=torch.bool, device=values.device),
            make_maps=lambda at: combine(layer_maps, at, normalize, o.fusion, o.weights, valid), size=size,
        )

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        """Raw maps ``(B, K, h, w)`` per layer, from the call's context."""
        raise NotImplementedError

    @staticmethod
    def _combine(
        layer_maps: Dict[str, Tensor],
        size: Tuple[int, ...],
        normalize: Optional[Normalizer],
        fusion: str,
        weights: Optional[Sequence[float]],
        valid: Optional[Tensor] = None,
    ) -> Tensor:
        """Normalize each layer's (B, K, h, w) maps (a volume's (B, K, t, h, w) per volume), upsample them
        (one interpolate call per layer for all K maps; trilinear for volumes), fuse (:mod:`camkit.fusion`).
        Without a normalizer the raw maps are upsampled
        and fused as they are: ``max`` takes the element-wise maximum, ``weighted`` the plain weighted
        sum (no tanh), ``mean`` the mean. ``tanh_max`` (torchcam's) fuses at the largest layer's size,
        then upsamples the fused map."""
        first = next(iter(layer_maps.values()))
        with float32_math(first.device.type):
            maps = [m if normalize is None else _normalized(m, normalize) for m in layer_maps.values()]
            if fusion == "tanh_max":  # torchcam's: tanh(2 M) per layer, the max at the largest layer's size
                at = max((tuple(m.shape[2:]) for m in maps), key=lambda s: torch.Size(s).numel())
                out = _upsample(fuse_max([_upsample(torch.tanh(2.0 * m), at) for m in maps]), tuple(size))
            else:
                ups = [_upsample(m, tuple(size)) for m in maps]
                if len(ups) == 1 and fusion in ("max", "mean"):
                    out = ups[0]
                elif fusion == "weighted":
                    out = fuse_weighted(ups, weights, scale=None if normalize is None else 2.0)  # type: ignore[arg-type]
                elif fusion == "mean":
                    out = fuse_mean(ups) if normalize is not None else torch.stack(ups).mean(0)
                else:
                    out = fuse_max(ups)
            if valid is not None:
                out = out * _per_map(valid, out)
        return out


def _upsample(m: Tensor, size: Tuple[int, ...]) -> Tensor:
    """``(B, K, h, w)`` -> ``(B, K, *size)``, bilinear (trilinear for ``(B, K, t, h, w)``;
    ``align_corners=False``); as is at that size."""
    return upsample(m, size)


def _normalized(m: Tensor, normalize: Normalizer) -> Tensor:
    """``normalize`` per map: each ``(h, w)`` map, or each ``(t, h, w)`` volume as one map."""
    return normalize(m) if m.dim() < 5 else normalize_volume(m, normalize)


def _per_map(valid: Tensor, m: Tensor) -> Tensor:
    """``valid (B, K)`` shaped to broadcast over maps ``(B, K, *spatial)``."""
    return valid.reshape(*valid.shape, *([1] * (m.dim() - valid.dim())))


# On a CPU the vmapped backward runs each convolution's backward once per target and concatenates the
# results: it saves work where the graph reads large weights (one read for K targets instead of K, VGG16's
# classifier) and costs some where it moves large activations (ResNet50 at B=8, 224 px). The ratio of the
# two is the rule; the measurements behind it: benchmarks/results/peers/README.md, "The backward rule".
# The threshold lies between VGG16 LayerCAM at B=8, 224 px (ratio 21.5: K calls 1.09x faster) and ResNet50
# LayerCAM at B=4, 160 px (ratio 31: batched 1.06x faster).
CPU_BATCHED_MIN_RATIO = 26


def weight_bytes(model: nn.Module) -> int:
    """The bytes of ``model``'s parameters."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def prefer_batched(weights: int, activations: Sequence[Tensor]) -> bool:
    """Whether one vmapped backward (``is_grads_batched``) beats K retained-graph calls, by rule (no timing).

    Args:
        weights: the model's parameter bytes (:func:`weight_bytes`).
        activations: the tensors the gradients are taken with respect to.

    Returns:
        True on CUDA and other accelerators; on a CPU, True when the parameters take at least
        :data:`CPU_BATCHED_MIN_RATIO` times the bytes of the largest activation (the whole batch).
    """
    if not activations or activations[0].device.type != "cpu":
        return True
    largest = max(a.numel() * a.element_size() for a in activations)
    return weights >= CPU_BATCHED_MIN_RATIO * largest


def target_gradients(values: Tensor, activations: Sequence[Tensor], batched: bool = True,
                     create_graph: bool = False,
                     gathered: Optional[Tuple[Tensor, Tensor]] = None) -> List[Optional[Tensor]]:
    """d values[:, k] / d A for every activation.

    Args:
        values: ``(B, K)``, each column one target (its image's entries depend only on that image).
        activations: tensors the values depend on through autograd.
        batched: True: one backward for all K targets (``is_grads_batched``: the K
            vector-Jacobian products run as one vmapped call). False: K calls on the
            retained graph. Only the graph between the activations and the values is
            traversed either way, and the results are equal.
        create_graph: keep the backward's own graph, so the gradients (and maps made of them)
            can be differentiated again (e.g. with respect to the model's parameters).
        gathered: ``(scores (B, C), indices (B, K))`` where ``values == scores.gather(1, indices)``: the
            batched backward then starts at the scores with K one-hot seeds (the same gradients, without
            the gather's backward, which costs more vmapped over K than the seeds).

    Returns:
        One ``(B, K, *A.shape[1:])`` gradient per activation (None where it is unused).
    """
    b, k = values.shape
    if k == 1:
        grads = torch.autograd.grad(values, activations, grad_outputs=torch.ones_like(values), allow_unused=True,
                                    create_graph=create_graph)
        return [g.unsqueeze(1) if g is not None else None for g in grads]
    if not batched:
        per_k = list(gradient_columns(values, activations, create_graph))
        return [
            None if per_k[0][i] is None else torch.cat([g[i] for g in per_k], dim=1)
            for i in range(len(activations))
        ]
    outputs, seeds = _batched_seeds(values, gathered)
    grads = torch.autograd.grad(outputs, activations, grad_outputs=seeds, is_grads_batched=True, allow_unused=True,
                                create_graph=create_graph)
    return [g.transpose(0, 1) if g is not None else None for g in grads]


def _batched_seeds(values: Tensor, gathered: Optional[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
    """The batched backward's start: ``(outputs, seeds (K, *outputs.shape))``, the values with the K unit
    columns, or for ``gathered = (scores, indices)`` the scores with each target's one-hot."""
    b, k = values.shape
    if gathered is None:
        eye = torch.eye(k, dtype=values.dtype, device=values.device)
        return values, eye[:, None, :].expand(k, b, k).contiguous()
    scores, idx = gathered
    onehots = torch.zeros(k, *scores.shape, dtype=scores.dtype, device=scores.device)
    return scores, onehots.scatter_(2, idx.t().unsqueeze(-1).to(scores.device), 1.0)


def gradient_columns(values: Tensor, activations: Sequence[Tensor],
                     create_graph: bool = False) -> Iterator[List[Optional[Tensor]]]:
    """d values[:, k] / d A for one target k at a time: K backward calls on the retained graph.

    Args:
        values: ``(B, K)`` target values.
        activations: tensors the values depend on through autograd.
        create_graph: keep each backward's own graph.

    Yields:
        For k = 0 .. K-1, one ``(B, 1, *A.shape[1:])`` gradient per activation (None where unused);
        the graph is freed after the last.
    """
    b, k = values.shape
    eye = torch.eye(k, dtype=values.dtype, device=values.device)
    for j in range(k):
        grads = torch.autograd.grad(values, activations, grad_outputs=eye[j].expand(b, k), allow_unused=True,
                                    retain_graph=create_graph or j < k - 1, create_graph=create_graph)
        yield [g.unsqueeze(1) if g is not None else None for g in grads]


def all_zero(tensors: Sequence[Tensor]) -> Tensor:
    """A 0-d bool on the device: every element of every tensor is exactly 0 (no host sync). A sum of
    magnitudes is 0 only then (NaN counts as nonzero), and on a CPU several times cheaper than ``any()``."""
    sums = [t.detach().abs().sum(dtype=torch.float32 if t.element_size() < 4 else None) for t in tensors]
    return torch.stack([s.to(sums[0].dtype) for s in sums]).sum() == 0


NO_PATH = ("the targets do not depend on layer(s) {names} through autograd: is a layer off the path to the "
           "output, or does the model use gradient checkpointing (torch.utils.checkpoint, timm's "
           "set_grad_checkpointing)? Turn checkpointing off for the call")


def _require_path(values: Tensor, names: Sequence[str], grads: Optional[Sequence[Optional[Tensor]]] = None) -> None:
    """An :class:`InputError` naming the layers the values do not depend on: all of them when ``values``
    has no graph, else the first whose gradient in ``grads`` is None."""
    if not values.requires_grad:
        raise InputError(NO_PATH.format(names=list(names)))
    for name, g in zip(names, grads or ()):
        if g is None:
            raise InputError(NO_PATH.format(names=[name]))


def _gathered(ctx: CallContext) -> Optional[Tuple[Tensor, Tensor]]:
    """``(scores, indices)`` where the call's values ``(B, K > 1)`` are, by their own autograd graph,
    ``scores.gather(1, indices)`` (class logits: indices, topk); else None (e.g. a softmax, a contrast)."""
    v, s = ctx.values, ctx.scores
    node = v.grad_fn
    if v.shape[1] < 2 or s.dim() != 2 or node is None or s.grad_fn is None or node.name() != "GatherBackward0":
        return None
    if getattr(node, "_saved_dim", None) not in (1, -1) or node.next_functions[0][0] is not s.grad_fn:
        return None
    idx = getattr(node, "_saved_index", None)
    return (s, idx) if isinstance(idx, Tensor) and idx.shape == v.shape else None


class _GradientMethod(_Method):
    """Methods that need dy/dA: the class's ``formula(A, G, eigen)`` per layer."""

    Options = GradientOptions
    needs_grad = True
    volumes = True
    differentiable = True
    formula: Callable[..., Tensor]

    def _check_call(self, modules: Sequence[nn.Module]) -> None:
        if torch.is_inference_mode_enabled():
            raise InputError("gradient-based CAM methods cannot run inside torch.inference_mode(); "
                             "use torch.no_grad() (or nothing)")
        for m in modules:
            if vars(m).get("grad_checkpointing", False) is True:  # vars: getattr on a module raises when absent
                raise InputError("gradient checkpointing is on (timm's set_grad_checkpointing(True)): the hooked "
                                 "activations then get no gradient. Turn it off for the call: "
                                 "model.set_grad_checkpointing(False)")

    def _gradients(self, values: Tensor, tensors: Sequence[Tensor], names: Sequence[str],
                   gathered: Optional[Tuple[Tensor, Tensor]] = None) -> List[Tensor]:
        """The gradients of ``values (B, K)`` with respect to ``tensors`` (named ``names`` in errors);
        ``gathered``: as :func:`target_gradients` takes it."""
        _require_path(values, names)
        grads = target_gradients(values, tensors, self._batched(tensors), self.options.create_graph, gathered)
        _require_path(values, names, grads)
        return grads  # type: ignore[return-value]

    def _reshaped(self, g: Tensor) -> Tensor:
        """A gradient ``(B, K, ...)`` through ``reshape``, as its layer's output is (a 3-D layer's
        ``(B, K, C, t, h, w)`` folded to ``(B, K, C, t * h, w)``, as :meth:`_as_4d` folds the output)."""
        reshape = self.options.reshape
        g = g if reshape is None else reshape(g.flatten(0, 1)).unflatten(0, g.shape[:2])
        return fold(g) if g.dim() == 6 else g

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        names = self.layer_names
        tensors = [ctx.acts[n] for n in names]
        if ctx.values.shape[1] > 1 and not self.options.create_graph and not self._batched(tensors):
            return self._layer_maps_per_target(ctx, names, tensors)
        grads = self._gradients(ctx.values, tensors, names, _gathered(ctx))
        ctx.flag("zero_gradients", all_zero(grads))
        return self._maps_of(ctx, names, grads)

    def _maps_of(self, ctx: CallContext, names: Sequence[str], grads: Sequence[Tensor]) -> Dict[str, Tensor]:
        """Each layer's raw maps ``(B, K, h, w)`` from its gradients ``(B, K, ...)``."""
        out: Dict[str, Tensor] = {}
        with float32_math(ctx.values.device.type):
            for name, g in zip(names, grads):
                a = ctx.acts[name] if self.options.create_graph else ctx.acts[name].detach()
                out[name] = self._formula(work_dtype(self._as_4d(name, a)), work_dtype(self._reshaped(g)))
        return out

    def _layer_maps_per_target(self, ctx: CallContext, names: Sequence[str],
                               tensors: Sequence[Tensor]) -> Dict[str, Tensor]:
        """K retained-graph backward calls, each target's maps made from its gradients at once (every
        formula is per target), so the K gradients never exist together."""
        _require_path(ctx.values, names)
        columns, zero = [], None
        for grads in gradient_columns(ctx.values, tensors):
            _require_path(ctx.values, names, grads)
            z = all_zero(grads)  # type: ignore[arg-type]
            zero = z if zero is None else zero & z
            columns.append(self._maps_of(ctx, names, grads))  # type: ignore[arg-type]
        ctx.flag("zero_gradients", zero)
        return {n: torch.cat([c[n] for c in columns], dim=1) for n in names}

    def _formula(self, A: Tensor, G: Tensor) -> Tensor:
        """One layer's raw maps (B, K, h, w): the class's formula, with ``eigen_smooth``."""
        return type(self).formula(A, G, eigen=self.options.eigen_smooth)
