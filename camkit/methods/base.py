"""The machinery every method shares: one forward with hooks, the targets,
the checks, the result, and the batched backward of gradient methods.

Notation: ``A`` is a layer's output ``(B, C, h, w)``; ``G`` the gradients of the
targets with respect to it, ``(B, K, C, h, w)`` for K targets per image;
every formula returns raw maps ``(B, K, h, w)``. Formulas run in float32 (or
float64 for a float64 model) whatever the model's dtype or autocast, so
half-precision activations cannot overflow a channel sum.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, InputTypeError
from ..fusion import FUSIONS, check_weights, fuse_max, fuse_weighted
from ..hooks import ActivationRecorder, LayerSpec, eval_mode, resolve_layers
from ..normalize import Normalizer, get_normalizer
from ..targets import Target, TargetSpec, as_target, check_values

Reshape = Callable[[Tensor], Tensor]
Output = Union[None, str, int, Callable[[Any], Tensor]]


# --------------------------------------------------------------------------- precision


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


@contextmanager
def float32_math(device_type: str) -> Iterator[None]:
    """Autocast off: the map formulas, normalization and fusion run in the dtype of
    their (float32 or float64) inputs, never in bfloat16 / float16."""
    try:
        ctx = torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # a device type autocast does not know
        ctx = nullcontext()
    with ctx:
        yield


def work_dtype(t: Tensor) -> Tensor:
    """float16 / bfloat16 -> float32; float32 and float64 unchanged."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


# --------------------------------------------------------------------------- result


class CAMResult:
    """What every method returns.

    maps: (B, K, H, W) at the input's resolution (normalized, fused; in [0, 1]
    for the built-in normalizers; raw with ``normalize=None``), float32
    (float64 for a float64 model). targets: (B, K) long, the class of each
    map (-1 where a target is not one class, e.g. a padded MultiLabel column
    or a custom function). scores: (B, K) the target values the maps explain.
    valid: (B, K) bool, False for padding (those maps are all zeros).
    logits: what ``output=`` selected from the model's output, e.g. (B, C).
    layer_maps: raw per-layer maps (B, K, h, w) after the method's own ReLU,
    before normalization and upsampling.

    ``maps`` is computed from ``layer_maps`` on first access and kept: a call
    for many classes (``targets="all"``) costs no upsampling until the maps at
    input resolution are asked for (B * K * H * W floats: 1.6 GB for 8 images,
    1000 classes, 224 x 224).
    """

    def __init__(
        self,
        maps: Optional[Tensor] = None,
        targets: Optional[Tensor] = None,
        logits: Optional[Tensor] = None,
        layer_maps: Optional[Dict[str, Tensor]] = None,
        *,
        scores: Optional[Tensor] = None,
        valid: Optional[Tensor] = None,
        make_maps: Optional[Callable[[Tuple[int, int]], Tensor]] = None,
        size: Optional[Tuple[int, int]] = None,
    ) -> None:
        if maps is None and (make_maps is None or size is None):
            raise InputError("CAMResult needs maps, or make_maps and the input size")
        self._maps, self._make_maps, self._size = maps, make_maps, size
        self.targets = targets
        self.logits = logits
        self.scores = scores
        self.valid = valid
        self.layer_maps = layer_maps if layer_maps is not None else {}

    @property
    def maps(self) -> Tensor:
        """(B, K, H, W) at the input's resolution (computed on first access)."""
        if self._maps is None:
            self._maps = self._make_maps(self._size)  # type: ignore[misc]
        return self._maps

    def maps_at(self, size: Tuple[int, int]) -> Tensor:
        """(B, K, h, w): the layer maps normalized, upsampled to ``size`` and fused, as
        ``maps`` is at the input's size (e.g. at the finest layer's resolution)."""
        if self._make_maps is None:
            raise InputError("this result holds finished maps only (e.g. aug_smooth's average); use .maps")
        return self._make_maps((int(size[0]), int(size[1])))

    def __repr__(self) -> str:
        shapes = {n: tuple(m.shape) for n, m in self.layer_maps.items()}
        return (f"CAMResult(targets={tuple(self.targets.shape)}, logits={tuple(self.logits.shape)}, "
                f"layer_maps={shapes}, maps={'computed' if self._maps is not None else 'on first access'})")

    @property
    def probs(self) -> Tensor:
        """Softmax of (B, C) logits over the classes."""
        if self.logits is None or self.logits.dim() != 2:
            shape = None if self.logits is None else tuple(self.logits.shape)
            raise InputError(f"probs needs logits of shape (B, C), got {shape}")
        return self.logits.softmax(dim=-1)


