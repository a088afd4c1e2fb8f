"""Detectors, embeddings and other heads (issue 21, items 1, 4, 5): BoxScore / TopDetections on a
torchvision Faster R-CNN built small by hand, against a hand autograd computation of the matched
scores and against pytorch-grad-cam's FasterRCNNBoxScoreTarget; YOLO-style raw outputs; Eigen-CAM on a
detector; Similarity on a timm embedding model; CAM on a 1x1-conv classifier (torchcam's case);
a binary classifier's logit (pytorch-grad-cam's BinaryClassifierOutputTarget); regression outputs;
the examples; the bad inputs."""
from __future__ import annotations

import runpy
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from model_state import assert_as_found, snapshot
from peer_reference import at_layer
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

import camkit
from camkit import adapters
from camkit.detection import DetectorOutput, detections, yolo_detections
from camkit.errors import InputError
from camkit.targets import BinaryScore, BoxScore, Regression, Similarity, TopDetections

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LAYER = "backbone.body.layer2"


def _conv(i: int, o: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1), nn.ReLU())


def _reinit(model: nn.Module, seed: int) -> nn.Module:
    """Weights drawn from a private generator, large enough that the detections' scores differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (1.5 / fan ** 0.5 if p.dim() > 1 else 0.1))
    return model.eval()


def tiny_faster_rcnn(num_classes: int = 4, min_size: int = 64, max_size: int = 64) -> nn.Module:
    """torchvision's FasterRCNN on a 3-conv backbone with torchvision's FPN (two levels + pool)."""
    body = nn.Sequential(OrderedDict(stem=_conv(3, 8), layer1=_conv(8, 16), layer2=_conv(16, 16)))
    backbone = BackboneWithFPN(body, {"layer1": "0", "layer2": "1"}, [16, 16], 16)
    anchors = AnchorGenerator(sizes=((16,), (32,), (64,)), aspect_ratios=((0.5, 1.0, 2.0),) * 3)
    m = FasterRCNN(backbone, num_classes=None, min_size=min_size, max_size=max_size, rpn_anchor_generator=anchors,
                   box_roi_pool=MultiScaleRoIAlign(["0", "1"], 7, 2), box_head=TwoMLPHead(16 * 49, 32),
                   box_predictor=FastRCNNPredictor(32, num_classes), box_score_thresh=0.0,
                   rpn_pre_nms_top_n_test=40, rpn_post_nms_top_n_test=12, box_detections_per_img=8)
    return _reinit(m, 0)


@pytest.fixture(scope="module")
def frcnn():
    return tiny_faster_rcnn()


@pytest.fixture(scope="module")
def x64():
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def dets(frcnn, x64):
    with torch.no_grad():
        return frcnn(x64)[0]


def _layer(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


def _hand_outputs(model: nn.Module, x: torch.Tensor, layer: str):
    """The model's raw output with grad on, and the layer's output A it depends on."""
    kept = {}
    h = _layer(model, layer).register_forward_hook(lambda m, i, o: kept.update(A=o))
    try:
        with torch.enable_grad():
            out = model(x)
    finally:
        h.remove()
    return out, kept["A"]


def _hand_match(det: dict, box: torch.Tensor, label: int, thr: float):
    """The issue's definition, written out: among the detections of ``label`` with IoU > thr, the
    one of highest IoU; its score (a tensor with history), or None."""
    best, best_iou = None, -1.0
    for j in range(det["boxes"].shape[0]):
        iou = float(torchvision.ops.box_iou(box[None].to(det["boxes"].dtype), det["boxes"][j:j + 1].detach()))
        if int(det["labels"][j]) == label and iou > thr and iou > best_iou:
            best, best_iou = det["scores"][j], iou
    return best


def _hand_gradcam(score, A: torch.Tensor) -> torch.Tensor:
    """Grad-CAM by the paper: ReLU(sum_c mean_hw(dy/dA_c) A_c) for image 0, (h, w)."""
    if score is None:
        return torch.zeros(A.shape[-2:])
    (g,) = torch.autograd.grad(score, A, retain_graph=True)
    return torch.relu((g.mean(dim=(-2, -1), keepdim=True) * A).sum(1))[0].detach()


def _reference_boxes(dets: dict):
    """A jittered detection (the largest), an exact one, one with another label, one far from everything."""
    b, lab = dets["boxes"], dets["labels"]
    big = int(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).argmax())
    other = int(lab[4]) % 3 + 1
    boxes = torch.stack([b[big] + torch.tensor([1.0, -1.0, -1.0, 0.5]), b[1], b[4], torch.tensor([0.0, 0.0, 1.0, 1.0])])
    labels = torch.tensor([int(lab[big]), int(lab[1]), other, 2])
    return boxes, labels


def test_boxscore_equals_hand_autograd_k_maps_one_forward_one_backward(frcnn, x64, dets, monkeypatch):
    boxes, labels = _reference_boxes(dets)
    out, A = _hand_outputs(frcnn, x64, LAYER)
    hand = [_hand_match(out[0], boxes[k], int(labels[k]), 0.5) for k in range(4)]
    assert hand[0] is not None and hand[1] is not None and hand[2] is None and hand[3] is None
    hand_maps = torch.stack([_hand_gradcam(s, A) for s in hand])
    calls = {"forward": 0, "grad": []}
    real_grad = torch.autograd.grad

    def counting_grad(*a, **kw):
        calls["grad"].append(kw.get("is_grads_batched", False))
        return real_grad(*a, **kw)

    preset = adapters.resolve(frcnn)
    before = snapshot(frcnn)
    h = frcnn.register_forward_hook(lambda *a: calls.update(forward=calls["forward"] + 1))
    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    try:
        res = camkit.GradCAM(frcnn, layers=[LAYER], normalize=None, output=preset.output)(
            x64, targets=BoxScore(boxes, labels))
    finally:
        h.remove()
        monkeypatch.undo()
    assert calls == {"forward": 1, "grad": [True]}
    assert_as_found(frcnn, before)
    want = torch.stack([torch.zeros(()) if s is None else s.detach() for s in hand])
    torch.testing.assert_close(res.scores[0], want)
    assert res.targets[0].tolist() == labels.tolist()
    torch.testing.assert_close(res.layer_maps[LAYER][0], hand_maps, atol=1e-5, rtol=1e-4)
    assert float(hand_maps[0].abs().sum()) > 0 and float(res.layer_maps[LAYER][0, 2:].abs().sum()) == 0
    assert res.maps.shape == (1, 4, 64, 64)


def test_boxscore_matches_pytorch_grad_cam_fasterrcnn_target(frcnn, x64, dets):
    """pytorch-grad-cam's target sums IoU + score over the boxes; on the model's own detections (IoU 1,
    whose gradient vanishes at the match) its Grad-CAM equals camkit's with the columns summed."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    boxes, labels = dets["boxes"][:3].clone(), dets["labels"][:3].clone()
    peer_target = FasterRCNNBoxScoreTarget(labels.numpy(), boxes.numpy())
    ours = BoxScore(boxes, labels)(detections([dets], 4))
    assert float(peer_target(dets)) == pytest.approx(3 + float(ours.sum()), abs=1e-5)
    cam = at_layer(pgc.GradCAM)(frcnn, [_layer(frcnn, LAYER)])
    cam.kept = []
    try:
        cam(x64, [peer_target])
    finally:
        cam.activations_and_grads.release()
    peer = torch.relu(torch.as_tensor(cam.kept[-1]["raw"]))[0]
    res = camkit.GradCAM(frcnn, layers=[LAYER], normalize=None, output=DetectorOutput(4))(
        x64, targets=lambda s: BoxScore(boxes, labels)(s).sum(1))
    torch.testing.assert_close(res.layer_maps[LAYER][0, 0].double(), peer.double(), atol=1e-5, rtol=1e-4)
    assert float(peer.sum()) > 0


