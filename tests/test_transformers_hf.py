"""Presets for Hugging Face transformers image classifiers (ViT, DeiT, BEiT, Swin, ConvNeXt), built from tiny
configs with random weights (no download): the output found, the token layouts, the default layers, the
categories, each checked against a hand autograd computation or transformers' own outputs; the bad inputs;
examples/vision_transformers.py."""
from __future__ import annotations

import functools
import runpy
from pathlib import Path

import pytest
import torch
from model_state import assert_as_found, mixed, snapshot

import camkit
from camkit import adapters
from camkit.errors import InputError
from camkit.methods import METHODS, select_output

pytestmark = pytest.mark.slow  # transformers' model classes take ~3.5 s to import: outside the default 100 s run


class _Transformers:
    """``transformers``, imported on first use (in a test, so a missing package skips it; never at collection)."""

    def __getattr__(self, name: str):
        return getattr(pytest.importorskip("transformers"), name)


tr = _Transformers()
# The model classes at import (collection): transformers' modeling machinery costs ~1-3 s to import once,
# which is the file's, not one test's.
from transformers import (  # noqa: E402
    BeitConfig,
    BeitForImageClassification,
    ConvNextConfig,
    ConvNextForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    ResNetConfig,
    ResNetForImageClassification,
    SwinConfig,
    SwinForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
)

SIZE = 32
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
VIT_KW = dict(image_size=SIZE, patch_size=8, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
              intermediate_size=32, num_labels=5)


@functools.cache
def _hf(kind: str) -> torch.nn.Module:
    """One tiny random model per kind, float64 (exact comparisons), eval mode; tests only read them."""
    torch.manual_seed(0)
    if kind == "vit":
        m = ViTForImageClassification(ViTConfig(**VIT_KW))
    elif kind == "deit":  # class and distillation tokens, two heads
        m = DeiTForImageClassificationWithTeacher(DeiTConfig(**VIT_KW))
    elif kind == "beit":
        m = BeitForImageClassification(BeitConfig(**VIT_KW))
    elif kind == "swin":
        m = SwinForImageClassification(SwinConfig(image_size=SIZE, patch_size=2, embed_dim=8, depths=[1, 1, 1],
                                                         num_heads=[1, 1, 1], window_size=4, num_labels=5))
    else:
        m = ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                                                num_labels=5, image_size=SIZE))
    return m.double().eval()


def _x(b: int = 2, h: int = SIZE, w: int = SIZE) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _tokens_and_grads(model, layer: str, x: torch.Tensor, cls: torch.Tensor):
    """Plain autograd: the named layer's output and d logits[b, cls[b]] / d output."""
    got = {}
    h = model.get_submodule(layer).register_forward_hook(lambda m, i, o: got.setdefault("a", o))
    try:
        logits = model(pixel_values=x).logits
    finally:
        h.remove()
    (g,) = torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), got["a"])
    return got["a"].detach(), g, logits.detach()


