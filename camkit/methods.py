"""CAM methods: the formulas as pure functions, and the classes that apply them.

Notation: ``A`` is a layer's output ``(B, C, h, w)``; ``G`` the gradients of the
target logits with respect to it, ``(B, K, C, h, w)`` for K targets per image;
every formula returns raw maps ``(B, K, h, w)``.
"""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError, InputTypeError
from .fusion import fuse
from .heads import CAMHead, CAMModel, ReCAMHead
from .hooks import ActivationRecorder, LayerSpec, resolve_layers
from .normalize import Normalizer, get_normalizer

Targets = Union[None, int, str, Sequence[int], Tensor]
Reshape = Callable[[Tensor], Tensor]


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


# --------------------------------------------------------------------------- result


class CAMResult:
    """What every method returns.

    maps: (B, K, H, W) in [0, 1] at the input's resolution (normalized, fused).
    targets: (B, K) long. logits: (B, num_classes). layer_maps: raw per-layer maps
    (B, K, h, w) after the method's own ReLU, before normalization and upsampling.

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
        make_maps: Optional[Callable[[], Tensor]] = None,
    ) -> None:
        if maps is None and make_maps is None:
            raise InputError("CAMResult needs maps or make_maps")
        self._maps, self._make_maps = maps, make_maps
        self.targets = targets
        self.logits = logits
        self.layer_maps = layer_maps if layer_maps is not None else {}

    @property
    def maps(self) -> Tensor:
        """(B, K, H, W) in [0, 1] at the input's resolution (computed on first access)."""
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
        """Softmax of the logits, (B, num_classes)."""
        return self.logits.softmax(dim=-1)

    @property
    def scores(self) -> Tensor:
        """The target logits, (B, K)."""
        return self.logits.gather(1, self.targets)


# --------------------------------------------------------------------------- validation


