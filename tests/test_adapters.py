"""Presets for torchvision and timm models (random weights, no downloads)."""
from __future__ import annotations

import functools
import urllib.error

import pytest
import torch
import torchvision.models as tvm
from model_state import assert_as_found, mixed, snapshot
from torch import nn

import camkit
from camkit.adapters import ModelError, Preset, TokenReshape, build, default_marks, list_layers, resolve
from camkit.methods import METHODS, registered

timm = pytest.importorskip("timm")
from timm.models.deit import VisionTransformerDistilled  # noqa: E402
from timm.models.swin_transformer import SwinTransformer  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

SIZE = 64
NUM_CLASSES = 10


def _x(seed: int = 0, size: int = SIZE) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


@functools.cache
def _tv(name: str) -> nn.Module:
    """One random-weight instance per family for the whole module (tests only read them)."""
    torch.manual_seed(0)
    return tvm.get_model(name, weights=None, num_classes=NUM_CLASSES).eval()


def _vit_reg() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(img_size=SIZE, patch_size=16, embed_dim=32, depth=3, num_heads=2,
                             num_classes=NUM_CLASSES, reg_tokens=4).eval()


def _deit_distilled() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformerDistilled(img_size=SIZE, patch_size=16, embed_dim=32, depth=3, num_heads=2,
                                      num_classes=NUM_CLASSES).eval()


def _swin() -> nn.Module:
    torch.manual_seed(0)
    return SwinTransformer(img_size=SIZE, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1, 1),
                           num_heads=(1, 1, 1), num_classes=NUM_CLASSES).eval()


FACTORIES = {
    "vgg16": lambda: _tv("vgg16"),
    "resnet18": lambda: _tv("resnet18"),
    "resnet50": lambda: _tv("resnet50"),
    "efficientnet_b0": lambda: _tv("efficientnet_b0"),
    "mobilenet_v3_small": lambda: _tv("mobilenet_v3_small"),
    "convnext_tiny": lambda: _tv("convnext_tiny"),
    "densenet121": lambda: _tv("densenet121"),
    "timm_resnet18": lambda: timm.create_model("resnet18", num_classes=NUM_CLASSES).eval(),
    "timm_lite0": lambda: timm.create_model("tf_efficientnet_lite0", num_classes=NUM_CLASSES).eval(),
    "timm_vit_reg4": _vit_reg,
    "timm_deit_distilled": _deit_distilled,
    "timm_swin": _swin,  # channels-last (B, H, W, C) stage outputs
}

# Which families have a GAP + linear head that CAM can use.
HAS_CAM = {
    "vgg16": False,  # fully connected classifier
    "resnet18": True,
    "resnet50": True,
    "efficientnet_b0": True,
    "mobilenet_v3_small": False,  # two linear layers
    "convnext_tiny": False,  # LayerNorm after pooling
    "densenet121": True,
    "timm_resnet18": True,
    "timm_lite0": True,
    "timm_vit_reg4": False,
    "timm_deit_distilled": False,
    "timm_swin": True,
}


def _cli_methods(*kinds: str) -> tuple:
    """The command line's methods of the given registered layer kinds, in registry order."""
    return tuple(i.name for i in registered() if i.cli and i.layers in kinds)


def _expected_methods(has_cam: bool, vit: bool = False) -> tuple:
    """Every method with a default on a model: all but the head methods, CAM only with a GAP + linear head,
    the attention methods (LeGrad) only on vision transformers."""
    return tuple(i.name for i in registered() if i.cli and (i.layers in ("last", "stages", "biases", "input")
                                                           or (i.layers == "cam" and has_cam))
                 and (vit or not getattr(i.cls, "needs_attention", False)))


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def model_and_preset(request):
    model = FACTORIES[request.param]()
    return request.param, model, resolve(model)


