"""CAM methods: the formulas as pure functions, and the classes that apply them.

Notation: ``A`` is a layer's output ``(B, C, h, w)``; ``G`` the gradients of the
targets with respect to it, ``(B, K, C, h, w)`` for K targets per image;
every formula returns raw maps ``(B, K, h, w)``. Formulas run in float32 (or
float64 for a float64 model) whatever the model's dtype or autocast, so
half-precision activations cannot overflow a channel sum.
"""
from __future__ import annotations

import difflib
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError, InputTypeError
from .fusion import FUSIONS, check_weights, fuse_max, fuse_weighted
from .heads import CAMHead, CAMModel, ReCAMHead
from .hooks import ActivationRecorder, LayerSpec, dry_run, eval_mode, resolve_layers
from .normalize import Normalizer, get_normalizer
from .targets import Target, TargetSpec, as_target, check_values

Reshape = Callable[[Tensor], Tensor]
Output = Union[None, str, int, Callable[[Any], Tensor]]


# --------------------------------------------------------------------------- formulas


def cam_formula(A: Tensor, W: Tensor) -> Tensor:
    """CAM (Zhou et al., 2016): ``sum_k W[c, k] A_k``. W: (B, K, C) rows of the linear layer."""
    return torch.einsum("bkc,bchw->bkhw", W, A)


def gradcam_formula(A: Tensor, G: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al., 2017): ``ReLU(sum_k mean_ij(G_k) A_k)``."""
    return torch.einsum("bkc,bchw->bkhw", G.mean(dim=(-2, -1)), A).clamp_(min=0)


def gradcampp_formula(A: Tensor, G: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhyay et al., 2018), closed form for ``Y = exp(y_c)``.

    ``alpha = G^2 / (2 G^2 + sum_ab A_k(a, b) G^3)`` (0 where the denominator is
    0), ``w_k = sum_ij alpha * ReLU(G)``, map ``ReLU(sum_k w_k A_k)``. The
    paper's weights carry an extra factor ``exp(y_c)`` (the derivative of Y);
    it is one positive number per image and target, dropped here because it
    overflows for large logits and every normalizer removes it.
    """
    g2 = G.pow(2)
    g3 = g2 * G
    denom = 2 * g2 + A.sum(dim=(-2, -1))[:, None, :, None, None] * g3
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g2))
    w = (alpha * G.clamp(min=0)).sum(dim=(-2, -1))
    return torch.einsum("bkc,bchw->bkhw", w, A).clamp_(min=0)


def layercam_formula(A: Tensor, G: Tensor) -> Tensor:
    """LayerCAM (Jiang et al., 2021): ``ReLU(sum_k ReLU(G_k(i, j)) A_k(i, j))``."""
    return torch.einsum("bkchw,bchw->bkhw", G.clamp(min=0), A).clamp_(min=0)


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
        make_maps: Optional[Callable[[], Tensor]] = None,
    ) -> None:
        if maps is None and make_maps is None:
            raise InputError("CAMResult needs maps or make_maps")
        self._maps, self._make_maps = maps, make_maps
        self.targets = targets
        self.logits = logits
        self.scores = scores
        self.valid = valid
        self.layer_maps = layer_maps if layer_maps is not None else {}

    @property
    def maps(self) -> Tensor:
        """(B, K, H, W) at the input's resolution (computed on first access)."""
        if self._maps is None:
            self._maps = self._make_maps()  # type: ignore[misc]
            self._make_maps = None
        return self._maps

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
            make_maps=lambda: combine(layer_maps, size, normalize, fusion, weights, valid),
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
                out[name] = type(self).formula(work_dtype(A), work_dtype(G))
        return out


class GradCAM(_GradientMethod):
    """Grad-CAM on one or more layers (several layers are fused like LayerCAM's)."""

    formula = staticmethod(gradcam_formula)


class GradCAMpp(_GradientMethod):
    """Grad-CAM++ on one or more layers."""

    formula = staticmethod(gradcampp_formula)


class LayerCAM(_GradientMethod):
    """LayerCAM on one or more layers; ``fusion="max"`` (the paper) or
    ``fusion="weighted", weights=[0.4, 0.4, 0.2]`` (the seed study, then tanh(2x))."""

    formula = staticmethod(layercam_formula)


# --------------------------------------------------------------------------- CAM