def _grid(t: torch.Tensor, prefix: int, side: int) -> torch.Tensor:
    """Tokens (B, N, C) -> (B, C, side, side) by hand: drop the prefix tokens, row-major patches."""
    p = t[:, prefix:, :]
    return torch.stack([p[:, r * side:(r + 1) * side, :] for r in range(side)], dim=1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("kind,prefix", [("vit", 1), ("deit", 2)])
def test_gradcam_on_a_vit_equals_hand_autograd_on_the_reshaped_tokens(kind, prefix):
    model, x = _hf(kind), _x()
    preset = adapters.resolve(model)
    layer = preset.gradcam_layer
    assert layer.endswith(".layernorm_before") and preset.reshape.num_prefix_tokens == prefix
    res = METHODS["gradcam"](model, **preset.method_kwargs("gradcam"))(x)
    a, g, logits = _tokens_and_grads(model, layer, x, logits_top := model(pixel_values=x).logits.argmax(1))
    A, G = _grid(a, prefix, 4), _grid(g, prefix, 4)  # 32 px / patch 8: a 4 x 4 grid
    hand = torch.relu((G.mean(dim=(2, 3), keepdim=True) * A).sum(1))
    torch.testing.assert_close(res.layer_maps[layer][:, 0], hand, rtol=1e-9, atol=1e-12)
    assert torch.equal(res.targets[:, 0], logits_top) and float(hand.amax()) > 0
    torch.testing.assert_close(res.logits, logits)


def test_the_output_selected_is_the_logits_transformers_computes():
    """``output="logits"`` is found without the user saying so; for DeiT with teacher it is the mean of
    the class and distillation heads (transformers' definition, recomputed here from the two heads)."""
    x = _x()
    for kind in ("vit", "deit", "beit", "swin", "convnext"):
        model = _hf(kind)
        preset = adapters.resolve(model)
        raw = model(pixel_values=x)
        assert preset.output == "logits" and preset.task == "classification"
        assert torch.equal(select_output(raw, preset.output), raw.logits), kind
    raw = _hf("deit")(pixel_values=x)
    torch.testing.assert_close(select_output(raw, "logits"), (raw.cls_logits + raw.distillation_logits) / 2)


def test_swin_token_grids_match_transformers_own_maps_and_cam_is_exact():
    """Each stage's tokens, laid out by the preset's reshape, equal transformers' ``reshaped_hidden_states``;
    CAM on the final layernorm equals the classifier's weights applied per position (hand)."""
    model, x = _hf("swin"), _x()
    preset = adapters.resolve(model)
    out = model(pixel_values=x, output_hidden_states=True)
    for tokens, maps in zip(out.hidden_states, out.reshaped_hidden_states):
        assert torch.equal(preset.reshape(tokens), maps)
    assert preset.layers[-1] == preset.gradcam_layer == preset.cam_layer == "swin.layernorm"
    assert preset.fc == "classifier" and all(n.endswith("layernorm_after") for n in preset.layers[:-1])
    res = METHODS["cam"](model, **preset.method_kwargs("cam"))(x)
    a = {}
    h = model.swin.layernorm.register_forward_hook(lambda m, i, o: a.setdefault("t", o.detach()))
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    h.remove()
    A = a["t"].transpose(1, 2).reshape(2, -1, 4, 4)  # 32 / patch 2 = 16, two mergings: 4 x 4
    W = model.classifier.weight[logits.argmax(1)]
    hand = torch.einsum("bc,bchw->bhw", W.detach(), A)  # CAM's raw map: sum_k w_ck A_k (no ReLU)
    torch.testing.assert_close(res.layer_maps["swin.layernorm"][:, 0], hand, rtol=1e-9, atol=1e-12)
    for method in ("gradcam", "layercam"):
        r = METHODS[method](model, **preset.method_kwargs(method))(x, topk=2)
        assert r.maps.shape == (2, 2, SIZE, SIZE) and bool(torch.isfinite(r.maps).all())


def test_convnext_and_beit_layers():
    """ConvNeXt: the stage outputs are transformers' hidden states (no reshape), no CAM (a LayerNorm after
    the pooling: the classifier on the pooled last stage does not give the logits). BEiT: one class token."""
    model, x = _hf("convnext"), _x()
    preset = adapters.resolve(model)
    out = model(pixel_values=x, output_hidden_states=True)
    assert preset.layers == tuple(f"convnext.encoder.stages.{i}" for i in (1, 2, 3)) and preset.reshape is None
    assert preset.cam_layer is None and "cam" not in preset.methods
    pooled = out.hidden_states[-1].mean(dim=(2, 3))
    assert not torch.allclose(model.classifier(pooled), out.logits)
    res = METHODS["layercam"](model, **preset.method_kwargs("layercam"))(x)
    for name, hs in zip(preset.layers, out.hidden_states[2:]):
        assert res.layer_maps[name].shape[-2:] == hs.shape[-2:]
    beit = adapters.resolve(_hf("beit"))
    assert beit.reshape.num_prefix_tokens == 1 and beit.cam_layer is None and "legrad" not in beit.methods


def test_categories_from_id2label_only_when_they_are_names():
    assert adapters.resolve(_hf("vit")).categories is None  # LABEL_0 ... placeholders
    torch.manual_seed(0)
    names = ["cat", "dog", "fox"]
    cfg = ViTConfig(**{**VIT_KW, "num_labels": 3}, id2label=dict(enumerate(names)))
    model = ViTForImageClassification(cfg).eval()
    assert adapters.resolve(model).categories == tuple(names)


def test_resolve_leaves_the_model_as_found():
    torch.manual_seed(0)
    model = mixed(SwinForImageClassification(SwinConfig(image_size=SIZE, patch_size=2, embed_dim=8,
                  depths=[1, 1], num_heads=[1, 1], window_size=4, num_labels=5)), "swin.encoder")
    before = snapshot(model)
    adapters.resolve(model)
    assert_as_found(model, before)


def test_a_transformers_model_of_another_structure_gets_the_automatic_layer():
    """HF's ResNet has no preset: the automatic layer (its last stage, the last module returning a map;
    ``resnet.encoder`` returns a ModelOutput), with ``output="logits"`` found, and CAM with ``classifier.1``."""
    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                      num_labels=5)).double().eval()
    with pytest.warns(adapters.AutoLayerWarning, match="'resnet.encoder.stages.1'"):
        preset = adapters.resolve(model)
    assert (preset.family, preset.layers, preset.output, preset.fc) == (
        "auto", ("resnet.encoder.stages.1",), "logits", "classifier.1")
    x = _x()
    res = METHODS["cam"](model, **preset.method_kwargs("cam"))(x)
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        hand = torch.einsum("bc,bchw->bhw", model.classifier[1].weight[out.logits.argmax(1)], out.hidden_states[-1])
    torch.testing.assert_close(res.layer_maps["resnet.encoder.stages.1"][:, 0], hand, rtol=1e-9, atol=1e-12)