def test_every_default_method_runs(model_and_preset):
    name, model, preset = model_and_preset
    assert preset.methods == _expected_methods(HAS_CAM[name], vit=name in ("timm_vit_reg4", "timm_deit_distilled"))
    x = _x()
    for method in [m for m in ("cam", "gradcam", "gradcampp", "layercam") if m in preset.methods]:
        kwargs = preset.method_kwargs(method)
        res = METHODS[method](model, **kwargs)(x, topk=2)
        assert res.maps.shape == (2, 2, SIZE, SIZE), (name, method)
        assert torch.isfinite(res.maps).all()
        assert res.maps.min() >= 0 and res.maps.max() <= 1
        # a random-weight model still gives a non-constant map for some target
        assert (res.maps.amax(dim=(-2, -1)) > 0).any(), (name, method)
        assert torch.equal(res.targets, res.logits.topk(2, dim=1).indices)
        assert list(res.layer_maps) == list(preset.default_layers(method))
        for lm in res.layer_maps.values():
            assert lm.shape[:2] == (2, 2) and lm.dim() == 4


def test_cam_layer_is_exactly_what_the_pooling_sees(model_and_preset):
    """fc(GAP(cam_reshape(A))) == logits for the preset's CAM layer; no CAM layer otherwise."""
    name, model, preset = model_and_preset
    if preset.cam_layer is None:
        assert preset.fc is None
        with pytest.raises(ValueError, match="global average pooling"):
            preset.method_kwargs("cam")
        return
    mods = dict(model.named_modules())
    got = {}
    h = mods[preset.cam_layer].register_forward_hook(lambda m, i, o: got.__setitem__("a", o.clone()))
    with torch.no_grad():
        logits = model(_x(1))
    h.remove()
    a = got["a"]
    if preset.cam_reshape is None:
        assert a.dim() == 4 and a.shape[1] == mods[preset.fc].in_features
    else:
        a = preset.cam_reshape(a)
    fc = mods[preset.fc]
    torch.testing.assert_close(fc(a.mean(dim=(2, 3))), logits, rtol=1e-4, atol=1e-4)


def test_vgg16_layers_are_the_study_and_paper_layers():
    model = _tv("vgg16")
    p = resolve(model)
    feats = model.features
    assert p.layers == ("features.16", "features.23", "features.30")  # pool3, pool4, pool5 outputs
    assert all(isinstance(feats[i], nn.MaxPool2d) for i in (16, 23, 30))
    assert p.layer_sets["convs"] == ("features.15", "features.22", "features.29")  # relu(conv3_3/4_3/5_3)
    assert all(isinstance(feats[i], nn.ReLU) and isinstance(feats[i - 1], nn.Conv2d) for i in (15, 22, 29))
    assert p.gradcam_layer == "features.29"
    assert p.expand_layers(["convs"]) == ["features.15", "features.22", "features.29"]
    assert p.method_kwargs("layercam", ["pools"]) == {"layers": ["features.16", "features.23", "features.30"]}


def test_family_layer_names():
    assert resolve(_tv("resnet18")).layers == ("layer2", "layer3", "layer4")
    d = resolve(_tv("densenet121"))
    assert (d.cam_layer, d.fc) == ("features.norm5", "classifier")
    assert d.cam_reshape is not None and torch.equal(d.cam_reshape(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))
    assert resolve(_tv("convnext_tiny")).layers == ("features.3", "features.5", "features.7")
    e = resolve(_tv("efficientnet_b0"))
    assert (e.cam_layer, e.fc) == ("features.8", "classifier.1")
    t = timm.create_model("tf_efficientnet_lite0", num_classes=NUM_CLASSES).eval()
    tp = resolve(t)
    assert tp.layers == tuple(d["module"] for d in t.feature_info)[-3:]
    assert (tp.cam_layer, tp.fc) == ("bn2", "classifier")  # after conv_head: what forward_head pools