def test_boxscore_ported_peer_assertions_device_dtype_empty():
    """pytorch-grad-cam's assertions: the value is on the output's device, in the boxes' dtype, 0 on no box."""
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    ref = np.array([[1.0, 1.0, 9.0, 9.0]])
    for dtype in (torch.float32, torch.float64):
        empty = {"boxes": torch.zeros(0, 4, dtype=dtype), "scores": torch.zeros(0, dtype=dtype),
                 "labels": torch.zeros(0, dtype=torch.long)}
        full = {"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.5]], dtype=dtype), "scores": torch.tensor([0.7], dtype=dtype),
                "labels": torch.tensor([2])}
        for det, want in ((empty, 0.0), (full, 0.7)):
            peer = FasterRCNNBoxScoreTarget([2], ref)(det)
            got = BoxScore(torch.as_tensor(ref), [2])(detections([det], 3))
            assert got.dtype == peer.dtype == dtype and got.device == peer.device
            assert got.shape == (1, 1) and float(got) == pytest.approx(want)
            iou = 64 / 68 if want else 0.0
            assert float(peer) == pytest.approx(iou + want)


def test_top_detections_and_detection_preset(frcnn, x64, dets):
    preset = adapters.resolve(frcnn)
    assert (preset.family, preset.task, preset.gradcam_layer) == ("tv-detection", "detection", LAYER)
    assert preset.layers == ("backbone.fpn.layer_blocks.0", "backbone.fpn.layer_blocks.1")
    assert isinstance(preset.output, DetectorOutput) and preset.output.num_classes == 4
    res = camkit.LayerCAM(frcnn, **preset.method_kwargs("layercam"))(x64, targets=TopDetections(3))
    top = dets["scores"].topk(3)
    torch.testing.assert_close(res.scores[0], top.values)
    assert res.targets[0].tolist() == dets["labels"][top.indices].tolist()
    assert bool(torch.isfinite(res.maps).all()) and 0 < float(res.maps.amax()) <= 1 and float(res.maps.amin()) >= 0
    torch.testing.assert_close(TopDetections(3).boxes(res.logits)[0], dets["boxes"][top.indices])
    many = TopDetections(20)
    assert many.valid(res.logits)[0].tolist() == [True] * 8 + [False] * 12


