"""Heads: the CAM identity, ReCAM's re-activation, the frozen join, save/load."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import camkit
from camkit.fusion import fuse, fuse_max, fuse_weighted


def test_cam_head_logits_are_mean_of_cam():
    torch.manual_seed(0)
    head = camkit.CAMHead(16, 5)
    f = torch.randn(3, 16, 7, 7)
    torch.testing.assert_close(head(f), head.cam(f).mean(dim=(2, 3)))
    assert head.fc.bias is None and head.conv.kernel_size == (1, 1)
    assert (head.maps(f) >= 0).all()
    with pytest.raises(ValueError, match=r"expected features of shape \(B, 16, h, w\), got \(3, 8, 7, 7\)"):
        head(torch.randn(3, 8, 7, 7))


def test_recam_head_forward_equals_recam_logits():
    torch.manual_seed(0)
    head = camkit.ReCAMHead(16, 5, normalize="relu")
    f = torch.randn(4, 16, 7, 7)
    labels = torch.tensor([0, 3, 4, 1])
    maps, logits = head.recam(f, labels[:, None])
    torch.testing.assert_close(head(f, target=labels), logits[:, 0])
    assert maps.shape == (4, 1, 7, 7) and maps.min() >= 0 and maps.max() <= 1
    default = head.plain_logits(f).argmax(1)
    torch.testing.assert_close(head(f), head(f, target=default))
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 4\]"):
        head(f, target=torch.tensor([0, 1, 2, 5]))


def test_recam_head_trains():
    torch.manual_seed(0)
    head = camkit.ReCAMHead(8, 3)
    f = torch.randn(30, 8, 5, 5)
    y = torch.arange(30) % 3
    f[torch.arange(30), y] += 2.0  # a learnable signal
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = nn.functional.cross_entropy(head(f, target=y), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_cam_model_keeps_backbone_frozen_and_in_eval():
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    model = camkit.CAMModel(backbone, camkit.CAMHead(8, 4)).train()
    assert not backbone.training and model.head.training
    assert all(not p.requires_grad for p in backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert model(torch.randn(2, 3, 9, 9)).shape == (2, 4)


@pytest.mark.parametrize("cls", ["CAMHead", "ReCAMHead"])
def test_save_load_head_alone(tmp_path, cls):
    torch.manual_seed(0)
    head = camkit.CAMHead(512, 17) if cls == "CAMHead" else camkit.ReCAMHead(512, 17, normalize="sigmoid")
    path = tmp_path / "head.pt"
    camkit.save_head(head, path)
    loaded = camkit.load_head(path)
    assert type(loaded) is type(head)
    f = torch.randn(2, 512, 7, 7)
    torch.testing.assert_close(loaded(f), head(f))
    assert os.path.getsize(path) < 45_000  # (512 + 1) * 17 + 17 * 17 floats: about 36 KB
    if cls == "ReCAMHead":
        assert loaded.normalize_name == "sigmoid"


def test_fusion():
    a = torch.rand(2, 3, 8, 8)
    b = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(fuse_max([a, b]), torch.maximum(a, b))
    torch.testing.assert_close(fuse_weighted([a, b], [0.6, 0.4]), torch.tanh(2 * (0.6 * a + 0.4 * b)))
    torch.testing.assert_close(fuse([a], "max"), a)
    with pytest.raises(ValueError, match="same shape"):
        fuse_max([a, b[:, :1]])
    with pytest.raises(ValueError, match="non-negative"):
        fuse_weighted([a, b], [1.2, -0.2])
    with pytest.raises(ValueError, match="sum to at most 1"):
        fuse_weighted([a, b], [0.8, 0.8])
    with pytest.raises(ValueError, match="needs one weight per layer"):
        fuse([a, b], "weighted")


# ------------------------------------------------------------------ ReCAM as Chen et al. (2022) define it


def _paper_head(seed=0, c=12, n=5, lam=0.7):
    torch.manual_seed(seed)
    head = camkit.heads.PaperReCAMHead(c, n, lam=lam)
    with torch.no_grad():
        head.conv.bias.add_(0.3)  # positive class maps at most positions
    return head


def _hand_pooled(head, f, b, c):
    """p_c of image b by loops: maps, CAM_c, ReLU / max, masked average (plain tensor ops)."""
    M = torch.relu(torch.einsum("nk,khw->nhw", head.conv.weight[:, :, 0, 0], f[b]) + head.conv.bias[:, None, None])
    cam = sum(head.fc.weight[c, k] * M[k] for k in range(M.shape[0]))
    r = torch.relu(cam)
    mask = r / r.max() if r.max() > 0 else torch.zeros_like(r)
    return torch.stack([(M[k] * mask).mean() for k in range(M.shape[0])])


def test_paper_recam_single_label_loss_and_gradients_equal_a_hand_computation():
    head = _paper_head()
    f = torch.randn(4, 12, 5, 6)
    y = torch.tensor([0, 3, 4, 3])
    loss = head.loss(f, y)
    grads = torch.autograd.grad(loss, [head.conv.weight, head.fc.weight, head.predictor.weight])
    # the paper's objective written out: CE of the plain logits + lam * CE of W' p_y, averaged over images
    terms = []
    for b in range(4):
        M = torch.relu(torch.einsum("nk,khw->nhw", head.conv.weight[:, :, 0, 0], f[b]) + head.conv.bias[:, None, None])
        logits = head.fc.weight @ M.mean(dim=(1, 2))
        pred = head.predictor.weight @ _hand_pooled(head, f, b, int(y[b]))
        ce = -torch.log_softmax(logits, 0)[y[b]]
        ce2 = -torch.log_softmax(pred, 0)[y[b]]
        terms.append(ce + 0.7 * ce2)
    ref = torch.stack(terms).mean()
    ref_grads = torch.autograd.grad(ref, [head.conv.weight, head.fc.weight, head.predictor.weight])
    torch.testing.assert_close(loss, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    # the mask is not detached: the predictor term alone still trains the CAM weights W
    pred_only = head.loss(f, y) - torch.nn.functional.cross_entropy(head(f), y)
    (g_fc,) = torch.autograd.grad(pred_only, [head.fc.weight])
    assert g_fc.abs().max() > 1e-4


def test_paper_recam_multilabel_loss_equals_a_hand_computation():
    head = _paper_head(1)
    f = torch.randn(3, 12, 4, 4)
    Y = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 1, 1, 0]], dtype=torch.float32)
    loss = head.loss(f, Y)
    total = torch.nn.functional.multilabel_soft_margin_loss(head(f), Y)
    ce_sum = 0.0
    for b in range(3):  # Chen et al.'s Class_Predictor: mean CE over the image's classes, summed, / batch size
        pos = [c for c in range(5) if Y[b, c] > 0]
        if pos:
            ces = [-torch.log_softmax(head.predictor.weight @ _hand_pooled(head, f, b, c), 0)[c] for c in pos]
            ce_sum = ce_sum + torch.stack(ces).mean()
    torch.testing.assert_close(loss, total + 0.7 * ce_sum / 3)
    with pytest.raises(ValueError, match=r"y must be labels \(3,\) or multi-hot \(3, 5\)"):
        head.loss(f, Y[:, :4])


def test_paper_recam_maps_are_relu_of_the_elementwise_product_of_both_weights():
    head = _paper_head(2)
    f = torch.randn(2, 12, 5, 5)
    t = torch.tensor([[1, 4], [0, 2]])
    got = head.recam_maps(f, t)
    assert got.shape == (2, 2, 5, 5)
    M = head.maps(f)
    for b in range(2):
        for k in range(2):
            c = int(t[b, k])
            ref = torch.relu(sum(head.predictor.weight[c, j] * head.fc.weight[c, j] * M[b, j] for j in range(5)))
            torch.testing.assert_close(got[b, k], ref)
    torch.testing.assert_close(head.recam_maps(f, t[:, 0]), got[:, :1])  # (B,) targets
    torch.testing.assert_close(head(f), head.cam(f).mean(dim=(2, 3)))  # classifies with the plain CAM logits
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 4\]"):
        head.recam_maps(f, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        camkit.heads.PaperReCAMHead(12, 5, lam=-1)


def test_paper_recam_head_round_trips_through_save_and_load(tmp_path):
    head = _paper_head(3, c=32, n=7, lam=0.25)
    with torch.no_grad():
        head.predictor.weight.mul_(3.0)  # not the default init
    camkit.save_head(head, tmp_path / "paper.pt")
    loaded = camkit.load_head(tmp_path / "paper.pt")
    assert type(loaded) is camkit.heads.PaperReCAMHead and loaded.lam == 0.25
    f, y = torch.randn(3, 32, 5, 5), torch.tensor([0, 6, 2])
    torch.testing.assert_close(loaded.predictor.weight, head.predictor.weight)
    torch.testing.assert_close(loaded.recam_maps(f, y), head.recam_maps(f, y))
    torch.testing.assert_close(loaded.loss(f, y), head.loss(f, y))


# ------------------------------------------------------------------ save/load refuse what they cannot round-trip


def test_save_head_refuses_a_custom_normalizer_at_save_time(tmp_path):
    path = tmp_path / "h.pt"
    head = camkit.ReCAMHead(8, 3, normalize=lambda t: t.clamp(0, 1))
    with pytest.raises(ValueError, match=r"cannot save a ReCAMHead whose normalizer is a custom callable \('<lambda>'\)"):
        camkit.save_head(head, path)
    assert not path.exists()

    def sigmoid(t):  # a custom function that merely shares a registered name
        return t.clamp(0, 1)

    with pytest.raises(ValueError, match="custom callable"):
        camkit.save_head(camkit.ReCAMHead(8, 3, normalize=sigmoid), path)
    # camkit's own normalizer passed as a function is stored by its name and loads back
    camkit.save_head(camkit.ReCAMHead(8, 3, normalize=camkit.normalize.relu_max), path)
    assert camkit.load_head(path).normalize is camkit.normalize.relu_max
    with pytest.raises(TypeError, match="save_head saves camkit heads"):
        camkit.save_head(nn.Linear(3, 3), path)


def test_load_head_without_metadata_gives_a_clear_error(tmp_path):
    from camkit.errors import InputError

    head = camkit.CAMHead(8, 3)
    bare = tmp_path / "bare.pt"
    torch.save(head.state_dict(), bare)
    with pytest.raises(InputError, match="this one has no metadata"):
        camkit.load_head(bare)
    partial = tmp_path / "partial.pt"
    torch.save({"meta": {"class": "CAMHead"}, "state_dict": head.state_dict()}, partial)
    with pytest.raises(InputError, match="metadata without 'in_channels', 'num_classes'"):
        camkit.load_head(partial)
    wrong = tmp_path / "wrong.pt"
    torch.save({"meta": {"class": "CAMHead", "in_channels": 9, "num_classes": 3}, "state_dict": head.state_dict()}, wrong)
    with pytest.raises(InputError, match=r"do not fit a CAMHead\(9, 3\)"):
        camkit.load_head(wrong)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a torch file")
    with pytest.raises(InputError, match="not a head file written by camkit.save_head"):
        camkit.load_head(junk)
    with pytest.raises(InputError, match="no such head file"):
        camkit.load_head(tmp_path / "absent.pt")