@pytest.mark.parametrize("factory,prefix", [(_vit_reg, 5), (_deit_distilled, 2)])
def test_vit_prefix_tokens_dropped(factory, prefix):
    model = factory()
    assert model.num_prefix_tokens == prefix  # class + 4 registers / class + distillation
    p = resolve(model)
    assert isinstance(p.reshape, TokenReshape) and p.reshape.num_prefix_tokens == prefix
    layer = p.gradcam_layer
    x = _x(2)
    # manual reference: hook the tokens, take gradients, reshape by hand
    mods = dict(model.named_modules())
    store = {}

    def hook(m, i, o):
        o.retain_grad()
        store["t"] = o

    h = mods[layer].register_forward_hook(hook)
    logits = model(x)
    h.remove()
    top = logits.argmax(1)
    logits.gather(1, top[:, None]).sum().backward()
    t, g = store["t"].detach(), store["t"].grad
    gh, gw = model.patch_embed.grid_size

    def manual(z):
        z = z[:, prefix:, :]
        return z.reshape(z.shape[0], gh, gw, z.shape[2]).permute(0, 3, 1, 2)

    torch.testing.assert_close(p.reshape(t), manual(t))
    A, G = manual(t), manual(g)
    ref = torch.relu(torch.einsum("bc,bchw->bhw", G.mean(dim=(2, 3)), A))
    res = camkit.GradCAM(model, **p.method_kwargs("gradcam"))(x)
    torch.testing.assert_close(res.layer_maps[layer][:, 0], ref, rtol=1e-4, atol=1e-5)
    ref_lc = torch.relu((G.clamp(min=0) * A).sum(1))
    res_lc = camkit.LayerCAM(model, layers=[layer], reshape=p.reshape)(x)
    torch.testing.assert_close(res_lc.layer_maps[layer][:, 0], ref_lc, rtol=1e-4, atol=1e-5)
    # the reference can tell: keeping one prefix token (and dropping the last patch) is another layout,
    # and one prefix token too few leaves a token count that fits no grid
    kept_one = t[:, prefix - 1:-1, :]
    kept_one = kept_one.reshape(kept_one.shape[0], gh, gw, kept_one.shape[2]).permute(0, 3, 1, 2)
    assert not torch.equal(p.reshape(t), kept_one)
    with pytest.raises(ValueError, match="fit neither"):
        TokenReshape(prefix - 1, (gh, gw))(t)


def test_token_reshape_errors_and_square_fallback():
    r = TokenReshape(1, (4, 4))
    t = torch.arange(2 * 10 * 3, dtype=torch.float32).reshape(2, 10, 3)  # 9 patches: 3x3, not 4x4
    out = r(t)
    assert out.shape == (2, 3, 3, 3)
    assert torch.equal(out[1, :, 2, 1], t[1, 1 + 2 * 3 + 1])
    with pytest.raises(ValueError, match="patch tokens"):
        r(torch.zeros(1, 1 + 7, 3))
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        r(torch.zeros(3, 4))
    four_d = torch.zeros(1, 2, 3, 3)
    assert r(four_d) is four_d


def test_cammodel_preset_and_recam():
    torch.manual_seed(0)
    vgg = tvm.vgg16(weights=None)
    backbone = nn.Sequential(vgg.features, nn.AdaptiveAvgPool2d(7))
    m = camkit.CAMModel(backbone, camkit.CAMHead(512, 5)).eval()
    p = resolve(m)
    assert p.layers == ("backbone.0.16", "backbone.0.23", "head.relu")
    assert (p.cam_layer, p.fc) == ("head.relu", "head.fc")
    assert p.methods == _expected_methods(True)
    x = _x(3)
    for method in ("cam", "gradcam", "gradcampp", "layercam"):
        res = METHODS[method](m, **p.method_kwargs(method))(x)
        assert res.maps.shape == (2, 1, SIZE, SIZE) and 0 <= res.maps.min() and res.maps.max() <= 1
    m2 = camkit.CAMModel(backbone, camkit.ReCAMHead(512, 5)).eval()
    p2 = resolve(m2)
    assert "recam" in p2.methods and p2.method_kwargs("recam") == {}
    res = METHODS["recam"](m2, **p2.method_kwargs("recam"))(x)
    assert res.maps.shape == (2, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match="ReCAMHead"):
        p.method_kwargs("recam")