def test_bad_input_is_one_clear_error():
    torch.manual_seed(0)
    backbone = ViTModel(ViTConfig(**VIT_KW)).eval()  # no classification head
    with pytest.raises(InputError, match="ViTModel has no classification head.*logits.*AutoModelForImageClassification"):
        adapters.resolve(backbone)
    vit = _hf("vit")  # transformers' own refusal of another size, as one InputError naming the shape
    with pytest.raises(InputError, match=r"model failed on the input of shape \(1, 3, 48, 48\).*Input image size"):
        METHODS["gradcam"](vit, **adapters.resolve(vit).method_kwargs("gradcam"))(_x(1, 48, 48))
    model = _hf("swin")  # Swin takes other sizes, but 32 x 48 tokens fit no grid of the 32 x 32 layout
    preset = adapters.resolve(model)
    with pytest.raises(InputError, match="fit neither the patch grid 16x16 or 8x8 or 4x4 nor a square grid"):
        METHODS["gradcam"](model, **preset.method_kwargs("gradcam"))(_x(1, 32, 48))


def test_processor_fields_follow_the_image_processor():
    """A checkpoint's image processor (here one built offline with ImageNet statistics) gives the transform:
    the same tensor as the processor's own output on a photo."""
    from PIL import Image

    proc = ViTImageProcessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                                size={"height": 32, "width": 32})
    fields = adapters.transformers_hf.processor_fields(proc)
    img = Image.fromarray((torch.rand(40, 52, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    ours = fields["transform"](img)
    theirs = proc(images=img, return_tensors="pt")["pixel_values"][0]
    assert fields["input_size"] == (32, 32) and fields["mean"] == (0.485, 0.456, 0.406)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), atol=2e-2, rtol=0)
    with pytest.raises(InputError, match="not an image processor"):
        adapters.transformers_hf.processor_fields(object())


def test_example_runs_on_tiny_random_models(capsys):
    got = runpy.run_path(str(EXAMPLES / "vision_transformers.py"))["main"]()
    for name, maps in got.items():
        assert maps.shape[-2:] == (SIZE, SIZE) and bool(torch.isfinite(maps).all()), name
    assert "layer" in capsys.readouterr().out
    assert camkit.adapters.transformers_hf.is_transformers(_hf("vit"))