# --------------------------------------------------------------------------- the model's output


def describe_output(raw: object) -> str:
    """A one-line description of a model output, naming its keys / items / tensor attributes."""
    if isinstance(raw, Tensor):
        return f"a tensor of shape {tuple(raw.shape)}"
    if isinstance(raw, dict) or hasattr(raw, "keys") and hasattr(raw, "__getitem__"):
        return f"a {type(raw).__name__} with keys {list(raw.keys())}"  # type: ignore[union-attr]
    if isinstance(raw, (tuple, list)):
        items = ", ".join(f"[{i}] " + (f"tensor {tuple(v.shape)}" if isinstance(v, Tensor) else type(v).__name__)
                          for i, v in enumerate(raw))
        return f"a {type(raw).__name__} of {len(raw)} ({items})"
    attrs = [a for a in dir(raw) if not a.startswith("_") and isinstance(getattr(raw, a, None), Tensor)]
    return f"a {type(raw).__name__} with tensor attributes {attrs}"


def select_output(raw: object, output: Output) -> Tensor:
    """The scores in a model's raw output: the output itself (``output=None``), a
    dict key or attribute name (str), a tuple / list index (int), or ``output(raw)``."""
    if output is None:
        got: object = raw
    elif callable(output):
        got = output(raw)
    elif isinstance(output, str):
        if hasattr(raw, "keys") and hasattr(raw, "__getitem__") and output in raw.keys():  # type: ignore[union-attr]
            got = raw[output]  # type: ignore[index]
        elif not isinstance(raw, (dict, tuple, list, Tensor)) and hasattr(raw, output):
            got = getattr(raw, output)
        else:
            raise InputError(f"output={output!r} is neither a key nor an attribute of the model's output, "
                             f"{describe_output(raw)}")
    elif isinstance(output, int) and not isinstance(output, bool):
        if not isinstance(raw, (tuple, list)) or not -len(raw) <= output < len(raw):
            raise InputError(f"output={output} does not index the model's output, {describe_output(raw)}")
        got = raw[output]
    else:
        raise InputTypeError(f"output must be a key / attribute name, an index or a callable, got {output!r}")
    if not isinstance(got, Tensor):
        if output is None:
            raise InputError(f"the model returned {describe_output(raw)}; pass output=... to choose the scores "
                             "(a key or attribute name, a tuple index, or a function of the output)")
        raise InputError(f"output={output!r} selected {describe_output(got)}, not a tensor")
    return got


# --------------------------------------------------------------------------- validation