def test_unknown_model_class_has_no_preset():
    with pytest.raises(ValueError, match="no preset"):  # (a model with a spatial layer gets the automatic layer:
        resolve(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)))  # tests/test_autolayer.py)
    with pytest.raises(ValueError, match="unknown method"):
        resolve(_tv("resnet18")).default_layers("nosuchcam")


def test_weights_enum_gives_transform_and_categories():
    from PIL import Image

    w = tvm.ResNet18_Weights.IMAGENET1K_V1
    p = resolve(_tv("resnet18"), weights=w)
    assert p.categories is not None and len(p.categories) == 1000 and p.categories[281] == "tabby"
    assert p.input_size == (224, 224) and p.mean == pytest.approx((0.485, 0.456, 0.406))
    x = p.transform(Image.new("RGB", (300, 260), (255, 0, 0)))
    assert x.shape == (3, 224, 224)
    torch.testing.assert_close(x[:, 0, 0], (torch.tensor([1.0, 0, 0]) - torch.tensor(p.mean)) / torch.tensor(p.std))


def test_timm_preprocessing_from_pretrained_cfg():
    m = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    p = resolve(m)
    cfg = m.pretrained_cfg
    assert p.mean == tuple(cfg["mean"]) and p.std == tuple(cfg["std"]) and p.input_size == tuple(cfg["input_size"][1:])
    assert p.categories is not None and p.categories[967] == "espresso"


def test_build_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="unknown model 'resnet181'.*did you mean") as e:
        build("resnet181", "none")
    assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="not found"):
        build("resnet18", str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"weight": torch.zeros(3)}, bad)
    with pytest.raises(ModelError, match="does not fit"):
        build("resnet18", str(bad))

    # offline: the download fails -> the message names the offline model and --weights
    import torchvision.models._api as api

    def no_net(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", no_net)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(ModelError) as e:
        build("resnet18", "imagenet")
    msg = str(e.value)
    assert "download" in msg and "--model efficientnet_lite0" in msg and "--weights PATH" in msg
    assert "\n" not in msg


def test_build_with_weights_file_roundtrip(tmp_path):
    src = _tv("resnet18")
    torch.manual_seed(1)
    ref = tvm.resnet18(weights=None)
    path = tmp_path / "r18.pt"
    torch.save({"state_dict": ref.state_dict()}, path)
    model, preset = build("tv:resnet18", str(path))
    assert preset.family == "resnet" and not model.training
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k
    assert src.fc.out_features == NUM_CLASSES and model.fc.out_features == 1000
    timm_model, tp = build("timm:resnet18", "none")
    assert type(timm_model).__module__.startswith("timm.") and tp.family == "timm"


def test_list_layers_shapes_and_marks():
    model = _tv("resnet18")
    infos = {li.name: li for li in list_layers(model, (SIZE, SIZE))}
    assert infos["layer4"].shape == (1, 512, 2, 2) and infos["layer4"].type == "Sequential"
    assert infos["layer2"].shape == (1, 128, 8, 8)
    assert infos["fc"].shape == (1, NUM_CLASSES)
    assert list(infos) == [n for n, _ in model.named_modules() if n]
    marks = default_marks(resolve(model))
    cnn = lambda kinds: [m for m in kinds if m != "legrad"]  # noqa: E731 (LeGrad: vision transformers only)
    assert marks["layer4"] == cnn(_cli_methods("cam", "last", "stages"))
    assert marks["layer2"] == cnn(_cli_methods("stages"))
    vgg_marks = default_marks(resolve(_tv("vgg16")))
    assert vgg_marks["features.29"] == list(_cli_methods("last")) + ["set:convs"]


def test_preset_is_typed_and_frozen():
    p = resolve(_tv("resnet18"))
    assert isinstance(p, Preset)
    with pytest.raises(AttributeError):
        p.layers = ("x",)  # type: ignore[misc]


def test_swin_channels_last_is_permuted():
    m = _swin()
    p = resolve(m)
    assert m.output_fmt == "NHWC" and p.layers == ("layers.0", "layers.1", "layers.2")
    t = torch.randn(2, 4, 4, 16)
    assert torch.equal(p.reshape(t), t.permute(0, 3, 1, 2))
    res = camkit.LayerCAM(m, **p.method_kwargs("layercam"))(_x(4))
    assert res.layer_maps["layers.0"].shape == (2, 1, 16, 16)  # 64 / 4 patches, not the channel count


def test_token_models_without_a_preset_get_a_clear_error():
    m = timm.create_model("levit_128s", num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="no preset for timm model LevitDistilled.*reshape"):
        resolve(m)


@pytest.mark.parametrize("factory", [lambda: tvm.resnet18(num_classes=NUM_CLASSES),
                                     lambda: tvm.efficientnet_b0(num_classes=NUM_CLASSES),
                                     lambda: timm.create_model("resnet18", num_classes=NUM_CLASSES)])
def test_resolve_leaves_a_training_model_untouched(factory):
    m = factory().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    resolve(m)
    assert m.training and all(mod.training for mod in m.modules())
    for k, v in m.state_dict().items():
        assert torch.equal(before[k], v), k  # no batch-norm statistics updated by the dry runs


# --------------------------------------------------------------------------- the model as found (issue 10)

MIXED = {  # model, the submodule left in eval mode while the rest trains
    "resnet18": (lambda: tvm.resnet18(num_classes=NUM_CLASSES), "layer1"),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(num_classes=NUM_CLASSES), "features.2"),
    "timm_resnet10t": (lambda: timm.create_model("resnet10t", num_classes=NUM_CLASSES), "layer1"),
    "vgg11": (lambda: tvm.vgg11(num_classes=NUM_CLASSES, init_weights=False), "features.3"),
}