# Relative tolerance of the GAP + linear check per dtype: a few hundred ulps of
# the logits' scale (float16 / bfloat16 sums over thousands of channels drift).
_GAP_RTOL = {torch.float16: 2e-2, torch.bfloat16: 1e-1, torch.float32: 1e-4, torch.float64: 1e-9}


def gap_linear_mismatch(features: Tensor, logits: Tensor, fc: nn.Module) -> Tensor:
    """Does ``fc(GAP(features))`` differ from ``logits``? A 0-d bool tensor (no host sync).

    features ``(B, C, h, w)``, logits ``(B, N)``. The one GAP + linear check in
    camkit (presets, CAM's layer search and CAM's per-call check): the
    tolerance is relative to ``1 + max |logits|`` and depends on the dtype.
    Shapes that cannot match give True.
    """
    if (not isinstance(fc, nn.Linear) or features.dim() != 4 or features.shape[1] != fc.in_features
            or logits.dim() != 2 or logits.shape != (features.shape[0], fc.out_features)):
        return torch.tensor(True, device=logits.device)
    with torch.no_grad():
        ref = fc(features.mean(dim=(-2, -1)).to(fc.weight.dtype)).float()
        tol = _GAP_RTOL.get(logits.dtype, 1e-4) * (1.0 + logits.detach().float().abs().amax())
        return ((ref - logits.detach().float()).abs().amax() > tol) | ~torch.isfinite(ref).all()


def _head_linear(module: nn.Module) -> Optional[nn.Linear]:
    """The Linear of a head that is a Linear, or a Sequential of Flatten/Dropout/Identity then a Linear."""
    if isinstance(module, nn.Linear):
        return module
    if isinstance(module, nn.Sequential) and len(module) and isinstance(module[-1], nn.Linear):
        if all(isinstance(m, (nn.Dropout, nn.Flatten, nn.Identity)) for m in list(module)[:-1]):
            return module[-1]
    return None


def find_classifier(model: nn.Module) -> Tuple[str, nn.Linear]:
    """The GAP + linear head's Linear: ``(name, module)``; ValueError if there is none."""
    names = {id(m): n for n, m in model.named_modules()}
    candidates: List[nn.Module] = []
    if isinstance(model, CAMModel):
        candidates.append(model.head.fc)
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            candidates.append(get_classifier())
        except Exception:
            pass
    for attr in ("fc", "classifier", "head", "last_linear"):
        m = getattr(model, attr, None)
        if isinstance(m, nn.Module):
            candidates.append(m)
    for c in candidates:
        lin = _head_linear(c)
        if lin is not None and id(lin) in names:
            return names[id(lin)], lin
    raise InputError(
        f"{type(model).__name__} has no global-average-pool + linear head that CAM can use "
        "(VGG16's classifier, for one, is a stack of linear layers). Pass fc=... if the model has one, "
        "or train a camkit.CAMHead on the backbone (camkit.CAMModel) and use CAM on that."
    )


