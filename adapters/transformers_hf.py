"""Presets for Hugging Face ``transformers`` image classifiers (``AutoModelForImageClassification``):
ViT, DeiT (with or without the distillation head), BEiT, Swin, ConvNeXt, and models built like them.

:func:`transformers_fields` gives the :class:`camkit.adapters.Preset` fields (``presets.resolve`` builds
the preset from them), read from the model's structure and one dry run at ``config.image_size``;
``transformers`` itself is never imported here (the model brought it), so camkit works without it.

* **Output**: ``output="logits"``: the classifiers return an ``ImageClassifierOutput`` (a ``ModelOutput``);
  the scores are its ``logits`` (DeiT with teacher: the mean of the class and distillation heads, as
  transformers computes them). A model whose output has no ``logits`` (``ViTModel``, a backbone) is refused.
* **ViT, DeiT, BEiT** (a ``ModuleList`` of blocks with ``layernorm_before``): LayerCAM the
  ``layernorm_before`` of the last three blocks, Grad-CAM the last; their tokens ``(B, N, C)`` become maps
  through :class:`~camkit.adapters.layouts.TokenReshape`, which drops the prefix tokens (class, and DeiT's
  distillation token: counted in the dry run as the tokens beyond the patch grid). The last block's output
  is not used: with class-token pooling its patch tokens get no gradient. No CAM (class-token pooling;
  BEiT's mean pooling is followed by a LayerNorm).
* **Swin** (stages with ``blocks`` and ``downsample``): tokens ``(B, h*w, C)`` on one grid per stage
  (:class:`~camkit.adapters.layouts.TokenGrids`); LayerCAM the ``layernorm_after`` of each of the last
  three stages' last block (pytorch-grad-cam's Swin layer), the deepest replaced by the final
  ``layernorm``, the pooling's input, which is Grad-CAM's and CAM's layer (``classifier`` the linear layer;
  the dry run confirms ``classifier(GAP(A)) == logits``).
* **ConvNeXt** (``encoder.stages`` of ``(B, C, h, w)`` maps): LayerCAM the three coarsest stages,
  Grad-CAM the last. No CAM (a LayerNorm after the pooling; the dry run confirms it).
* **Categories**: ``config.id2label`` when its names are real (not transformers' ``LABEL_k`` placeholders).
* **Preprocessing**: resize to ``config.image_size``, mean and std 0.5 (the image processors' defaults for
  these model types); a checkpoint's own processor may differ: use :func:`processor_fields` with it.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch import Tensor, nn

from camkit.errors import InputError
from camkit.hooks import dry_run, dry_run_input
from camkit.methods import select_output

from .layouts import TokenGrids, TokenReshape, gap_linear, stage_ends

STANDARD = (0.5, 0.5, 0.5)  # transformers' IMAGENET_STANDARD_MEAN / _STD, the image processors' defaults


def is_transformers(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face ``transformers`` model (its class comes from that package)."""
    return type(model).__module__.startswith("transformers.")


def transformers_fields(model: nn.Module) -> Optional[Dict[str, Any]]:
    """The preset's fields for a transformers image classifier; None for a structure not listed above
    (the automatic layer then).

    Raises:
        InputError: the model has no classification head (no ``logits`` in its output).
    """
    base = getattr(model, str(getattr(model, "base_model_prefix", "")), model)  # a base model (ViTModel) itself
    config = getattr(model, "config", None)
    if not isinstance(base, nn.Module) or config is None:
        return None
    prefix = next(n for n, m in model.named_modules() if m is base)
    at = f"{prefix}." if prefix else ""
    size = _image_size(config)
    kind = _kind(base)
    if kind is None:
        return None
    names = kind[1](base, at)
    kept, raw = dry_run(model, dry_run_input(model, size), names=names + [_first_conv(model)])
    _check_head(model, raw)
    logits = select_output(raw, "logits")
    fields = {"vit": _vit, "swin": _swin, "convnext": _convnext}[kind[0]](model, names, kept, logits)
    mtype = str(getattr(config, "model_type", kind[0]))
    return {"family": f"{mtype}-hf", "output": "logits", "categories": _categories(config),
            "input_size": size, **_transform_fields(size, STANDARD, STANDARD), **fields}


# --------------------------------------------------------------------------- structure

