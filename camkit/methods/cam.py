"""CAM and ReCAM: maps read off a GAP + linear head's weights (no backward).

``cam_formula`` is CAM's formula; ``gap_linear_mismatch`` is camkit's one
check that a layer feeds a global-average-pool + linear head.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import InputError, InputTypeError
from ..heads import CAMHead, CAMModel, PaperReCAMHead, ReCAMHead
from ..hooks import LayerSpec, dry_model, dry_run
from ..normalize import Normalizer, get_normalizer
from ..targets import AllClasses, Target
from .base import CallContext, Layers, _Method
from .options import Options
from .output import Output, select_output
from .precision import float32_math, work_dtype
from .registry import register_method
from .volume import conv3d_channels, first_conv, fold, probe_input


def cam_formula(A: Tensor, W: Tensor) -> Tensor:
    """CAM (Zhou et al., 2016): ``sum_k W[c, k] A_k``. A: (B, C, h, w); W: (B, K, C) rows of the linear
    layer, or (K, C) when every image has the same K classes. Returns (B, K, h, w)."""
    return torch.einsum("kc,bchw->bkhw" if W.dim() == 2 else "bkc,bchw->bkhw", W, A)


def class_rows(weight: Tensor, classes: Tensor, all_classes: bool = False) -> Tensor:
    """The linear layer's rows for each map's class: ``weight (N, C)`` itself for ``all_classes``, ``(K, C)``
    when every image has the same ``classes (B, K)`` (an expanded tensor: no per-image copy, which for
    1000 classes is B x 8 MB), else ``(B, K, C)``. Negative classes (padding) read row 0."""
    if all_classes and classes.shape[1] == weight.shape[0]:  # classes = 0 .. N-1 in every row
        return weight
    if classes.shape[0] == 1 or classes.stride(0) == 0:
        return weight[classes[0].clamp(min=0)]
    return weight[classes.clamp(min=0)]


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
        return logits_mismatch(fc(features.mean(dim=(-2, -1)).to(fc.weight.dtype)), logits)


def logits_mismatch(ref: Tensor, logits: Tensor) -> Tensor:
    """Does ``ref`` (what GAP + linear gives, ``(B, N)``) differ from ``logits``, within the dtype's tolerance
    (:func:`gap_linear_mismatch`)? A 0-d bool tensor (no host sync)."""
    with torch.no_grad():
        ref, lg = ref.detach().float(), logits.detach().float()
        tol = _GAP_RTOL.get(logits.dtype, 1e-4) * (1.0 + lg.abs().amax())
        return ((ref - lg).abs().amax() > tol) | ~torch.isfinite(ref).all()


def _map_means(maps: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``(B, N)``: CAM maps ``(B, N, h, w)`` averaged over space, plus the bias: ``fc(GAP(A))``."""
    means = maps.detach().mean(dim=(-2, -1))
    return means if bias is None else means + bias.detach().to(means.dtype)


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


@dataclass(frozen=True)
class CAMOptions(Options):
    """Plus ``fc``: the linear layer (a name or the module; found from the model when None)."""

    fc: Union[None, str, nn.Linear] = None


def _class_targets(method: str, target: Target, scores: Tensor) -> Tensor:
    """The ``(B, K)`` classes of a class target, or an error: ``method`` maps class logits only."""
    classes = target.classes(scores) if target.logit else None
    if classes is None:
        raise InputError(f"{method} maps class logits: targets must be class indices, topk, 'all', ClassScore or "
                         f"MultiLabel, not {type(target).__name__}; use a gradient method for other targets")
    return classes