class CAM(_Method):
    """Class activation maps for a model whose head is GAP then linear.

    ``layer`` is the module feeding the pooling (found with one dry run when
    not given); ``fc`` the linear layer (found from the model when not given).
    Every call checks that ``fc(GAP(A))`` reproduces the model's logits, so a
    wrong layer or a head that is not GAP + linear raises instead of giving a
    silently wrong map. No backward pass: all K classes come from one forward.
    Targets must be class logits (indices, ``topk``, ``"all"``, ``ClassScore``,
    ``MultiLabel``).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: Optional[LayerSpec] = None,
        fc: Optional[Union[str, nn.Linear]] = None,
        normalize: Union[str, Normalizer, None] = "minmax",
        reshape: Optional[Reshape] = None,
        channels_last: bool = False,
        output: Output = None,
    ) -> None:
        _check_model(model)
        self._check_head = True
        if isinstance(model, CAMModel):
            layer = layer if layer is not None else "head.relu"
            fc = fc if fc is not None else model.head.fc
            self._check_head = type(model.head) is CAMHead
        if fc is None:
            _, self.fc = find_classifier(model)
        elif isinstance(fc, str):
            self.fc = dict(model.named_modules()).get(fc)  # type: ignore[assignment]
            if not isinstance(self.fc, nn.Linear):
                close = difflib.get_close_matches(fc, [n for n, _ in model.named_modules()], n=5, cutoff=0.5)
                raise InputError(f"fc={fc!r} is not a linear layer of the model; close matches: {', '.join(close)}")
        elif isinstance(fc, nn.Linear):
            self.fc = fc
        else:
            raise InputTypeError(f"fc must be a layer name or an nn.Linear, got {type(fc).__name__}")
        if layer is None:
            layer = _find_gap_input(model, self.fc, output)
        super().__init__(model, [layer], normalize=normalize, reshape=reshape, channels_last=channels_last,
                         output=output)

    def _layer_maps(self, acts: Dict[str, Tensor], scores: Tensor, values: Tensor, target: Target,
                    problems: List[Tuple[str, Optional[Tensor]]]) -> Dict[str, Tensor]:
        (name,) = self.layer_names
        classes = target.classes(scores) if target.logit else None
        if classes is None:
            raise InputError(f"CAM maps class logits: targets must be class indices, topk, 'all', ClassScore or "
                             f"MultiLabel, not {type(target).__name__}; use a gradient method for other targets")
        A = _as_4d(name, acts[name], self.reshape)
        if A.shape[1] != self.fc.in_features:
            raise InputError(
                f"layer {name!r} has {A.shape[1]} channels but the linear layer takes {self.fc.in_features} features"
            )
        if self._check_head:
            problems.append(("head", gap_linear_mismatch(A, scores, self.fc)))
        with float32_math(A.device.type):
            W = self.fc.weight[classes.clamp(min=0)]
            return {name: cam_formula(work_dtype(A), work_dtype(W))}


def _find_gap_input(model: nn.Module, fc: nn.Linear, output: Output = None) -> str:
    """Probe: the last module to finish whose output ``(B, C, h, w)`` (with more
    than one position) passes the GAP + linear check against the model's
    logits, found with one dry run on a random 224x224 input."""
    def keep(name: str, o: Tensor) -> Optional[Tensor]:
        return o if o.dim() == 4 and o.shape[1] == fc.in_features and o.shape[-2:].numel() > 1 else None

    kept, out = dry_run(model, batch=2, keep=keep)
    logits = select_output(out, output)
    for name in reversed(list(kept)):
        if kept[name] is not None and not bool(gap_linear_mismatch(kept[name], logits, fc)):
            return name
    raise InputError(
        f"could not find a layer whose global average pool feeds the linear layer of {type(model).__name__}: "
        "its head is not GAP + linear (or pools after a functional op). Pass layer=... (and reshape=... for a "
        "functional op such as torch.relu), or train a camkit.CAMHead and use CAM on a camkit.CAMModel."
    )


# --------------------------------------------------------------------------- ReCAM


class ReCAM(_Method):
    """ReCAM maps of a :class:`camkit.CAMModel` whose head is a :class:`camkit.ReCAMHead`.

    For each target c the head's maps are masked by the normalized CAM of c,
    and the map is the class-c score of the masked maps at each position (see
    ``ReCAMHead``), normalized by ``normalize`` (default ``"head"``: the
    head's own normalizer; None: raw). ``layer_maps["head"]`` holds the raw
    scores. ``logits`` are the head's re-activated logits for its default
    target.
    """

    def __init__(self, model: nn.Module, normalize: Union[str, Normalizer, None] = "head") -> None:
        if not isinstance(model, CAMModel) or not isinstance(model.head, ReCAMHead):
            raise InputError("ReCAM needs a camkit.CAMModel whose head is a camkit.ReCAMHead (trained)")
        self.model = model
        self.layers = [("head", model.head)]
        self.fusion, self.weights, self.reshape, self.channels_last, self.output = "max", None, None, False, None
        self.normalize = model.head.normalize if normalize == "head" else (
            None if normalize is None else get_normalizer(normalize))
        self._recorder = ActivationRecorder(model, [("backbone", model.backbone)])

    def _layer_maps(self, acts: Dict[str, Tensor], scores: Tensor, values: Tensor, target: Target,
                    problems: List[Tuple[str, Optional[Tensor]]]) -> Dict[str, Tensor]:
        classes = target.classes(scores) if target.logit else None
        if classes is None:
            raise InputError(f"ReCAM maps classes: targets must be class indices, topk, 'all', ClassScore or "
                             f"MultiLabel, not {type(target).__name__}")
        with float32_math(scores.device.type):
            raw, _ = self.model.head.recam(acts["backbone"], classes.clamp(min=0), normalized=False)
        return {"head": work_dtype(raw)}


METHODS = {"cam": CAM, "gradcam": GradCAM, "gradcampp": GradCAMpp, "layercam": LayerCAM, "recam": ReCAM}