def _model_dtype(model: nn.Module) -> Optional[torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def _check_input(x: object, model: nn.Module) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputTypeError(f"expected an image batch tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (a single image? add a batch dimension with x[None])" if x.dim() == 3 else ""
        raise InputError(f"expected input of shape (B, C, H, W), got {tuple(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise InputError("the input batch is empty")
    if not x.is_floating_point():
        raise InputError(f"the input must be a floating-point image batch, normalized as the model expects; "
                         f"got dtype {x.dtype} (convert it, e.g. with the preset's transform)")
    dtype = _model_dtype(model)
    if dtype is not None and x.dtype != dtype and not _autocast_on(x.device.type):
        raise InputError(f"the input's dtype {x.dtype} differs from the model's {dtype}: "
                         f"convert one of them (e.g. x.to({dtype}))")
    return x


def _raise_problems(x: Tensor, scores: Tensor, problems: List[Tuple[str, Optional[Tensor]]]) -> None:
    """All checks of a call's values in ONE host read: non-finite input or scores
    per image, and the on-device flags in ``problems`` (name, 0-d bool)."""
    b = x.shape[0]
    flags = [(~torch.isfinite(x).reshape(b, -1).all(dim=1)).to(scores.device),
             ~torch.isfinite(scores.detach()).reshape(b, -1).all(dim=1)]
    named = [(name, f) for name, f in problems if f is not None]
    flags += [f.reshape(1) for _, f in named]
    host = torch.cat(flags).tolist()  # the one host-device synchronization of a call
    bad_x = [i for i in range(b) if host[i]]
    bad_s = [i for i in range(b) if host[b + i]]
    if bad_x:
        raise InputError(f"the input has NaN or Inf values in image(s) {bad_x}")
    if bad_s:
        raise InputError(f"the model's output is NaN or Inf for image(s) {bad_s} "
                         "(check the weights and the input's range)")
    for (name, _), flag in zip(named, host[2 * b:]):
        if flag:
            raise InputError(PROBLEMS[name])


PROBLEMS = {
    "index": "a target class index lies outside the model's classes",
    "head": ("the model's logits are not fc(GAP(layer)): its head is not global-average-pool + linear on this "
             "layer. Use another layer, or a camkit.CAMHead"),
}


def _as_4d(name: str, a: Tensor, reshape: Optional[Reshape]) -> Tensor:
    if reshape is not None:
        a = reshape(a)
    if a.dim() != 4:
        raise InputError(
            f"layer {name!r} outputs shape {tuple(a.shape)}; expected (B, C, h, w). For token outputs (B, N, C) "
            "pass reshape=... or use camkit.adapters"
        )
    return a


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise InputError("TorchScript modules (torch.jit.script / torch.jit.trace) do not run Python forward hooks "
                         "on their submodules; pass the original nn.Module")
    return model


# --------------------------------------------------------------------------- base


class _Method:
    """Hooks on ``layers``, one forward per call, maps per target.

    Subclasses set ``needs_grad`` and implement ``_layer_maps``.
    """

    needs_grad = False

    def __init__(
        self,
        model: nn.Module,
        layers: Union[LayerSpec, Sequence[LayerSpec]],
        fusion: str = "max",
        weights: Optional[Sequence[float]] = None,
        normalize: Union[str, Normalizer, None] = "minmax",
        reshape: Optional[Reshape] = None,
        channels_last: bool = False,
        output: Output = None,
    ) -> None:
        self.model = _check_model(model)
        self.layers = resolve_layers(model, layers)
        if fusion not in FUSIONS:
            raise InputError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        if fusion == "max" and weights is not None:
            raise InputError("fusion='max' takes no weights; use fusion='weighted' to weight layers")
        if fusion == "weighted":
            if weights is None:
                raise InputError(f"fusion='weighted' needs one weight per layer ({len(self.layers)} layers), "
                                 "e.g. weights=[0.4, 0.4, 0.2]")
            weights = check_weights(weights, len(self.layers))
        self.fusion, self.weights = fusion, weights
        self.normalize: Optional[Normalizer] = None if normalize is None else get_normalizer(normalize)
        self.reshape = reshape
        self.channels_last = bool(channels_last)
        self.output = output
        self._recorder = ActivationRecorder(
            model, self.layers, make_differentiable=self.needs_grad, grad_from_first_layer=self.needs_grad
        )

    @property
    def layer_names(self) -> List[str]:
        return [n for n, _ in self.layers]

    # context manager: hooks stay attached inside the block
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

    def _check_call(self) -> None:
        """Refusals that depend on the moment of the call, not on its arguments."""

    def _run_model(self, x: Tensor) -> object:
        try:
            return self.model(x)
        except RuntimeError as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(f"the model failed on the input of shape {tuple(x.shape)} ({x.dtype}): {first}") from e

    def __call__(self, x: Tensor, targets: TargetSpec = None, topk: Optional[int] = None) -> CAMResult:
        """Maps for ``targets``: None (top-1 of each image), an int, (B,) or (B, K)
        class indices, ``"all"``, a callable ``fn(scores) -> (B,) or (B, K)``
        (see camkit.targets), or ``topk=k`` (the k best predictions).

        The model runs in eval mode during the call (under a per-model lock);
        every module's flag is restored after. With ``channels_last=True``
        (constructor) the input is passed in channels-last memory format (the
        model itself is not touched).
        """
        x = _check_input(x, self.model)
        target = as_target(targets, topk)
        self._check_call()
        b = x.shape[0]
        xin = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        problems: List[Tuple[str, Optional[Tensor]]] = []
        # The forward starts without grad; for gradient methods the first hooked
        # layer turns grad mode on (ActivationRecorder), so no graph is kept for
        # the layers below it. no_grad's exit restores the caller's mode.
        with eval_mode(self.model), self._recorder.recording() as acts, torch.no_grad():
            raw = self._run_model(xin)
            torch.set_grad_enabled(False)
            scores = select_output(raw, self.output)
            if scores.dim() == 0 or scores.shape[0] != b:
                raise InputError(f"the model's output has shape {tuple(scores.shape)} for {b} input images: "
                                 "its first dimension must be the batch (does the model reduce over the batch?)")
            self._recorder.check_complete()
            with torch.enable_grad() if self.needs_grad else nullcontext():
                values = check_values(target(scores), b)
            problems.append(("index", target.index_problem(scores)))
            layer_maps = self._layer_maps(acts, scores, values, target, problems)
        _raise_problems(x, scores, problems)
        classes = target.classes(scores)
        if classes is None:
            classes = torch.full(values.shape, -1, dtype=torch.long, device=values.device)
        valid = target.valid(scores)
        layer_maps = {n: m.detach().contiguous() for n, m in layer_maps.items()}
        if valid is not None:
            layer_maps = {n: m * valid[..., None, None] for n, m in layer_maps.items()}
        size = tuple(x.shape[-2:])
        combine, normalize, fusion, weights = self._combine, self.normalize, self.fusion, self.weights
        return CAMResult(
            targets=classes, logits=scores.detach(), layer_maps=layer_maps, scores=values.detach(),
            valid=valid if valid is not None else torch.ones(values.shape, dtype=torch.bool, device=values.device),
            make_maps=lambda at: combine(layer_maps, at, normalize, fusion, weights, valid), size=size,
        )

    def _layer_maps(self, acts: Dict[str, Tensor], scores: Tensor, values: Tensor, target: Target,
                    problems: List[Tuple[str, Optional[Tensor]]]) -> Dict[str, Tensor]:
        """Raw maps (B, K, h, w) per layer. acts: the hooked outputs; scores: the selected
        output; values: the targets' values (B, K), with autograd history for gradient
        methods; problems: append on-device (name, 0-d bool) checks raised after the call."""
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
        """Normalize each layer's (B, K, h, w) maps, upsample them (one interpolate call per layer
        for all K maps), fuse. Without a normalizer the raw maps are upsampled and fused as they
        are: ``max`` takes the element-wise maximum, ``weighted`` the plain weighted sum (no tanh)."""
        first = next(iter(layer_maps.values()))
        with float32_math(first.device.type):
            ups = [
                F.interpolate(m if normalize is None else normalize(m), size=tuple(size), mode="bilinear",
                              align_corners=False)
                for m in layer_maps.values()
            ]
            if fusion == "weighted":
                out = fuse_weighted(ups, weights, scale=None if normalize is None else 2.0)  # type: ignore[arg-type]
            else:
                out = ups[0] if len(ups) == 1 else fuse_max(ups)
            if valid is not None:
                out = out * valid[..., None, None]
        return out


def target_gradients(values: Tensor, activations: Sequence[Tensor], batched: bool = True) -> List[Optional[Tensor]]:
    """d values[:, k] / d A for every activation: ``(B, K, *A.shape[1:])`` each.

    values: (B, K), each column one target (its image's entries depend only on
    that image). ``batched=True``: one backward for all K targets
    (``is_grads_batched``: the K vector-Jacobian products run as one vmapped
    call). ``batched=False``: K calls on the retained graph. Only the graph
    between the activations and the values is traversed either way, and the
    results are equal.
    """
    b, k = values.shape
    if k == 1:
        grads = torch.autograd.grad(values, activations, grad_outputs=torch.ones_like(values), allow_unused=True)
        return [g.unsqueeze(1) if g is not None else None for g in grads]
    eye = torch.eye(k, dtype=values.dtype, device=values.device)
    if not batched:
        per_k = [
            torch.autograd.grad(values, activations, grad_outputs=eye[j].expand(b, k), retain_graph=j < k - 1,
                                allow_unused=True)
            for j in range(k)
        ]
        return [
            None if per_k[0][i] is None else torch.stack([g[i] for g in per_k], dim=1)
            for i in range(len(activations))
        ]
    onehots = eye[:, None, :].expand(k, b, k).contiguous()
    grads = torch.autograd.grad(values, activations, grad_outputs=onehots, is_grads_batched=True, allow_unused=True)
    return [g.transpose(0, 1) if g is not None else None for g in grads]


_NO_PATH = ("the targets do not depend on layer(s) {names} through autograd: is a layer off the path to the "
            "output, or does the model use gradient checkpointing (torch.utils.checkpoint, timm's "
            "set_grad_checkpointing)? Turn checkpointing off for the call")


class _GradientMethod(_Method):
    """Methods that need dy/dA. ``batched_backward``: one vmapped backward for
    K targets (default) or K calls on the retained graph (see ``target_gradients``)."""

    needs_grad = True
    formula: Callable[[Tensor, Tensor], Tensor]

    def __init__(
        self,
        model: nn.Module,
        layers: Union[LayerSpec, Sequence[LayerSpec]],
        fusion: str = "max",
        weights: Optional[Sequence[float]] = None,
        normalize: Union[str, Normalizer, None] = "minmax",
        reshape: Optional[Reshape] = None,
        channels_last: bool = False,
        batched_backward: bool = True,
        output: Output = None,
    ) -> None:
        super().__init__(model, layers, fusion, weights, normalize, reshape, channels_last, output)
        self.batched_backward = bool(batched_backward)

    def _check_call(self) -> None:
        if torch.is_inference_mode_enabled():
            raise InputError("gradient-based CAM methods cannot run inside torch.inference_mode(); "
                             "use torch.no_grad() (or nothing)")
        for m in self.model.modules():
            if getattr(m, "grad_checkpointing", False) is True:
                raise InputError("gradient checkpointing is on (timm's set_grad_checkpointing(True)): the hooked "
                                 "activations then get no gradient. Turn it off for the call: "
                                 "model.set_grad_checkpointing(False)")

    def _layer_maps(self, acts: Dict[str, Tensor], scores: Tensor, values: Tensor, target: Target,
                    problems: List[Tuple[str, Optional[Tensor]]]) -> Dict[str, Tensor]:
        names = self.layer_names
        raw = [acts[n] for n in names]
        if not values.requires_grad:
            raise InputError(_NO_PATH.format(names=names))
        grads = target_gradients(values, raw, self.batched_backward)
        out: Dict[str, Tensor] = {}
        with float32_math(values.device.type):
            for name, a, g in zip(names, raw, grads):
                if g is None:
                    raise InputError(_NO_PATH.format(names=[name]))
                A = _as_4d(name, a.detach(), self.reshape)
                G = g if self.reshape is None else self.reshape(g.flatten(0, 1)).unflatten(0, g.shape[:2])
                out[name] = self._formula(work_dtype(A), work_dtype(G))
        return out

    def _formula(self, A: Tensor, G: Tensor) -> Tensor:
        """One layer's raw maps (B, K, h, w): the class's formula (options such as eigen_smooth override this)."""
        return type(self).formula(A, G)