def test_fit_size_makes_the_detectors_resize_the_identity():
    m = tiny_faster_rcnn(min_size=64, max_size=128)
    h, w = adapters.detection.fit_size(m, (48, 80))
    assert (h, w) == (64, 96)
    images, _ = m.transform([torch.rand(3, h, w)])
    assert images.tensors.shape[-2:] == (h, w) and images.image_sizes == [(h, w)]
    assert adapters.detection.fit_input(m, torch.rand(2, 3, 48, 80)).shape == (2, 3, 64, 96)
    images, _ = m.transform([torch.rand(3, 48, 80)])  # unfitted: resized to 64 x 106, padded to 64 x 128
    assert images.image_sizes == [(64, 106)] and images.tensors.shape[-2:] == (64, 128)


def test_eigencam_on_a_detector_is_the_first_principal_component(frcnn, x64):
    """Eigen-CAM by its paper: the centered activations projected on their first right singular
    vector; pytorch-grad-cam's EigenCAM on the same detector gives it up to the SVD's sign."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    _, A = _hand_outputs(frcnn, x64, LAYER)
    M = A[0].detach().flatten(1).T.double()
    M = M - M.mean(0)
    v = torch.linalg.svd(M, full_matrices=False)[2][0]
    proj = (M @ v).reshape(A.shape[-2:])
    res = camkit.EigenCAM(frcnn, **adapters.resolve(frcnn).method_kwargs("eigencam"), normalize=None)(
        x64, targets=TopDetections(2))
    got = res.layer_maps[LAYER][0].double()
    assert torch.equal(got[0], got[1])
    assert min(float((got[0] - torch.relu(s * proj)).abs().max()) for s in (1, -1)) < 1e-4
    cam = at_layer(pgc.EigenCAM)(frcnn, [_layer(frcnn, LAYER)])
    cam.kept = []
    try:
        cam(x64, [lambda out: 0])
    finally:
        cam.activations_and_grads.release()
    peer = torch.as_tensor(cam.kept[-1]["raw"])[0].double()
    assert min(float((got[0] - torch.relu(s * peer)).abs().max()) for s in (1, -1)) < 1e-4


class TinyYOLO(nn.Module):
    """A YOLO-style head: per cell of a 16x16 grid one anchor, (cx, cy, w, h, objectness, C probs)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(3, 8), _conv(8, 16))
        self.head = nn.Conv2d(16, 5 + num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.head(self.body(x))  # (B, 5 + C, 16, 16)
        b, _, h, w = p.shape
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        s = x.shape[-1] / w
        cx, cy = (gx + p[:, 0].sigmoid()) * s, (gy + p[:, 1].sigmoid()) * s
        wh = p[:, 2:4].sigmoid() * 4 * s
        out = torch.cat([cx[:, None], cy[:, None], wh, p[:, 4:].sigmoid()], 1)
        return out.flatten(2).transpose(1, 2)  # (B, N, 4 + 1 + C)


def test_yolo_recipe_equals_hand_autograd():
    """The documented recipe: a target function BoxScore(...)(yolo_detections(raw))."""
    model = _reinit(TinyYOLO(), 3)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        raw = model(x)[0]
    xyxy = torch.cat([raw[:, :2] - raw[:, 2:4] / 2, raw[:, :2] + raw[:, 2:4] / 2], 1)
    ref = torch.stack([xyxy[37] + 0.3, xyxy[100] - 0.2, torch.tensor([0.0, 0.0, 1.0, 1.0])])
    labels = torch.tensor([1, 2, 0])
    kept = {}
    h = model.body.register_forward_hook(lambda m, i, o: kept.update(A=o))
    try:
        out = model(x)[0]
    finally:
        h.remove()
    xyxy = torch.cat([out[:, :2] - out[:, 2:4] / 2, out[:, :2] + out[:, 2:4] / 2], 1).detach()
    hand = []
    for k in range(3):
        iou = torchvision.ops.box_iou(ref[k:k + 1], xyxy)[0]
        j = int(torch.where(iou > 0.5, iou, torch.full_like(iou, -1)).argmax())
        score = out[j, 4] * out[j, 5 + int(labels[k])] if bool((iou > 0.5).any()) else None
        hand.append(_hand_gradcam(score, kept["A"]))
    target = BoxScore(ref, labels)
    res = camkit.GradCAM(model, layers=["body"], normalize=None)(x, targets=lambda o: target(yolo_detections(o)))
    torch.testing.assert_close(res.layer_maps["body"][0], torch.stack(hand), atol=1e-5, rtol=1e-4)
    assert float(hand[0].sum()) > 0 and float(hand[1].sum()) > 0 and float(hand[2].sum()) == 0


def test_detection_bad_input(frcnn, x64):
    class NoBoxes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            s = self.conv(x).mean(dim=(1, 2, 3))
            return [{"scores": v[None], "labels": torch.tensor([1])} for v in s]

    with pytest.raises(InputError, match=r"image 0 has no \['boxes'\]"):
        camkit.GradCAM(NoBoxes(), layers=["conv"], output=DetectorOutput(3))(x64, targets=BoxScore([[0, 0, 4, 4]], [1]))
    with pytest.raises(InputError, match=r"boxes must have shape \(K, 4\) or \(B, K, 4\).*\(2, 3\)"):
        BoxScore(torch.zeros(2, 3), [1, 1])
    with pytest.raises(InputError, match="boxes must be real numbers.*bool"):
        BoxScore(torch.ones(1, 4, dtype=torch.bool), [1])
    with pytest.raises(InputError, match="labels must be integers"):
        BoxScore(torch.ones(1, 4), torch.ones(1))
    with pytest.raises(InputError, match="x2 >= x1"):
        BoxScore([[5.0, 0.0, 1.0, 4.0]], [1])
    with pytest.raises(InputError, match=r"label 7 out of range: the detector has classes 0\.\.3"):
        camkit.GradCAM(frcnn, layers=[LAYER], output=DetectorOutput(4))(x64, targets=BoxScore([[0, 0, 9, 9]], [7]))
    with pytest.raises(InputError, match=r"BoxScore needs detections of shape \(B, N, 4 \+ C\)"):
        BoxScore([[0, 0, 9, 9]], [1])(torch.zeros(2, 10))
    with pytest.raises(InputError, match="a list of dicts"):
        detections(torch.zeros(1, 5), 3)
    with pytest.raises(InputError, match="a detector's list of dicts .* use the detection preset"):
        camkit.GradCAM(frcnn, layers=[LAYER])(x64)


# --------------------------------------------------------------------------- embeddings and other heads


@pytest.fixture(scope="module")
def embedder():
    """An embedding model: a narrow torchvision ResNet18 whose classifier is removed (D = 64)."""
    from small_models import narrow_resnet18

    m = narrow_resnet18(num_classes=5)
    m.fc = nn.Identity()
    return _reinit(m, 10)


def _timm_embedder():
    timm = pytest.importorskip("timm")
    return timm.create_model("test_efficientnet", num_classes=0).eval()


@pytest.mark.parametrize("which", ["resnet", pytest.param("timm", marks=pytest.mark.slow(
    reason="importing timm takes ~2 s on the shared machine; the resnet case runs by default"))])
def test_similarity_equals_hand_autograd(embedder, which):
    embedder, layer = (embedder, "layer4") if which == "resnet" else (_timm_embedder(), "bn2")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    dim = embedder(x[:1]).shape[1]
    concept = torch.randn(2, dim, generator=torch.Generator().manual_seed(4))
    kept = {}
    h = _layer(embedder, layer).register_forward_hook(lambda m, i, o: kept.update(A=o))
    try:
        emb = embedder(x)
    finally:
        h.remove()
    A = kept["A"]
    hand = []
    for k in range(2):
        cos = (emb * concept[k]).sum(1) / (emb.norm(dim=1) * concept[k].norm())  # (B,)
        (g,) = torch.autograd.grad(cos.sum(), A, retain_graph=True)
        hand.append(torch.relu((g.mean(dim=(-2, -1), keepdim=True) * A).sum(1)).detach())
    res = camkit.GradCAM(embedder, layers=[layer], normalize=None)(x, targets=Similarity(concept))
    torch.testing.assert_close(res.layer_maps[layer], torch.stack(hand, 1), atol=1e-5, rtol=1e-4)
    assert float(torch.stack(hand).sum()) > 0
    one = Similarity(concept[0])(emb.detach())
    assert one.shape == (2, 1)
    torch.testing.assert_close(one[:, 0], torch.nn.functional.cosine_similarity(emb.detach(), concept[:1]))
    with pytest.raises(InputError, match=f"the concept has 7 features, the model's embeddings have {emb.shape[1]}"):
        camkit.GradCAM(embedder, layers=[layer])(x, targets=Similarity(torch.randn(7)))
    with pytest.raises(InputError, match=r"embedding \(D,\) or \(K, D\)"):
        Similarity(torch.randn(1, 2, 3))


def test_cam_on_a_1x1_conv_classifier_equals_torchcam():
    """torchcam's case: a classifier whose last layer is a 1x1 convolution after global pooling."""
    torchcam = pytest.importorskip("torchcam.methods")
    g = torch.Generator().manual_seed(5)
    model = _reinit(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Conv2d(8, 5, 1), nn.Flatten(1)), 5)
    x = torch.rand(2, 3, 32, 32, generator=g)
    classes = model(x).argmax(1)
    with torchcam.CAM(model, "1", fc_layer="3", input_shape=(3, 32, 32)) as ex:
        scores = model(x)
        peer = ex(class_idx=classes.tolist(), scores=scores, normalized=False)[0].detach()
    res = camkit.CAM(model, layers=["1"], fc="3", normalize=None)(x, targets=classes)
    torch.testing.assert_close(res.layer_maps["1"][:, 0], peer, atol=1e-5, rtol=1e-4)
    assert float(peer.abs().sum()) > 0


