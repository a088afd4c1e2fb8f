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
    with pytest.raises(ValueError, match="needs weights"):
        fuse([a, b], "weighted")