def _blocks_vit(base: nn.Module, prefix: str) -> List[str]:
    name, blocks = _vit_blocks(base)
    n = len(blocks)
    return [f"{prefix}{name}.{i}.layernorm_before" for i in range(max(0, n - 3), n)]


def _vit_blocks(base: nn.Module) -> Tuple[str, nn.ModuleList]:
    """The one ModuleList of transformer blocks (``encoder.layer`` in transformers 4, ``layers`` in 5)."""
    found = [(n, m) for n, m in base.named_modules() if isinstance(m, nn.ModuleList) and len(m)
             and all(isinstance(getattr(b, "layernorm_before", None), nn.LayerNorm) for b in m)]
    return found[0]


def _stages_swin(base: nn.Module, prefix: str) -> List[str]:
    name, stages = _swin_stages(base)
    n = len(stages)
    ends = [f"{prefix}{name}.{i}.blocks.{len(stages[i].blocks) - 1}.layernorm_after" for i in range(n)]
    return ends[max(0, n - 3):-1] + [f"{prefix}layernorm"]


def _swin_stages(base: nn.Module) -> Tuple[str, nn.ModuleList]:
    return next((n, m) for n, m in base.named_modules() if isinstance(m, nn.ModuleList) and len(m)
                and all(isinstance(getattr(s, "blocks", None), nn.ModuleList) and hasattr(s, "downsample") for s in m))


def _stages_convnext(base: nn.Module, prefix: str) -> List[str]:
    stages = base.encoder.stages
    return [f"{prefix}encoder.stages.{i}" for i in range(len(stages))]


def _kind(base: nn.Module) -> Optional[Tuple[str, Callable[[nn.Module, str], List[str]]]]:
    """(``"vit"`` / ``"swin"`` / ``"convnext"``, the function naming its candidate layers), or None."""
    enc = getattr(base, "encoder", None)
    if isinstance(getattr(enc, "stages", None), nn.ModuleList) and all(
            hasattr(s, "downsampling_layer") for s in enc.stages):
        return "convnext", _stages_convnext
    if isinstance(getattr(base, "layernorm", None), nn.LayerNorm) and any(
            isinstance(getattr(s, "blocks", None), nn.ModuleList) and hasattr(s, "downsample")
            for s in base.modules()):
        return "swin", _stages_swin
    if getattr(base, "embeddings", None) is not None and any(
            isinstance(m, nn.ModuleList) and len(m) and all(hasattr(b, "layernorm_before") for b in m)
            for m in base.modules()):
        return "vit", _blocks_vit
    return None


def _first_conv(model: nn.Module) -> str:
    """The patch embedding: the first ``Conv2d`` of the model (its output is the patch grid)."""
    return next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def _image_size(config: Any) -> Tuple[int, int]:
    s = getattr(config, "image_size", 224)
    return (int(s[0]), int(s[1])) if isinstance(s, (list, tuple)) else (int(s), int(s))


def _check_head(model: nn.Module, raw: Any) -> None:
    has = hasattr(raw, "keys") and "logits" in raw.keys()
    if not has:
        got = list(raw.keys()) if hasattr(raw, "keys") else type(raw).__name__
        raise InputError(f"the transformers model {type(model).__name__} has no classification head: its output "
                         f"({got}) has no logits. Load it with AutoModelForImageClassification (e.g. "
                         f"ViTForImageClassification), or pass layers=[...] and output=... yourself")


def _categories(config: Any) -> Optional[Tuple[str, ...]]:
    """``config.id2label``'s names in class order, unless they are transformers' ``LABEL_k`` placeholders."""
    labels = getattr(config, "id2label", None) or {}
    n = int(getattr(config, "num_labels", len(labels)) or 0)
    names = [labels.get(k, labels.get(str(k))) for k in range(n)]
    if not n or any(v is None for v in names) or all(re.fullmatch(r"LABEL_\d+", str(v)) for v in names):
        return None
    return tuple(str(v) for v in names)


# --------------------------------------------------------------------------- families

def _vit(model: nn.Module, names: Sequence[str], kept: Dict[str, Tensor], logits: Tensor) -> Dict[str, Any]:
    grid = kept[_first_conv(model)].shape[-2:]
    tokens = int(kept[names[-1]].shape[1])
    prefix = tokens - int(grid[0]) * int(grid[1])
    return {"layers": tuple(names), "gradcam_layer": names[-1],
            "reshape": TokenReshape(prefix, (int(grid[0]), int(grid[1])))}