@register_method("cam", layers="cam")
class CAM(_Method):
    """Class activation maps for a model whose head is GAP then linear.

    ``layers`` is the one module feeding the pooling (found with one dry run when
    not given); option ``fc`` the linear layer (found from the model when not given).
    Every call checks that ``fc(GAP(A))`` reproduces the model's logits, so a
    wrong layer or a head that is not GAP + linear raises instead of giving a
    silently wrong map. No backward pass: all K classes come from one forward.
    Targets must be class logits (indices, ``topk``, ``"all"``, ``ClassScore``,
    ``MultiLabel``).
    """

    Options = CAMOptions
    volumes = True  # (B, C, t, h, w) layers folded (camkit.methods.volume): GAP over the volume
    differentiable = True  # W[c] A keeps its graph with create_graph=True

    def _setup(self) -> None:
        model, fc = self.model, self.options.fc
        self._check_head = True
        if isinstance(model, CAMModel):
            fc = fc if fc is not None else model.head.fc
            self._check_head = type(model.head) is CAMHead
        self.fc = _linear(model, fc)

    def _default_layers(self, layers: Layers) -> Sequence[LayerSpec]:
        if layers is None:
            if isinstance(self.model, CAMModel):
                return ["head.relu"]
            return [_find_gap_input(self.model, self.fc, self.options.output)]
        many = not isinstance(layers, (str, nn.Module))
        if many and len(list(layers)) != 1:  # type: ignore[arg-type]
            raise InputError(f"CAM uses exactly one layer, got {list(layers)}")  # type: ignore[arg-type]
        return list(layers) if many else [layers]  # type: ignore[list-item, arg-type]

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        (name,) = self.layer_names
        classes = _class_targets("CAM", ctx.target, ctx.scores)
        A = self._as_4d(name, ctx.acts[name])
        if A.shape[1] != self.fc.in_features:
            raise InputError(
                f"layer {name!r} has {A.shape[1]} channels but the linear layer takes {self.fc.in_features} features"
            )
        with float32_math(A.device.type):
            W = class_rows(self.fc.weight, classes, isinstance(ctx.target, AllClasses))
            maps = cam_formula(work_dtype(A), work_dtype(W))
        if self._check_head:  # every class mapped: the maps' spatial means are GAP + linear (no second fc read)
            every = W is self.fc.weight  # class_rows gave the whole weight: classes 0 .. N-1 of the scores
            ctx.flag("head", logits_mismatch(_map_means(maps, self.fc.bias), ctx.scores) if every
                     else gap_linear_mismatch(A, ctx.scores, self.fc))
        return {name: maps}


class PointwiseLinear(nn.Linear):
    """A 1x1 ``Conv2d`` after global pooling read as the linear layer it is (torchcam's case):
    ``weight`` ``(N, C)`` is a view of the conv's; nothing is copied or registered."""

    def __init__(self, conv: nn.Conv2d) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = conv.in_channels, conv.out_channels
        self._conv = (conv,)  # a tuple: not a submodule

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        return self._conv[0].weight.flatten(1)

    @property
    def bias(self) -> Optional[Tensor]:  # type: ignore[override]
        return self._conv[0].bias


def _pointwise(m: object) -> bool:
    return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and m.groups == 1 and tuple(m.stride) == (1, 1)


def _linear(model: nn.Module, fc: Union[None, str, nn.Linear]) -> nn.Linear:
    """The linear layer ``fc`` names (a name, the module, or None: found from the model); a 1x1
    ``Conv2d`` is read as a linear layer (:class:`PointwiseLinear`)."""
    if fc is None:
        return find_classifier(model)[1]
    found = dict(model.named_modules()).get(fc) if isinstance(fc, str) else fc
    if _pointwise(found):
        return PointwiseLinear(found)  # type: ignore[arg-type]
    if isinstance(fc, str):
        if not isinstance(found, nn.Linear):
            close = difflib.get_close_matches(fc, [n for n, _ in model.named_modules()], n=5, cutoff=0.5)
            raise InputError(f"fc={fc!r} is not a linear layer of the model; close matches: {', '.join(close)}")
        return found
    if isinstance(fc, nn.Linear):
        return fc
    raise InputTypeError(f"fc must be a layer name or an nn.Linear, got {type(fc).__name__}")


