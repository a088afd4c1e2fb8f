"""camkit.MultiScale against a hand reimplementation of ReCAM's make_cam loop (its net/resnet50_cam.py
CAM.forward and step/make_cam.py), on a small stride-4 CAM network."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camkit
from camkit.errors import InputError
from camkit.methods.multiscale import rescale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 12, 3, 2, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 5, bias=False)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Net().double().eval()


def recam_loop(net, x, classes, scales):
    """make_cam.py, image by image: per scale the image and its flip in one batch, ReLU(conv2d(feature, W)),
    x[0] + x[1].flip(-1); the strided sum at the scale-1 feature size and the high-res sum at the image
    size, each scale upsampled on its own; the label classes kept; divided by max + 1e-5."""
    strided_out, high_out = [], []
    h, w = x.shape[-2:]
    strided_size = net.features(x[:1]).shape[-2:]
    for i in range(x.shape[0]):
        outputs = []
        for s in scales:
            img = rescale(x[i:i + 1], s)
            pack = torch.cat([img, img.flip(-1)])
            cam = F.relu(F.conv2d(net.features(pack), net.fc.weight[:, :, None, None]))
            outputs.append(cam[0] + cam[1].flip(-1))
        strided = torch.sum(torch.stack([F.interpolate(o[None], strided_size, mode="bilinear",
                                                       align_corners=False)[0] for o in outputs]), 0)
        high = torch.sum(torch.stack([F.interpolate(o[:, None], (h, w), mode="bilinear",
                                                    align_corners=False) for o in outputs]), 0)[:, 0]
        strided, high = strided[classes[i]], high[classes[i]]
        strided_out.append(strided)
        high_out.append(high / (F.adaptive_max_pool2d(high, (1, 1)) + 1e-5))
    return torch.stack(strided_out), torch.stack(high_out)


@pytest.mark.parametrize("scales", [(1.0, 0.5, 1.5, 2.0), (1.0,), (0.5, 1.0)])
def test_multiscale_cam_equals_recams_loop(net, scales):
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    classes = torch.tensor([[1, 3], [4, 0]])
    with torch.no_grad():
        strided, high = recam_loop(net, x, classes, scales)
    res = camkit.MultiScale(camkit.CAM(net, layers="features", fc="fc", normalize=None), scales=scales)(
        x, targets=classes)
    assert torch.equal(res.targets, classes)
    torch.testing.assert_close(res.layer_maps["features"], strided, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.maps, high, rtol=1e-10, atol=1e-12)
    single = camkit.CAM(net, layers="features", fc="fc")(x, targets=classes)
    torch.testing.assert_close(res.logits, single.logits)


def test_no_flip_and_a_gradient_method_with_several_layers(net):
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    lc = camkit.LayerCAM(net, layers=["features.1", "features.3"], normalize=None)
    res = camkit.MultiScale(lc, scales=[1.0, 2.0], flip=False, normalize="minmax")(x, topk=2)
    plain = lc(x, topk=2)
    assert torch.equal(res.targets, plain.targets)
    double = lc(rescale(x, 2.0), targets=plain.targets).layer_maps
    for n in ("features.1", "features.3"):  # the strided sum: each scale at the first scale's layer size
        at = plain.layer_maps[n].shape[-2:]
        torch.testing.assert_close(res.layer_maps[n], plain.layer_maps[n] + F.interpolate(
            double[n], at, mode="bilinear", align_corners=False))
    assert res.maps.shape == (2, 2, 32, 32) and res.maps.min() >= 0 and res.maps.max() <= 1


@pytest.mark.parametrize("scales, match", [([], "scales is empty"), ([1.0, 0.0], "finite number > 0"),
                                           ([-1.0], "finite number > 0"), ([float("nan")], "finite number > 0"),
                                           (1.0, "must be a list"), (["1"], "must be numbers")])
def test_bad_scales(net, scales, match):
    with pytest.raises(InputError, match=match):
        camkit.MultiScale(camkit.CAM(net, layers="features", fc="fc"), scales=scales)


def test_bad_targets_and_inputs(net):
    ms = camkit.MultiScale(camkit.GradCAM(net, layers="features"))
    with pytest.raises(InputError, match="class targets"):
        ms(torch.randn(1, 3, 32, 32, dtype=torch.float64), targets=lambda s: s[:, 0] - s[:, 1])
    with pytest.raises(InputError, match=r"image batches \(B, C, H, W\)"):
        ms(torch.randn(3, 32, 32, dtype=torch.float64))
    with pytest.raises(InputError, match="camkit method object"):
        camkit.MultiScale(net)


def test_method_spec_and_export_take_scales_and_flip(tmp_path):
    """MethodSpec(scales=, flip=) builds a MultiScale (ReCAM's normalization by default); export records
    them in its settings, so a resume with other scales or without the flip is refused."""
    import numpy as np
    import torchvision
    import torchvision.transforms as T
    from PIL import Image

    from camkit.adapters import resolve
    from camkit.app import ExplainSpec, MethodSpec, ModelSpec
    from camkit.export import read_cams, run

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    tf = T.Compose([T.Resize(40), T.CenterCrop(32), T.ToTensor()])
    preset = resolve(model)
    spec = MethodSpec("gradcam", scales=[1.0, 0.5], flip=True)
    ms = spec.build(model, preset)
    assert isinstance(ms, camkit.MultiScale) and ms.scales == (1.0, 0.5) and ms.flip
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    direct = camkit.MultiScale(camkit.GradCAM(model, layers=["layer4"], normalize=None), scales=[1.0, 0.5])(x)
    torch.testing.assert_close(ms(x).maps, direct.maps)
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray((np.random.default_rng(0).random((36, 40, 3)) * 255).astype(np.uint8)).save(src / "a.png")
    out = tmp_path / "out"
    summary = run(src, out, ExplainSpec(ModelSpec(model, transform=tf), spec), workers=0, progress=False)
    assert (summary.ok, summary.failed) == (1, 0)
    settings = __import__("json").loads((out / "export.json").read_text())["settings"]
    assert settings["scales"] == [1.0, 0.5] and settings["flip"] is True
    assert read_cams(out, "a")["high_res"].shape == (1, 36, 40)
    with pytest.raises(InputError, match="other settings"):
        run(src, out, ExplainSpec(ModelSpec(model, transform=tf), MethodSpec("gradcam", scales=[1.0, 0.5])),
            workers=0, progress=False)
    with pytest.raises(InputError, match="finite number > 0"):
        MethodSpec("gradcam", scales=[-2.0])


def test_cli_scales_are_checked_before_the_model(capsys):
    from camkit import cli

    assert cli.main(["explain", "--demo", "--scales", "0", "--out", "unused"]) == 2
    assert "--scales: every scale must be a finite number > 0" in capsys.readouterr().err