def test_binary_logit_both_classes_equal_pytorch_grad_cam():
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    model = _reinit(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(8, 1)), 6)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    for category in (1, 0):
        cam = at_layer(pgc.GradCAM)(model, [model[1]])
        cam.kept = []
        try:
            cam(x, [BinaryClassifierOutputTarget(category)] * 2)
        finally:
            cam.activations_and_grads.release()
        peer = torch.relu(torch.as_tensor(cam.kept[-1]["raw"]))
        res = camkit.GradCAM(model, layers=["1"], normalize=None)(x, targets=BinaryScore(category))
        torch.testing.assert_close(res.layer_maps["1"][:, 0], peer.to(res.layer_maps["1"].dtype), atol=1e-5, rtol=1e-4)
        assert res.targets.tolist() == [[category]] * 2
        assert float(peer.sum()) > 0
        sign = 1 if category == 1 else -1
        torch.testing.assert_close(res.scores[:, 0], sign * model(x)[:, 0].detach())


def test_regression_outputs_as_named_targets():
    model = _reinit(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(1), nn.Linear(8, 3)), 8)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    target = Regression(["bmi", "age"], names=["age", "height", "bmi"], sign=-1)
    assert target.labels() == ["bmi", "age"]
    kept = {}
    h = model[1].register_forward_hook(lambda m, i, o: kept.update(A=o))
    try:
        out = model(x)
    finally:
        h.remove()
    hand = []
    for col in (2, 0):
        (g,) = torch.autograd.grad(-out[:, col].sum(), kept["A"], retain_graph=True)
        hand.append(torch.relu((g.mean(dim=(-2, -1), keepdim=True) * kept["A"]).sum(1)).detach())
    res = camkit.GradCAM(model, layers=["1"], normalize=None)(x, targets=target)
    torch.testing.assert_close(res.layer_maps["1"], torch.stack(hand, 1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.scores, -out[:, [2, 0]].detach())
    with pytest.raises(InputError, match="unknown output 'weight'"):
        Regression("weight", names=["age"])
    with pytest.raises(InputError, match="the model has 3 outputs"):
        camkit.GradCAM(model, layers=["1"])(x, targets=Regression(5))


# --------------------------------------------------------------------------- examples


def test_examples_run_on_small_random_models(frcnn, x64, embedder):
    det = runpy.run_path(str(EXAMPLES / "detection.py"))["explain"](frcnn, x64, k=2)
    assert det["maps"].shape == (1, 2, 64, 64)
    torch.testing.assert_close(det["ref_scores"], det["scores"])
    emb = runpy.run_path(str(EXAMPLES / "embeddings.py"))["main"](embedder)
    assert emb["maps"].shape == (2, 3, 64, 64) and bool((emb["similarity"].abs() <= 1 + 1e-6).all())


# --------------------------------------------------------------------------- the other detector families


@pytest.mark.slow(reason="RetinaNet, FCOS, SSDlite, SSD300 and Mask R-CNN with ResNet50 / MobileNetV3 / VGG16 backbones: ~20 s")
@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large", "ssd300_vgg16",
                                  "maskrcnn_resnet50_fpn"])