@pytest.mark.parametrize("name", sorted(MIXED))
def test_resolve_and_list_layers_leave_a_mixed_mode_model_as_found(name):
    """Per-module train/eval flags, batch-norm statistics, requires_grad, .grad, hooks and the global RNG."""
    factory, eval_child = MIXED[name]
    model = mixed(factory(), eval_child)
    before = snapshot(model)
    preset = resolve(model)
    assert_as_found(model, before)
    infos = list_layers(model, (SIZE, SIZE))
    assert_as_found(model, before)
    assert {li.name for li in infos if li.shape is not None} >= set(preset.layers)


def test_build_leaves_the_global_rng_and_the_new_model_as_built():
    """build = the constructor alone, seeded with INIT_SEED from a forked RNG: the global RNG is left
    as found, and its preset's dry runs change no batch-norm statistics."""
    from camkit.adapters.build import INIT_SEED

    torch.manual_seed(INIT_SEED)
    ref = tvm.resnet18()
    torch.manual_seed(3)
    rng = torch.get_rng_state()
    model, preset = build("tv:resnet18", "none")
    assert torch.equal(torch.get_rng_state(), rng)
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k
    assert not model.training and not any(m.training for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _one_channel_resnet(stem_last: bool = False) -> nn.Module:
    m = tvm.resnet18(num_classes=NUM_CLASSES)
    m.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    if stem_last:  # registered after everything: the first registered Conv2d is layer1.0.conv1 (64 channels)
        m._modules["conv1"] = m._modules.pop("conv1")
    return m.eval()


@pytest.mark.parametrize("factory", [_one_channel_resnet, lambda: _one_channel_resnet(stem_last=True),
                                     lambda: timm.create_model("resnet10t", in_chans=1, num_classes=NUM_CLASSES)])
def test_one_channel_models_and_a_stem_registered_last(factory):
    model = factory()
    before = snapshot(model)
    p = resolve(model)
    assert p.cam_layer is not None and p.gradcam_layer in dict(model.named_modules())
    infos = {li.name: li.shape for li in list_layers(model, (SIZE, SIZE))}
    assert infos["layer4"][:2] == (1, 512) and infos["conv1"][1] in (24, 64)  # resnet10t's deep stem: 24
    assert_as_found(model, before)


def test_list_layers_finds_the_stem_by_what_runs_first():
    class HeadFirst(nn.Module):  # registers its 16-channel head before its 1-channel stem
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(16, 4, 1)
            self.stem = nn.Conv2d(1, 16, 3, padding=1)

        def forward(self, x):
            return self.head(self.stem(x)).mean((2, 3))

    infos = {li.name: li.shape for li in list_layers(HeadFirst(), (8, 8))}
    assert infos == {"head": (1, 4, 8, 8), "stem": (1, 16, 8, 8)}


def test_lazy_model_is_dry_run_as_a_copy():
    """Uninitialized lazy modules stay uninitialized (no parameters created, no RNG drawn)."""
    model = tvm.resnet18(num_classes=NUM_CLASSES)
    model.conv1 = nn.LazyConv2d(64, 7, 2, 3, bias=False)
    model.eval()
    before = snapshot(model)
    p = resolve(model)
    assert (p.cam_layer, p.fc) == ("layer4", "fc")
    infos = {li.name: li for li in list_layers(model, (SIZE, SIZE))}
    assert infos["conv1"].type == "LazyConv2d" and infos["conv1"].shape == (1, 64, 32, 32)
    assert_as_found(model, before)
    assert model.conv1.has_uninitialized_params()


def test_weights_key_mismatch_is_summarized(tmp_path):
    path = tmp_path / "r50.pt"
    torch.save(tvm.resnet50(num_classes=3).state_dict(), path)
    with pytest.raises(ModelError) as e:
        build("tv:resnet18", str(path))
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 500, msg
    assert msg.startswith(f"{path} does not fit this model: ")
    assert "unexpected keys (layer1.0.conv3.weight, layer1.0.bn3.weight, layer1.0.bn3.bias, ... " in msg
    assert "with another shape (layer1.0.conv1.weight (64, 64, 1, 1) vs (64, 64, 3, 3), " in msg
    dp = tmp_path / "dp.pt"
    torch.save({f"module.{k}": v for k, v in tvm.resnet18().state_dict().items()}, dp)
    with pytest.raises(ModelError, match=r"122 of the model's 122 keys missing \(conv1.weight, bn1.weight, bn1.bias, "
                                         r"\.\.\. 119 more\); 122 unexpected keys .*saved from DataParallel"):
        build("tv:resnet18", str(dp))


# --------------------------------------------------------------------------- segmentation (issue 11)


@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"])
def test_segmentation_presets(name):
    model = tvm.get_model(name, weights=None, weights_backbone=None, num_classes=5).eval()
    p = resolve(model)
    assert (p.task, p.output, p.cam_layer) == ("segmentation", "out", None)
    assert p.methods == _expected_methods(False)
    assert p.categories == tuple(f"class {k}" for k in range(5))
    assert p.method_kwargs("gradcam") == {"layers": [p.gradcam_layer], "output": "out"}
    assert p.method_kwargs("layercam") == {"layers": list(p.layers), "output": "out"}
    if name == "fcn_resnet50":
        assert p.layers == ("backbone.layer2", "backbone.layer3", "backbone.layer4")
    else:  # the end of the MobileNetV3 stages at strides 4, 8 and 16 (dilated after)
        assert p.layers == ("backbone.3", "backbone.6", "backbone.16")
    shapes = {li.name: li.shape for li in list_layers(model, (SIZE, SIZE))}
    assert all(len(shapes[n]) == 4 for n in p.layers)
    assert p.gradcam_layer == p.layers[-1]
    voc = tvm.get_model_weights(name).DEFAULT
    pw = p.with_weights(voc)
    assert pw.categories[:3] == ("__background__", "aeroplane", "bicycle") and len(pw.categories) == 21
    assert pw.transform.resize_size == [520] and pw.input_size == (520, 520)


def test_build_segmentation_model_offline():
    model, p = build("tv:fcn_resnet50", "none")  # no backbone download either
    assert isinstance(model, tvm.segmentation.FCN) and not model.training
    assert (p.task, p.output, p.family) == ("segmentation", "out", "tv-segmentation")
    assert len(p.categories) == 21 and p.categories[0] == "class 0"
    assert "fcn_resnet50" in camkit.adapters.known_models()["torchvision-segmentation"]


class _ShiftedResNet(tvm.ResNet):
    """A ResNet whose logits differ from fc(GAP(layer4)): by one unit in the last place (as another
    kernel's rounding would) or by a real offset."""

    def __init__(self, shift: str) -> None:
        super().__init__(tvm.resnet.BasicBlock, [1, 1, 1, 1], num_classes=NUM_CLASSES)
        self.shift = shift

    def forward(self, x):
        out = super().forward(x)
        if self.shift == "ulp":
            return torch.nextafter(out, torch.full_like(out, float("inf")))
        return out + 0.25


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_resolve_and_list_layers_in_the_models_dtype(dtype):
    """Dry runs use the model's dtype and leave the global RNG alone; the one GAP + linear check
    (camkit.methods.gap_linear_mismatch) takes a one-ulp difference for rounding, 0.25 for another head."""
    model = _ShiftedResNet("ulp").to(dtype).eval()
    rng = torch.get_rng_state()
    p = resolve(model)
    assert (p.cam_layer, p.fc) == ("layer4", "fc")
    infos = {li.name: li.shape for li in list_layers(model, (SIZE, SIZE))}
    assert infos["layer4"] == (1, 512, 2, 2) and infos["fc"] == (1, NUM_CLASSES)
    assert torch.equal(torch.get_rng_state(), rng)
    assert resolve(_ShiftedResNet("offset").to(dtype).eval()).cam_layer is None


def test_segmentation_preset_end_to_end_against_autograd():
    """Grad-CAM and LayerCAM with the preset's layers and output="out" on a region's summed class
    score equal a hand computation: forward hooks and torch.autograd.grad of that score."""
    from camkit.targets import SegmentationRegion

    torch.manual_seed(0)
    model = tvm.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=5).eval()
    p = resolve(model)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(48, 48, dtype=torch.bool)
    mask[8:30, 10:40] = True

    acts = {}
    mods = dict(model.named_modules())
    handles = [mods[n].register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o)) for n in p.layers]
    score = (model(x)["out"][:, 3] * mask).sum(dim=(-2, -1))  # (B,)
    for h in handles:
        h.remove()
    grads = dict(zip(p.layers, torch.autograd.grad(score.sum(), [acts[n] for n in p.layers])))

    gradcam = METHODS["gradcam"](model, **p.method_kwargs("gradcam"))(x, targets=SegmentationRegion(3, mask))
    A, G = acts["backbone.layer4"].detach(), grads["backbone.layer4"]
    ref = torch.relu((G.mean(dim=(-2, -1), keepdim=True) * A).sum(1))
    torch.testing.assert_close(gradcam.layer_maps["backbone.layer4"][:, 0], ref, rtol=1e-4, atol=1e-6)
    assert gradcam.maps.shape == (2, 1, 48, 48) and gradcam.targets.tolist() == [[3], [3]]

    layercam = METHODS["layercam"](model, **p.method_kwargs("layercam"))(x, targets=SegmentationRegion(3, mask))
    for n in p.layers:
        ref = torch.relu((grads[n].clamp(min=0) * acts[n].detach()).sum(1))
        torch.testing.assert_close(layercam.layer_maps[n][:, 0], ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("entry", ["resolve", "list_layers"])
def test_dry_runs_wait_while_another_camkit_call_holds_the_model(entry):
    """Dry runs go through camkit.hooks.eval_mode, so they take turns with every other camkit call."""
    import threading

    from camkit.hooks import model_lock

    model = timm.create_model("resnet10t", num_classes=NUM_CLASSES)
    ran, errors = threading.Event(), []
    model.register_forward_pre_hook(lambda m, i: ran.set())

    def call():
        try:
            resolve(model) if entry == "resolve" else list_layers(model, (SIZE, SIZE))
        except Exception as e:  # reported below
            errors.append(e)

    with model_lock(model):
        thread = threading.Thread(target=call)
        thread.start()
        assert not ran.wait(0.3), f"{entry} ran the model while another camkit call held it"
    thread.join(60)
    assert ran.is_set() and not thread.is_alive() and not errors
