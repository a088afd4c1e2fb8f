"""Presets: default layers, the CAM layer and linear head, token reshape and
preprocessing for a model, looked up from the model's class and structure.

>>> preset = resolve(model)                    # torchvision, timm or CAMModel
>>> preset.layers                              # LayerCAM's default layers
>>> preset.method_kwargs("gradcam")            # {"layers": [...], "reshape": ...}

How the defaults are chosen (documented here once, tested in tests/test_adapters.py):

* **Models with a ``features`` Sequential** (torchvision VGG, EfficientNet,
  MobileNet, ConvNeXt, DenseNet): one dry forward of ``features`` on a small
  input gives every child's output resolution; the LayerCAM layers are the last
  child at each of the three coarsest resolutions (the end of each stage, e.g.
  ConvNeXt ``features.3``, ``.5``, ``.7``). VGG instead uses its last three
  max-pool outputs, ``features.16``, ``.23``, ``.30`` for VGG16: pool3, pool4
  and pool5, the seed study's layers (layer set ``"pools"``). VGG also gets the
  layer set ``"convs"``:
  ``features.15``, ``.22``, ``.29``, the ReLU'd outputs of conv3_3, conv4_3 and
  conv5_3 (the LayerCAM paper hooked the last conv layer of stages 3-5 after
  their ReLU). Grad-CAM's default on VGG is ``features.29`` (relu5_3, the
  Grad-CAM paper's layer); elsewhere it is the deepest LayerCAM layer.
* **ResNet** (torchvision): ``layer2``, ``layer3``, ``layer4``.
* **timm convnets**: the last three ``feature_info`` stages; Grad-CAM and CAM
  use the module whose output is exactly ``forward_features(x)`` (found in a
  dry run, e.g. ``bn2`` of EfficientNet, after the head conv).
* **Vision transformers** (timm ``VisionTransformer`` and subclasses such as
  DeiT-distilled and register-token models, torchvision ``VisionTransformer``):
  the ``norm1`` (timm) / ``ln_1`` (torchvision) of the last three blocks, whose
  (B, N, C) tokens are turned into (B, C, h, w) maps by :class:`TokenReshape`,
  which drops the model's own ``num_prefix_tokens`` (class, distillation and
  register tokens). The last block's *output* is not used: with class-token
  pooling its patch tokens get no gradient.
* **CAM** needs global average pooling followed by one linear layer. The preset
  names the layer whose output the pooling sees (``cam_layer``) and the linear
  layer (``fc``) only where the dry run confirms ``fc(GAP(A)) == logits``;
  DenseNet applies a functional ReLU before pooling, so its preset adds
  ``cam_reshape=relu``. VGG16 (fully connected classifier), MobileNetV3 (two
  linear layers) and ConvNeXt (LayerNorm after pooling) have no CAM layer.
* :class:`camkit.heads.CAMModel`: the CAM head's maps (``head.relu``) with the
  backbone's two coarsest stages before it for LayerCAM; CAM/ReCAM use the head.
* **torchvision segmentation** (FCN, DeepLabV3, LR-ASPP): ``task="segmentation"``
  and ``output="out"`` (their forward returns a dict; ``out`` is
  ``(B, num_classes, H, W)``); ResNet backbones ``backbone.layer2``-``4``
  (Grad-CAM ``backbone.layer4``), MobileNetV3 backbones the end of their three
  coarsest stages; no CAM. Class names come with the weights (VOC), else
  ``"class k"``.
* **torchvision MaxViT**: the three coarsest ``blocks.*`` outputs, Grad-CAM the
  last block; no CAM (LayerNorm and two linear layers after pooling); the dry
  run at the one size the model was built for. Swin V2 is a torchvision
  ``SwinTransformer``: the Swin preset above.
* **Hugging Face transformers** classifiers (ViT, DeiT, BEiT, Swin, ConvNeXt):
  ``adapters/transformers_hf.py`` (``output="logits"``, the token reshapes,
  ``config.id2label`` names).
* **Any other model**: the automatic layer (``adapters/autolayer.py``): the last
  spatial layer before global pooling, found in one dry run, for every method,
  with an :class:`~camkit.adapters.autolayer.AutoLayerWarning` naming it.
  A model without a spatial layer raises :class:`NoPresetError`.

Dry runs: one :func:`camkit.hooks.dry_run` of the whole model per question, on
an input in the model's dtype and device with the channels of the first
``Conv2d`` that actually runs (:func:`stem_channels`), from a private RNG; a
model with uninitialized lazy modules is dry-run as a copy.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from camkit.display import dataclass_repr
from camkit.errors import InputError
from camkit.hooks import dry_model, dry_run, dry_run_input
from camkit.methods import method_info, registered, select_output

from .autolayer import auto_fields
from .detection import detection_fields, is_detector
from .layouts import Reshape, TokenReshape, nhwc_to_nchw
from .layouts import gap_linear as _gap_linear
from .layouts import stage_ends as _stage_ends
from .transformers_hf import is_transformers, transformers_fields
from .video import is_video_model, video_fields

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Output = Union[str, int, Callable[[Any], Tensor]]


class NoPresetError(InputError):
    """camkit has no preset for this kind of model (its layers must be named by hand)."""


def relu(t: Tensor) -> Tensor:
    """The functional ReLU some models apply between their last layer and the pooling."""
    return torch.relu(t)


@dataclass(frozen=True)
class Preset:
    """What camkit needs to explain a model, with no layer names typed by hand.

    family: a short name (``"vgg"``, ``"resnet"``, ``"timm-vit"``, ...).
    layers: LayerCAM's default layers (dotted module names), shallow to deep.
    gradcam_layer: Grad-CAM / Grad-CAM++'s default layer.
    cam_layer, fc: the layer whose output global average pooling sees and the
        linear layer after it; ``None`` where the model has no GAP + linear head.
    cam_reshape: applied to ``cam_layer``'s output before CAM (DenseNet: ReLU).
    reshape: applied to every hooked layer's output (ViT tokens -> maps).
    layer_sets: named alternatives to ``layers`` (VGG: ``"pools"``, ``"convs"``).
    transform: PIL image -> normalized tensor (3, H, W) for this model's weights.
    mean, std, input_size: the normalization and the (H, W) the transform gives.
    categories: class names when known (from the weights' metadata).
    head_type: the class of a camkit.CAMModel's head (the head methods need theirs), else None.
    task: ``"classification"`` (scores ``(B, num_classes)``) or ``"segmentation"``
        (scores ``(B, num_classes, H, W)``, explained per region, e.g. with
        ``camkit.targets.SegmentationRegion``) or ``"detection"`` (torchvision detectors: scores are
        detections ``(B, N, 4 + C)``, explained per box with ``camkit.targets.BoxScore`` or
        ``TopDetections``; see ``camkit.adapters.detection``) or ``"video"`` (torchvision's video
        classifiers: scores ``(B, num_classes)`` of clips ``(B, C, T, H, W)``; see ``camkit.adapters.video``).
    output: how the methods select the scores from the model's raw output
        (their ``output=``): a dict key, attribute name, tuple index or callable;
        ``None``: the output itself (torchvision segmentation models: ``"out"``).
        For segmentation presets ``input_size`` is nominal: the transform resizes the short side to it.
    """

    family: str
    layers: Tuple[str, ...]
    gradcam_layer: str
    cam_layer: Optional[str] = None
    fc: Optional[str] = None
    cam_reshape: Optional[Reshape] = None
    reshape: Optional[Reshape] = None
    layer_sets: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)
    transform: Optional[Callable[[Any], Tensor]] = None
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    input_size: Tuple[int, int] = (224, 224)
    categories: Optional[Tuple[str, ...]] = None
    head_type: Optional[type] = None
    task: str = "classification"
    output: Optional[Output] = None

    def __repr__(self) -> str:
        return dataclass_repr(self)  # camkit.display: non-default fields, long values shortened

    @property
    def recam(self) -> bool:
        """Whether the model is a CAMModel with a ReCAM head (the study's)."""
        from camkit.heads import ReCAMHead

        return self.head_type is not None and issubclass(self.head_type, ReCAMHead)

    @property
    def methods(self) -> Tuple[str, ...]:
        """The command line's methods that have default layers for this model (registry order)."""
        out = []
        for info in registered():
            try:
                if info.cli:
                    self.default_layers(info.name)
                    out.append(info.name)
            except InputError:
                pass
        return tuple(out)

    def default_layers(self, method: str) -> Tuple[str, ...]:
        """The layers ``method`` hooks by default (from its registered layer kind).

        Raises:
            InputError: the method is unknown or has no default for this model (and why).
        """
        info = method_info(method)
        # (MaxViT's relative-position attention is neither nn.MultiheadAttention nor timm's Attention)
        if getattr(info.cls, "needs_attention", False) and (not self.family.endswith("vit") or "maxvit" in self.family):
            raise InputError(f"{info.cls.__name__} explains vision transformers (timm's or torchvision's "
                             f"VisionTransformer); this {self.family} model is not one. Use gradcam, gradcampp or layercam")
        if info.layers == "stages":
            return self.layers
        if info.layers == "last":
            return (self.gradcam_layer,)
        if info.layers in ("biases", "input"):
            return ()  # every bias layer, or none (the input's gradient)
        if info.layers == "cam":
            if self.cam_layer is None:
                raise InputError(
                    f"CAM needs global average pooling followed by one linear layer; this {self.family} model "
                    f"has none. Use gradcam, gradcampp or layercam"
                )
            return (self.cam_layer,)
        need = getattr(info.cls, "head_type", None)
        if need is None or self.head_type is None or not issubclass(self.head_type, need):
            raise InputError(f"{info.cls.__name__} needs a camkit.CAMModel with a "
                             f"{getattr(need, '__name__', 'trained')} head (see camkit.heads)")
        return ()

    def expand_layers(self, layers: Sequence[str]) -> List[str]:
        """Replace names of layer sets (``"convs"``, ``"pools"``, ``"default"``) by their layers."""
        out: List[str] = []
        for name in layers:
            if name in self.layer_sets:
                out.extend(self.layer_sets[name])
            elif name == "default":
                out.extend(self.layers)
            else:
                out.append(name)
        return out

    def method_kwargs(self, method: str, layers: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """Keyword arguments for ``camkit.METHODS[method](model, **kwargs)``.

        Args:
            method: a registered method's name.
            layers: overrides the defaults (names or layer-set names).

        Returns:
            ``layers`` (where the method takes layers), ``reshape`` (the preset's, or for CAM its
            ``cam_reshape``), ``fc`` (CAM) and ``output`` where the preset has them.
        """
        info = method_info(method)
        chosen = self.expand_layers(layers) if layers else list(self.default_layers(info.name))
        out: Dict[str, Any] = {} if self.output is None else {"output": self.output}
        if info.layers in ("biases", "head", "input"):
            if layers and info.layers == "head":
                raise InputError(f"{info.cls.__name__} uses the CAM head's maps; it takes no layers")
            return out
        kw: Dict[str, Any] = {"layers": chosen}
        if info.layers == "cam":
            if len(chosen) != 1:
                raise InputError(f"CAM uses exactly one layer, got {chosen}")
            if self.fc is not None:
                kw["fc"] = self.fc
            if self.cam_reshape is not None and chosen[0] == self.cam_layer:
                kw["reshape"] = self.cam_reshape
        elif self.reshape is not None:
            kw["reshape"] = self.reshape
        return {**kw, **out}

    def with_weights(self, weights: Any) -> Preset:
        """The same preset with the transform and categories of a torchvision weights enum
        (a detector keeps its own transform: only the categories)."""
        if self.task == "detection":
            cats = weights.meta.get("categories")
            return replace(self, categories=tuple(cats)) if cats else self
        return replace(self, **_tv_weights_fields(weights))


# --------------------------------------------------------------------------- dry runs
#
# Every dry run here is one camkit.hooks.dry_run of the whole model (eval mode
# and every flag restored exactly, under the model's lock, no_grad) on an input
# from camkit.hooks.dry_run_input (the model's dtype and device, a private RNG).


def _modules(model: nn.Module) -> Dict[str, nn.Module]:
    return dict(model.named_modules())


def _dry(model: nn.Module, names: Sequence[str], size: int = 64,
         run: Optional[Callable[[Tensor], Any]] = None) -> Tuple[Dict[str, Tensor], Any]:
    """One dry run at (size, size): the named modules' outputs and the output."""
    return dry_run(model, dry_run_input(model, (size, size)), names=names, run=run)


def _children(seq: nn.Module, prefix: str) -> List[str]:
    return [f"{prefix}{n}" for n, _ in seq.named_children()]


# --------------------------------------------------------------------------- preprocessing

def imagenet_transform(size: int = 224, resize: int = 256) -> Callable[[Any], Tensor]:
    """ImageNet preprocessing: resize the short side to ``resize``, center-crop ``size``, normalize."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _tv_weights_fields(weights: Any) -> Dict[str, Any]:
    """transform / mean / std / input_size / categories from a torchvision weights enum member."""
    tf = weights.transforms()
    crop = getattr(tf, "crop_size", None) or getattr(tf, "resize_size", None) or [224]  # segmentation: resize only
    crop = tuple(crop) if isinstance(crop, (list, tuple)) else (crop,)
    hw = (int(crop[0]), int(crop[-1]))
    cats = weights.meta.get("categories")
    return {
        "transform": tf,
        "mean": tuple(float(v) for v in getattr(tf, "mean", IMAGENET_MEAN)),
        "std": tuple(float(v) for v in getattr(tf, "std", IMAGENET_STD)),
        "input_size": hw,
        "categories": tuple(cats) if cats else None,
    }


def _timm_fields(model: nn.Module) -> Dict[str, Any]:
    import timm.data

    cfg = dict(timm.data.resolve_data_config({}, model=model))
    fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if fixed is not None and not getattr(model.patch_embed, "dynamic_img_pad", False) \
            and not getattr(model, "dynamic_img_size", False) and tuple(fixed) != tuple(cfg["input_size"][1:]):
        cfg["input_size"] = (3, int(fixed[0]), int(fixed[1]))  # the size the model was built for
    tf = timm.data.create_transform(**cfg)
    num_classes = getattr(model, "num_classes", None)
    return {
        "transform": tf,
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
        "input_size": (int(cfg["input_size"][1]), int(cfg["input_size"][2])),
        "categories": imagenet_categories() if num_classes == 1000 else None,
    }


def imagenet_categories() -> Tuple[str, ...]:
    """The 1000 ImageNet-1k class names (from torchvision's weights metadata, no download)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


# --------------------------------------------------------------------------- families

def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


def _timm_vit(model: nn.Module) -> Optional[Preset]:
    blocks = getattr(model, "blocks", None)
    pe = getattr(model, "patch_embed", None)
    if not isinstance(blocks, nn.Sequential) or pe is None or not hasattr(model, "num_prefix_tokens"):
        return None
    n = len(blocks)
    norm = "norm1" if hasattr(blocks[-1], "norm1") else None
    names = tuple(f"blocks.{i}" + (f".{norm}" if norm else "") for i in range(max(0, n - 3), n))
    grid = tuple(pe.grid_size) if getattr(pe, "grid_size", None) is not None else (0, 0)
    return Preset(
        family="timm-vit",
        layers=names,
        gradcam_layer=names[-1],
        reshape=TokenReshape(int(model.num_prefix_tokens), grid),
        **_timm_fields(model),
    )


def _timm_convnet(model: nn.Module) -> Preset:
    info = getattr(model, "feature_info", None)
    mods = _modules(model)
    if not info:
        raise InputError(f"timm model {type(model).__name__} has no feature_info; pass layers=... (see `camkit layers`)")
    stages = [d["module"] for d in info if d.get("module") in mods]
    if not stages:
        raise InputError(f"timm model {type(model).__name__}: feature_info names no module of the model")
    layers = tuple(stages[-3:])
    fields = _timm_fields(model)
    h, w = fields["input_size"]
    # The module whose output is exactly forward_features(x): the pooling's input.
    nhwc = str(getattr(model, "output_fmt", "NCHW")).upper() == "NHWC"  # e.g. Swin
    # a half-size dry run is cheaper; models with a fixed input size need theirs
    for size in ((max(64, h // 2), max(64, w // 2)), (h, w)):
        try:
            got, feats = dry_run(model, dry_run_input(model, size), run=model.forward_features)
            break
        except Exception:
            if size == (h, w):
                raise
    raw_feats = feats
    if nhwc:
        feats = feats.permute(0, 3, 1, 2)
        got = {n: (o.permute(0, 3, 1, 2) if o.dim() == 4 else o) for n, o in got.items()}
    last = None
    for n, o in got.items():  # in the order the modules finished
        if o.shape == feats.shape and torch.equal(o, feats):
            last = n
    if feats.dim() != 4:
        raise InputError(
            f"camkit has no preset for timm model {type(model).__name__}: its features have shape "
            f"{tuple(raw_feats.shape)}, not (B, C, h, w); pass layers=[...] and a reshape=... yourself"
        )
    cam_layer = fc_name = None
    if last is not None:
        clf = model.get_classifier() if hasattr(model, "get_classifier") else None
        fc_name = next((n for n, m in mods.items() if m is clf), None)
        if fc_name is not None and isinstance(clf, nn.Linear):
            _, logits = dry_run(model, raw_feats, names=[], run=model.forward_head)
            if _gap_linear(feats, logits, clf):
                cam_layer = last
        if cam_layer is None:
            fc_name = None
    return Preset(
        family="timm",
        reshape=nhwc_to_nchw if nhwc else None,
        layers=layers,
        gradcam_layer=last if last is not None else layers[-1],
        cam_layer=cam_layer,
        fc=fc_name,
        cam_reshape=nhwc_to_nchw if (nhwc and cam_layer is not None) else None,
        **fields,
    )


def _tv_vit(model: nn.Module) -> Preset:
    layers_mod = model.encoder.layers
    n = len(layers_mod)
    names = tuple(f"encoder.layers.{k}.ln_1" for k, _ in list(layers_mod.named_children())[max(0, n - 3):])
    side = model.image_size // model.patch_size
    return Preset(
        family="torchvision-vit",
        layers=names,
        gradcam_layer=names[-1],
        reshape=TokenReshape(1, (side, side)),
        transform=imagenet_transform(model.image_size, int(model.image_size * 256 / 224)),
        input_size=(model.image_size, model.image_size),
    )


def _tv_features_family(model: nn.Module, family: str) -> Preset:
    feats: nn.Sequential = model.features
    children = _children(feats, "features.")
    last = children[-1]
    fc = None
    if family in ("efficientnet", "mobilenet", "densenet"):
        clf = model.classifier
        if isinstance(clf, nn.Linear):
            fc = "classifier"
        elif isinstance(clf, nn.Sequential):
            lin = [i for i, m in enumerate(clf) if not isinstance(m, nn.Dropout)]
            if len(lin) == 1 and isinstance(clf[lin[0]], nn.Linear):
                fc = f"classifier.{lin[0]}"
    kept, logits = _dry(model, children)
    layers = _stage_ends(kept, children)
    layer_sets: Dict[str, Tuple[str, ...]] = {"default": layers}
    gradcam = layers[-1]
    cam_layer = cam_reshape = None
    if family == "vgg":
        layer_sets = _vgg_sets(feats, "features.")
        layers = layer_sets["pools"]
        gradcam = layer_sets["convs"][-1]
    elif fc is not None:
        cam_reshape = relu if family == "densenet" else None
        if _gap_linear(kept[last], logits, _modules(model)[fc], cam_reshape):
            cam_layer = last
        else:
            fc = cam_reshape = None
    return Preset(family=family, layers=layers, gradcam_layer=gradcam, cam_layer=cam_layer, fc=fc,
                  cam_reshape=cam_reshape, layer_sets=layer_sets, transform=imagenet_transform())


def _vgg_sets(feats: nn.Sequential, prefix: str) -> Dict[str, Tuple[str, ...]]:
    """VGG-style features: the last three max-pool outputs and the ReLU before each."""
    pools = [i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)]
    relus = [max(j for j in range(p) if isinstance(feats[j], nn.ReLU)) for p in pools]
    return {"pools": tuple(f"{prefix}{p}" for p in pools[-3:]),
            "convs": tuple(f"{prefix}{r}" for r in relus[-3:])}


def _tv_swin(model: nn.Module) -> Preset:
    """torchvision Swin: its stages and ``norm`` return channels-last ``(B, h, w, C)`` maps, read through
    :func:`nhwc_to_nchw`; the pooling sees ``norm``'s output, so that is Grad-CAM's and CAM's layer."""
    children = _children(model.features, "features.")
    kept, logits = _dry(model, children + ["norm"])
    nchw = {n: nhwc_to_nchw(o) for n, o in kept.items() if o.dim() == 4}
    layers = _stage_ends(nchw, children)
    ok = _gap_linear(kept["norm"], logits, model.head, nhwc_to_nchw)
    return Preset(family="torchvision-swin", layers=layers, gradcam_layer="norm", cam_layer="norm" if ok else None,
                  fc="head" if ok else None, cam_reshape=nhwc_to_nchw if ok else None, reshape=nhwc_to_nchw,
                  layer_sets={"default": layers}, transform=imagenet_transform())


def _tv_maxvit(model: nn.Module) -> Preset:
    """torchvision MaxViT: its ``blocks.*`` return ``(B, C, h, w)`` maps; LayerCAM the three coarsest block
    outputs, Grad-CAM the last block (the pooling's input). No CAM: the classifier normalizes the pooled
    features and has two linear layers (the dry run confirms ``fc(GAP(A)) != logits``). MaxViT takes the one
    input size it was built for (its attention partitions are fixed): 4 x its first attention grid."""
    grid = next(m.grid_size for m in model.modules() if hasattr(m, "partition_type"))
    size = (4 * int(grid[0]), 4 * int(grid[1]))
    children = _children(model.blocks, "blocks.")
    kept, logits = dry_run(model, dry_run_input(model, size), names=children)
    layers = _stage_ends(kept, children)
    fc = model.classifier[-1]
    ok = isinstance(fc, nn.Linear) and _gap_linear(kept[children[-1]], logits, fc)
    return Preset(family="torchvision-maxvit", layers=layers, gradcam_layer=children[-1],
                  cam_layer=children[-1] if ok else None, fc=f"classifier.{len(model.classifier) - 1}" if ok else None,
                  layer_sets={"default": layers}, input_size=size,
                  transform=imagenet_transform(size[0], int(size[0] * 256 / 224)))


def _tv_resnet(model: nn.Module) -> Preset:
    layers = ("layer2", "layer3", "layer4")
    kept, logits = _dry(model, ["layer4"])
    ok = _gap_linear(kept["layer4"], logits, model.fc)
    return Preset(family="resnet", layers=layers, gradcam_layer="layer4",
                  cam_layer="layer4" if ok else None, fc="fc" if ok else None,
                  layer_sets={"default": layers}, transform=imagenet_transform())


def _tv_segmentation(model: nn.Module) -> Preset:
    """torchvision FCN / DeepLabV3 / LR-ASPP: the backbone's stages; scores are ``output["out"]``
    ``(B, num_classes, H, W)``, one score map per class."""
    backbone = model.backbone
    if hasattr(backbone, "layer4"):  # ResNet backbone
        layers: Tuple[str, ...] = ("backbone.layer2", "backbone.layer3", "backbone.layer4")
    else:  # MobileNetV3 features
        children = _children(backbone, "backbone.")
        layers = _stage_ends(_dry(model, children)[0], children)
    from torchvision.models.segmentation import FCN_ResNet50_Weights

    # Every torchvision segmentation weight has the same preprocessing (resize the
    # short side to 520, ImageNet mean / std); its class names come with weights only.
    fields = _tv_weights_fields(FCN_ResNet50_Weights.DEFAULT)
    convs = [m for m in model.classifier.modules() if isinstance(m, nn.Conv2d)]
    fields["categories"] = tuple(f"class {k}" for k in range(convs[-1].out_channels)) if convs else None
    return Preset(family="tv-segmentation", layers=layers, gradcam_layer=layers[-1],
                  layer_sets={"default": layers}, task="segmentation", output="out", **fields)


def _cam_model(model: nn.Module) -> Preset:
    backbone = model.backbone
    inner: Optional[nn.Sequential] = None
    prefix = "backbone."
    if isinstance(backbone, nn.Sequential) and len(backbone) and isinstance(backbone[0], nn.Sequential):
        inner, prefix = backbone[0], "backbone.0."
    elif isinstance(getattr(backbone, "features", None), nn.Sequential):
        inner, prefix = backbone.features, "backbone.features."
    elif isinstance(backbone, nn.Sequential):
        inner = backbone
    back: Tuple[str, ...] = ()
    if inner is not None:
        if len(inner) > 2 and sum(isinstance(m, nn.MaxPool2d) for m in inner) >= 3:
            back = _vgg_sets(inner, prefix)["pools"][:-1]  # VGG: pool3, pool4 (pool5 feeds the head)
        else:
            children = _children(inner, prefix)
            try:
                back = _stage_ends(_dry(model, children)[0], children)[:-1]
            except Exception:  # a backbone that does not take a 64x64 image
                back = ()
    layers = back + ("head.relu",)
    return Preset(family="cammodel", layers=layers, gradcam_layer="head.relu", cam_layer="head.relu",
                  fc="head.fc", layer_sets={"default": layers, "head": ("head.relu",)},
                  transform=imagenet_transform(), head_type=type(model.head))


def resolve(model: nn.Module, weights: Any = None) -> Preset:
    """The preset for ``model``, found from its class and structure.

    ``weights``: optional torchvision weights enum member (e.g.
    ``VGG16_Weights.IMAGENET1K_V1``) whose transforms and class names the
    preset then carries. timm models carry theirs in ``pretrained_cfg``.
    The model is left exactly as found (dry runs: :func:`camkit.hooks.dry_run`;
    a model with uninitialized lazy modules is dry-run as a copy).
    Raises InputError (:class:`NoPresetError`) for a model of no known family without a spatial layer;
    warns (:class:`~camkit.adapters.autolayer.AutoLayerWarning`) when it chose the automatic layer.
    """
    with dry_model(model) as probe:
        preset = _family_preset(probe)
    if weights is not None:
        preset = preset.with_weights(weights)
    # ViTs take one size; the automatic layer's dry run found a size the model takes
    probe_size = preset.input_size if preset.family.endswith("vit") or preset.family == "auto" else (64, 64)
    if preset.categories is None and preset.task == "classification" and not _is_timm(model) \
            and not is_transformers(model) \
            and num_classes(model, probe_size, preset.output) == 1000:
        preset = replace(preset, categories=imagenet_categories())
    return preset


def _family_preset(model: nn.Module) -> Preset:
    import torchvision.models as tvm
    from torchvision.models import segmentation as tvs

    from camkit.heads import CAMModel

    if isinstance(model, CAMModel):
        return _cam_model(model)
    if _is_timm(model):
        return _timm_vit(model) or _timm_convnet(model)
    if isinstance(model, tvm.VGG):
        return _tv_features_family(model, "vgg")
    if isinstance(model, tvm.ResNet):
        return _tv_resnet(model)
    if isinstance(model, tvm.EfficientNet):
        return _tv_features_family(model, "efficientnet")
    if isinstance(model, (tvm.MobileNetV2, tvm.MobileNetV3)):
        return _tv_features_family(model, "mobilenet")
    if isinstance(model, tvm.ConvNeXt):
        return _tv_features_family(model, "convnext")
    if isinstance(model, tvm.DenseNet):
        return _tv_features_family(model, "densenet")
    if isinstance(model, tvm.VisionTransformer):
        return _tv_vit(model)
    if isinstance(model, tvm.SwinTransformer):
        return _tv_swin(model)
    if isinstance(model, tvm.MaxVit):
        return _tv_maxvit(model)
    if isinstance(model, (tvs.FCN, tvs.DeepLabV3, tvs.LRASPP)):
        return _tv_segmentation(model)
    if is_detector(model):
        return Preset(**detection_fields(model))  # adapters/detection.py
    if is_video_model(model):
        return Preset(**video_fields(model))  # adapters/video.py
    hf = transformers_fields(model) if is_transformers(model) else None  # adapters/transformers_hf.py
    if hf is not None:
        return Preset(**hf)
    auto, why = auto_fields(model)  # adapters/autolayer.py: the last spatial layer before global pooling
    if auto is not None:
        side = int(auto["input_size"][0])
        return Preset(transform=imagenet_transform(side, int(side * 256 / 224)), **auto)
    raise NoPresetError(
        f"camkit has no preset for {type(model).__module__}.{type(model).__name__} and no automatic layer: {why}; "
        "pass layers=[...] yourself (see model.named_modules(), or `camkit layers` for a model built by name)"
    )


def num_classes(model: nn.Module, size: Sequence[int] = (64, 64), output: Optional[Output] = None) -> int:
    """The number of classes: the second dimension of the model's (selected) output on one
    dry run (:func:`camkit.hooks.dry_run`; the model is left exactly as found).

    Args:
        model: the model.
        size: the dry run's input size (H, W).
        output: where the scores are in the model's output (as the methods' ``output=``).

    Returns:
        ``C`` of the ``(B, C, ...)`` scores.

    Raises:
        InputError: the output has no class dimension.
    """
    with dry_model(model) as probe:
        _, raw = dry_run(probe, dry_run_input(probe, size), names=[])
    scores = select_output(raw, output)
    if scores.dim() < 2:
        raise InputError(f"the model's output has shape {tuple(scores.shape)}: no class dimension (B, C, ...)")
    return int(scores.shape[1])