def _swin(model: nn.Module, names: Sequence[str], kept: Dict[str, Tensor], logits: Tensor) -> Dict[str, Any]:
    gh, gw = (int(s) for s in kept[_first_conv(model)].shape[-2:])
    grids = [(gh, gw)]
    for _ in range(len(_swin_stages(getattr(model, model.base_model_prefix))[1]) - 1):
        gh, gw = (gh + 1) // 2, (gw + 1) // 2  # patch merging pads an odd grid
        grids.append((gh, gw))
    reshape = TokenGrids(0, grids)
    fc = getattr(model, "classifier", None)
    ok = isinstance(fc, nn.Linear) and gap_linear(kept[names[-1]], logits, fc, reshape)
    return {"layers": tuple(names), "gradcam_layer": names[-1], "reshape": reshape,
            "cam_layer": names[-1] if ok else None, "fc": "classifier" if ok else None,
            "cam_reshape": reshape if ok else None, "layer_sets": {"default": tuple(names)}}


def _convnext(model: nn.Module, names: Sequence[str], kept: Dict[str, Tensor], logits: Tensor) -> Dict[str, Any]:
    layers = stage_ends(kept, names)
    fc = getattr(model, "classifier", None)
    ok = isinstance(fc, nn.Linear) and gap_linear(kept[names[-1]], logits, fc)
    return {"layers": layers, "gradcam_layer": names[-1], "cam_layer": names[-1] if ok else None,
            "fc": "classifier" if ok else None, "layer_sets": {"default": layers}}


# --------------------------------------------------------------------------- preprocessing

def _transform_fields(size: Tuple[int, int], mean: Sequence[float], std: Sequence[float],
                      crop: Optional[Tuple[int, int]] = None, interpolation: int = 2) -> Dict[str, Any]:
    """transform / mean / std: resize to ``size`` (then center-crop ``crop``), scale to [0, 1], normalize.
    ``interpolation``: a PIL resampling code (2 bilinear, 3 bicubic), as the image processors name it."""
    from torchvision import transforms as T

    mode = {0: T.InterpolationMode.NEAREST, 2: T.InterpolationMode.BILINEAR,
            3: T.InterpolationMode.BICUBIC}.get(int(interpolation), T.InterpolationMode.BILINEAR)
    steps = [T.Resize(size, interpolation=mode)] + ([T.CenterCrop(crop)] if crop else [])
    tf = T.Compose(steps + [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])
    return {"transform": tf, "mean": tuple(float(v) for v in mean), "std": tuple(float(v) for v in std)}


def processor_fields(processor: Any) -> Dict[str, Any]:
    """``transform``, ``mean``, ``std`` and ``input_size`` from a transformers image processor (e.g.
    ``AutoImageProcessor.from_pretrained(name)``): its ``image_mean`` / ``image_std``, its ``size``
    (``height`` / ``width``, or ``shortest_edge``), ``crop_size`` when ``do_center_crop``, its ``resample``.
    Use as ``dataclasses.replace(preset, **processor_fields(processor))``.

    Raises:
        InputError: the processor has no ``image_mean`` / ``image_std`` / ``size``.
    """
    try:
        mean, std, size = processor.image_mean, processor.image_std, dict(processor.size)
    except (AttributeError, TypeError) as e:
        raise InputError(f"{type(processor).__name__} is not an image processor with image_mean, image_std and "
                         f"size: {e}") from None
    if size.get("height") and size.get("width"):
        resize: Any = (int(size["height"]), int(size["width"]))
    elif size.get("shortest_edge"):  # ConvNeXt's processor: below 384, the short side to edge / crop_pct, crop
        edge = int(size["shortest_edge"])
        pct = getattr(processor, "crop_pct", None)
        resize = int(edge / pct) if pct and edge < 384 else (edge, edge)
    else:
        raise InputError(f"{type(processor).__name__}.size {size} names neither height / width nor shortest_edge")
    crop_size = dict(getattr(processor, "crop_size", None) or {})
    crop = None
    if getattr(processor, "do_center_crop", False) and crop_size.get("height"):
        crop = (int(crop_size["height"]), int(crop_size["width"]))
    elif isinstance(resize, int):
        crop = (int(size["shortest_edge"]),) * 2
    out = _transform_fields(resize, mean, std, crop, int(getattr(processor, "resample", 2) or 2))
    hw = crop or resize
    return {**out, "input_size": (int(hw[0]), int(hw[1]))}