def _check_input(x: object, model: nn.Module) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputTypeError(f"expected an image batch tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (a single image? add a batch dimension with x[None])" if x.dim() == 3 else ""
        raise InputError(f"expected input of shape (B, C, H, W), got {tuple(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise InputError("the input batch is empty")
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None and x.shape[1] != first_conv.in_channels:
        raise InputError(
            f"expected input of shape (B, {first_conv.in_channels}, H, W) for this model, got {tuple(x.shape)}"
        )
    return x


def _check_logits(out: object) -> Tensor:
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(f"the model must return logits of shape (B, num_classes), got {shape}")
    return out


def _targets_before(targets: Targets, topk: Optional[int], batch: int) -> Optional[Tensor]:
    """Shape checks that need no forward pass; returns a (B, K) tensor or None."""
    if topk is not None:
        if targets is not None:
            raise InputError("give either targets or topk, not both")
        if not isinstance(topk, int) or topk < 1:
            raise InputError(f"topk must be a positive int, got {topk!r}")
        return None
    if targets is None or (isinstance(targets, str) and targets == "all"):
        return None
    if isinstance(targets, str):
        raise InputError(f"targets must be class indices, 'all' or None, got {targets!r}")
    if isinstance(targets, int):
        targets = [targets] * batch
    t = torch.as_tensor(targets)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise InputError(f"targets must be integer class indices, got dtype {t.dtype}")
    t = t.long()
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2 or t.shape[0] != batch or t.shape[1] == 0:
        raise InputError(
            f"targets must have shape ({batch},) (one class per image) or ({batch}, K), got {tuple(torch.as_tensor(targets).shape)}"
        )
    return t


def _targets_after(t: Optional[Tensor], targets: Targets, topk: Optional[int], logits: Tensor) -> Tensor:
    num_classes = logits.shape[1]
    if topk is not None:
        if topk > num_classes:
            raise InputError(f"topk={topk} exceeds the number of classes ({num_classes})")
        return logits.detach().topk(topk, dim=1).indices
    if isinstance(targets, str):  # "all"
        return torch.arange(num_classes, device=logits.device).expand(logits.shape[0], -1)
    if t is None:
        return logits.detach().argmax(dim=1, keepdim=True)
    if t.min() < 0 or t.max() >= num_classes:
        bad = t[(t < 0) | (t >= num_classes)][0].item()
        raise InputError(f"target class {bad} out of range: classes are 0..{num_classes - 1}")
    return t.to(logits.device)


def _as_4d(name: str, a: Tensor, reshape: Optional[Reshape]) -> Tensor:
    if reshape is not None:
        a = reshape(a)
    if a.dim() != 4:
        raise InputError(
            f"layer {name!r} outputs shape {tuple(a.shape)}; expected (B, C, h, w). For token outputs (B, N, C) "
            "pass reshape=... or use camkit.adapters"
        )
    return a


# --------------------------------------------------------------------------- base


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Explain the inference model: eval mode during the call (no dropout, no
    batch-norm statistics updated), every module's own flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class _Method:
    """Shared engine: hooks, one forward, targets, per-layer maps, normalize, upsample, fuse."""

    needs_grad = False

    def __init__(
        self,
        model: nn.Module,
        layers: Union[LayerSpec, Sequence[LayerSpec]],
        fusion: str = "max",
        weights: Optional[Sequence[float]] = None,
        normalize: Union[str, Normalizer] = "minmax",
        reshape: Optional[Reshape] = None,
        channels_last: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layers = resolve_layers(model, layers)
        if fusion not in ("max", "weighted"):
            raise InputError(f"unknown fusion {fusion!r}; choose 'max' or 'weighted'")
        if fusion == "weighted" and (weights is None or len(weights) != len(self.layers)):
            raise InputError(
                f"fusion='weighted' needs one weight per layer: {len(self.layers)} layers, got weights={weights}"
            )
        self.fusion, self.weights = fusion, weights
        self.normalize = get_normalizer(normalize)
        self.reshape = reshape
        self.channels_last = bool(channels_last)
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

    def __call__(self, x: Tensor, targets: Targets = None, topk: Optional[int] = None) -> CAMResult:
        """Maps for ``targets``: None (top-1 of each image), an int, (B,) or (B, K)
        class indices, ``"all"``, or ``topk=k`` (the k best predictions).

        The model runs in eval mode during the call; its flags are restored after.
        With ``channels_last=True`` (constructor) the input is passed to the
        model in channels-last memory format (the model itself is not touched);
        on CPU convolutions then run faster, with results equal up to float
        rounding.
        """
        x = _check_input(x, self.model)
        t = _targets_before(targets, topk, x.shape[0])
        if self.needs_grad and torch.is_inference_mode_enabled():
            raise RuntimeError("gradient-based CAM methods cannot run inside torch.inference_mode(); use torch.no_grad()")
        xin = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        # The forward starts without grad; for gradient methods the first hooked
        # layer turns grad mode on (ActivationRecorder), so no graph is kept for
        # the layers below it. no_grad's exit restores the caller's mode.
        with self._recorder.recording() as acts, torch.no_grad(), _eval_mode(self.model):
            logits = _check_logits(self.model(xin))
            torch.set_grad_enabled(False)
            self._recorder.check_complete()
            t = _targets_after(t, targets, topk, logits)
            layer_maps = self._layer_maps(acts, logits, t)
        layer_maps = {n: m.detach().contiguous() for n, m in layer_maps.items()}
        size = tuple(x.shape[-2:])
        combine, normalize, fusion, weights = self._combine, self.normalize, self.fusion, self.weights
        return CAMResult(
            targets=t, logits=logits.detach(), layer_maps=layer_maps,
            make_maps=lambda: combine(layer_maps, size, normalize, fusion, weights),
        )

    def _layer_maps(self, acts: Dict[str, Tensor], logits: Tensor, targets: Tensor) -> Dict[str, Tensor]:
        raise NotImplementedError

    @staticmethod
    def _combine(
        layer_maps: Dict[str, Tensor],
        size: Tuple[int, ...],
        normalize: Normalizer,
        fusion: str,
        weights: Optional[Sequence[float]],
    ) -> Tensor:
        """Normalize each layer's (B, K, h, w) maps, upsample them (one interpolate call per layer
        for all K maps), fuse."""
        ups = [
            F.interpolate(normalize(m), size=tuple(size), mode="bilinear", align_corners=False)
            for m in layer_maps.values()
        ]
        if len(ups) == 1:
            return ups[0].clamp_(0.0, 1.0)
        return fuse(ups, fusion, weights if fusion == "weighted" else None).clamp_(0.0, 1.0)


def target_gradients(
    logits: Tensor, activations: Sequence[Tensor], targets: Tensor, batched: bool = True
) -> List[Optional[Tensor]]:
    """d logits[b, targets[b, k]] / d A for every activation: ``(B, K, *A.shape[1:])`` each.

    ``batched=True``: one backward for all K targets (``is_grads_batched``:
    the K one-hot vector-Jacobian products run as one vmapped call).
    ``batched=False``: K calls on the retained graph. Only the graph between
    the activations and the logits is traversed either way, and the results
    are equal. On CPU (torch 2.14) vmap runs each convolution's backward once
    per target and concatenates, so batching saves nothing there: measured
    0.92-0.98x the loop's time on VGG16 and 1.04-1.14x on ResNet50, top-5, B=8
    (benchmarks/results/peers/README.md).
    """
    B, K = targets.shape
    onehot = torch.zeros(K, *logits.shape, dtype=logits.dtype, device=logits.device)
    onehot.scatter_(2, targets.t().unsqueeze(-1), 1.0)
    if K == 1:  # a view, not a copy: the top-1 path is the common one
        grads = torch.autograd.grad(logits, activations, grad_outputs=onehot[0], allow_unused=True)
        return [g.unsqueeze(1) if g is not None else None for g in grads]
    if not batched:
        per_k = [
            torch.autograd.grad(logits, activations, grad_outputs=onehot[k], retain_graph=k < K - 1, allow_unused=True)
            for k in range(K)
        ]
        return [
            None if per_k[0][i] is None else torch.stack([g[i] for g in per_k], dim=1)
            for i in range(len(activations))
        ]
    grads = torch.autograd.grad(logits, activations, grad_outputs=onehot, is_grads_batched=True, allow_unused=True)
    return [g.transpose(0, 1) if g is not None else None for g in grads]


class _GradientMethod(_Method):
    """Methods that need dy_c/dA. ``batched_backward``: one vmapped backward for
    K targets (default) or K calls on the retained graph (see ``target_gradients``)."""

    needs_grad = True
    formula: Callable[[Tensor, Tensor], Tensor]

    def __init__(
        self,
        model: nn.Module,
        layers: Union[LayerSpec, Sequence[LayerSpec]],
        fusion: str = "max",
        weights: Optional[Sequence[float]] = None,
        normalize: Union[str, Normalizer] = "minmax",
        reshape: Optional[Reshape] = None,
        channels_last: bool = False,
        batched_backward: bool = True,
    ) -> None:
        super().__init__(model, layers, fusion, weights, normalize, reshape, channels_last)
        self.batched_backward = bool(batched_backward)

    def _layer_maps(self, acts: Dict[str, Tensor], logits: Tensor, targets: Tensor) -> Dict[str, Tensor]:
        names = self.layer_names
        raw = [acts[n] for n in names]
        if not logits.requires_grad:
            raise InputError(f"the model's output does not depend on layers {names} through autograd")
        grads = target_gradients(logits, raw, targets, self.batched_backward)
        out: Dict[str, Tensor] = {}
        for name, a, g in zip(names, raw, grads):
            if g is None:
                raise InputError(f"the model's output does not depend on layer {name!r}")
            A = _as_4d(name, a.detach(), self.reshape)
            if self.reshape is not None:
                G = self.reshape(g.flatten(0, 1)).unflatten(0, g.shape[:2])
            else:
                G = g
            out[name] = type(self).formula(A, G)
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

    ``layer`` is the module feeding the pooling (found on the first call when
    not given); ``fc`` the linear layer (found from the model when not given).
    Every call checks that ``fc(GAP(A))`` reproduces the model's logits, so a
    wrong layer or a head that is not GAP + linear raises instead of giving a
    silently wrong map. No backward pass: all K classes come from one forward.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: Optional[LayerSpec] = None,
        fc: Optional[Union[str, nn.Linear]] = None,
        normalize: Union[str, Normalizer] = "minmax",
        reshape: Optional[Reshape] = None,
        channels_last: bool = False,
    ) -> None:
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
            layer = _find_gap_input(model, self.fc)
        super().__init__(model, [layer], normalize=normalize, reshape=reshape, channels_last=channels_last)

    def _layer_maps(self, acts: Dict[str, Tensor], logits: Tensor, targets: Tensor) -> Dict[str, Tensor]:
        (name,) = self.layer_names
        A = _as_4d(name, acts[name], self.reshape)
        if A.shape[1] != self.fc.in_features:
            raise InputError(
                f"layer {name!r} has {A.shape[1]} channels but the linear layer takes {self.fc.in_features} features"
            )
        if self._check_head:
            pooled = self.fc(A.mean(dim=(-2, -1)))
            tol = 1e-3 * (1.0 + logits.abs().max())
            if pooled.shape != logits.shape or (pooled - logits).abs().max() > tol:
                raise InputError(
                    f"the model's logits are not fc(GAP({name})): its head is not global-average-pool + linear "
                    "on this layer (or dropout is active: call model.eval()). Use another layer, or a camkit.CAMHead."
                )
        return {name: cam_formula(A, self.fc.weight[targets])}


def _find_gap_input(model: nn.Module, fc: nn.Linear) -> str:
    """Probe: the last module to finish whose output ``(B, C, h, w)`` (with more
    than one position) spatially averaged equals what the linear layer
    receives, found with one forward pass on a random 224x224 input."""
    means: List[Tuple[str, Tensor]] = []
    fc_in: List[Tensor] = []

    def make(name: str):
        def hook(m: nn.Module, i: object, o: object) -> None:
            if isinstance(o, Tensor) and o.dim() == 4 and o.shape[1] == fc.in_features and o.shape[-2:].numel() > 1:
                means.append((name, o.detach().float().mean(dim=(-2, -1))))
        return hook

    handles = [m.register_forward_hook(make(n)) for n, m in model.named_modules() if n]
    handles.append(fc.register_forward_pre_hook(lambda m, i: fc_in.append(i[0].detach().float())))
    try:
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = first_conv.in_channels if first_conv is not None else 3
        p = next(model.parameters())
        x = torch.randn(2, channels, 224, 224, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
        with torch.no_grad(), _eval_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    if fc_in:
        target = fc_in[-1].flatten(1)
        for name, m in reversed(means):
            if m.shape == target.shape and torch.allclose(m, target, rtol=1e-4, atol=1e-5):
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
    and the map is the normalized class-c score of the masked maps at each
    position (see ``ReCAMHead``). ``layer_maps["head"]`` holds the raw scores.
    ``logits`` are the head's re-activated logits for its default target.
    """

    def __init__(self, model: nn.Module, normalize: Optional[Union[str, Normalizer]] = None) -> None:
        if not isinstance(model, CAMModel) or not isinstance(model.head, ReCAMHead):
            raise InputError("ReCAM needs a camkit.CAMModel whose head is a camkit.ReCAMHead (trained)")
        self.model = model
        self.layers = [("head", model.head)]
        self.fusion, self.weights, self.reshape, self.channels_last = "max", None, None, False
        self.normalize = get_normalizer(normalize) if normalize is not None else model.head.normalize
        self._recorder = ActivationRecorder(model, [("backbone", model.backbone)])

    def _layer_maps(self, acts: Dict[str, Tensor], logits: Tensor, targets: Tensor) -> Dict[str, Tensor]:
        raw, _ = self.model.head.recam(acts["backbone"], targets, normalized=False)
        return {"head": raw}


METHODS = {"cam": CAM, "gradcam": GradCAM, "gradcampp": GradCAMpp, "layercam": LayerCAM, "recam": ReCAM}