def _find_gap_input(model: nn.Module, fc: nn.Linear, output: Output = None) -> str:
    """Probe: the last module to finish whose output ``(B, C, h, w)`` (with more
    than one position) passes the GAP + linear check against the model's
    logits, found with one dry run on a random 224x224 input (a 3-D model's: ``(B, C, t, h, w)``
    outputs, on a random ``8 x 112 x 112`` video)."""
    def keep(name: str, o: Tensor) -> Optional[Tensor]:
        o = fold(o) if o.dim() == 5 else o
        return o if o.dim() == 4 and o.shape[1] == fc.in_features and o.shape[-2:].numel() > 1 else None

    conv = first_conv(model)
    with dry_model(model) as probe:
        x = probe_input(probe, conv3d_channels(probe)) if conv is not None and conv[1] == 3 else None
        kept, out = dry_run(probe, x, batch=2, keep=keep)
    logits = select_output(out, output)
    if not bool(torch.isfinite(logits).all()):
        raise InputError("the model's output is NaN or Inf on a random input (check the weights); "
                         "cannot search for the layer that feeds its linear head: pass layer=...")
    for name in reversed(list(kept)):
        if kept[name] is not None and not bool(gap_linear_mismatch(kept[name], logits, fc)):
            return name
    raise InputError(
        f"could not find a layer whose global average pool feeds the linear layer of {type(model).__name__}: "
        "its head is not GAP + linear (or pools after a functional op). Pass layer=... (and reshape=... for a "
        "functional op such as torch.relu), or train a camkit.CAMHead and use CAM on a camkit.CAMModel."
    )


# --------------------------------------------------------------------------- ReCAM


class _HeadMethod(_Method):
    """A method that reads its maps from a trained camkit head: the backbone's
    output is recorded and ``_head_maps(features, classes)`` returns the raw
    maps ``(B, K, h, w)``. Subclasses set ``head_type``; their registered
    normalizer ``"head"`` means the head's own."""

    head_type: type = CAMHead

    def _setup(self) -> None:
        model = self.model
        if not isinstance(model, CAMModel) or not isinstance(model.head, self.head_type):
            raise InputError(f"{type(self).__name__} needs a camkit.CAMModel whose head is a camkit.heads."
                             f"{self.head_type.__name__} (trained)")

    def _default_layers(self, layers: Layers) -> Sequence[LayerSpec]:
        if layers is not None:
            raise InputError(f"{type(self).__name__} uses the CAM head's maps; it takes no layers")
        return ["head"]

    def _hooked(self) -> List[Tuple[str, nn.Module]]:
        return [("backbone", self.model.backbone)]

    def _normalizer(self, spec: Union[str, Normalizer, None]) -> Optional[Normalizer]:
        if spec == "head" or (spec == "default" and self.info is not None and self.info.normalize == "head"):
            return get_normalizer(self.model.head.normalize)
        return super()._normalizer(spec)

    def _head_maps(self, features: Tensor, classes: Tensor) -> Tensor:
        raise NotImplementedError

    def _layer_maps(self, ctx: CallContext) -> Dict[str, Tensor]:
        classes = _class_targets(type(self).__name__, ctx.target, ctx.scores)
        with float32_math(ctx.scores.device.type):
            return {"head": work_dtype(self._head_maps(ctx.acts["backbone"], classes.clamp(min=0)))}


@register_method("recam", layers="head", normalize="head")
class ReCAM(_HeadMethod):
    """ReCAM maps of a :class:`camkit.CAMModel` whose head is a :class:`camkit.ReCAMHead` (the study's).

    For each target c the head's maps are masked by the normalized CAM of c,
    and the map is the class-c score of the masked maps at each position (see
    ``ReCAMHead``), normalized by ``normalize`` (default ``"head"``: the
    head's own normalizer; None: raw). ``layer_maps["head"]`` holds the raw
    scores. ``logits`` are the head's re-activated logits for its default
    target.
    """

    head_type = ReCAMHead

    def _head_maps(self, features: Tensor, classes: Tensor) -> Tensor:
        raw, _ = self.model.head.recam(features, classes, normalized=False)
        return raw


@register_method("paper_recam", layers="head", normalize="relu_max", cli=False)
class PaperReCAM(_HeadMethod):
    """ReCAM as Chen et al. (CVPR 2022) define it, on a :class:`camkit.CAMModel` whose
    head is a trained :class:`camkit.heads.PaperReCAMHead`.

    The map of class c is the head's ``recam_maps``: ``ReLU(sum_k W'[c, k] W[c, k] M_k)``
    (the CAM head's maps M weighted by the element-wise product of its classifier W
    and the ReCAM predictor W'), normalized by ``normalize`` (default ``"relu_max"``:
    divided by its max, the paper's; None: raw, in ``layer_maps["head"]``). ``logits``
    are the CAM head's plain logits. Targets must be classes.
    """

    head_type = PaperReCAMHead

    def _head_maps(self, features: Tensor, classes: Tensor) -> Tensor:
        return self.model.head.recam_maps(features, classes)