def test_other_detector_families(name):
    from torchvision.models import detection as tvd

    kw = {"score_thresh": 0.0} if not name.startswith("mask") else {"box_score_thresh": 0.0}
    if not name.startswith("ssd"):
        kw.update(min_size=64, max_size=64)
    model = getattr(tvd, name)(weights=None, weights_backbone=None, num_classes=3, **kw).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    preset = adapters.resolve(model)
    before = snapshot(model)
    for method in ("gradcam", "eigencam", "layercam"):
        res = camkit.METHODS[method](model, **preset.method_kwargs(method))(x, targets=TopDetections(2))
        assert res.maps.shape == (1, 2, 64, 64) and bool(torch.isfinite(res.maps).all())
        if method == "layercam":  # (Grad-CAM's 2x2 map at layer4 may be all zero after its ReLU)
            assert float(res.maps.amax()) > 0 and float(res.scores.amin()) > 0
    assert_as_found(model, before)


def test_cli_explain_draws_the_boxes_and_one_map_per_box(frcnn, tmp_path, monkeypatch, capsys):
    """``camkit explain --model tv:... --weights none photo.jpg`` on a detector (the tiny one stands in for
    the model the name builds): the boxes image, and one overlay per method and box."""
    from PIL import Image

    from camkit import cli
    from camkit.app import spec

    monkeypatch.setattr(spec.adapters, "build", lambda name, weights: (frcnn, adapters.resolve(frcnn)))
    photo = tmp_path / "street.png"
    Image.fromarray((np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)).save(photo)
    out = tmp_path / "out"
    rc = cli.main(["explain", str(photo), "--model", "tv:fasterrcnn_resnet50_fpn", "--weights", "none",
                   "--method", "gradcam", "eigencam", "--target", "top2", "--out", str(out)])
    assert rc == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names[0] == "street_boxes.png" and len(names) == 5
    assert all(Image.open(out / n).size == (80, 48) for n in names)
    line = capsys.readouterr().out
    assert line.startswith(f"{photo}: class ") and line.count(" at [") == 2
    assert cli.main(["explain", str(photo), "--model", "tv:x", "--target-class", "1", "--out", str(out)]) == 2
