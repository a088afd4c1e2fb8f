"""Flower-17 sanity and multi-scale benchmarks (benchmarks/flower17/sanity.py, multiscale.py) on tiny
synthetic models: the block-wise, shared-forward randomization against camkit.evaluation.model_randomization
(one module per block), the closed-form Score-CAM on a CAM head against camkit.ScoreCAM, the image-level
label permutation, the shuffled-label training, and the mask statistics by hand."""
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch.fx.experimental.symbolic_shapes  # noqa: E402,F401  (torch's first autograd.grad imports it, 0.9 s once per suite)

import camkit  # noqa: E402
from benchmarks.flower17 import multiscale as MS  # noqa: E402
from benchmarks.flower17 import sanity as S  # noqa: E402
from camkit.evaluation import model_randomization  # noqa: E402
from camkit.heads import CAMHead, CAMModel  # noqa: E402


def _close(a, b, atol=1e-5):
    """Equal within ``atol``, NaN where the other is NaN (torch.testing.assert_close's first call imports
    torch.distributed.tensor: 1 s)."""
    a, b = a.double(), b.double()
    assert torch.equal(a.isnan(), b.isnan()), (a, b)
    ok = ~a.isnan()
    assert float((a[ok] - b[ok]).abs().max()) <= atol if ok.any() else True, (a, b)


def _tiny(seed=0):
    """stem + bn1 + blocks (2 stages) + pool -> (B, 8, 3, 3), and a CAM head with 3 classes."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(OrderedDict(
        stem=nn.Conv2d(3, 4, 3, padding=1), bn1=nn.BatchNorm2d(4),
        blocks=nn.Sequential(nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU()),
                             nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())),
        pool=nn.AdaptiveAvgPool2d(3)))
    with torch.no_grad():
        backbone.bn1.running_mean.uniform_(-0.1, 0.1)
        backbone.bn1.running_var.uniform_(0.5, 2.0)
    return CAMModel(backbone, CAMHead(8, 3), freeze=True).eval()


def test_blocks_group_norm_and_parameterless_stages_with_the_one_before():
    bl = S.blocks(S.stages(_tiny().backbone))
    assert [b["name"] for b in bl] == ["stem+bn1", "blocks.0", "blocks.1"]
    assert [b["start"] for b in bl] == [0, 2, 3]
    assert [len(b["modules"]) for b in bl] == [2, 1, 1]


@pytest.mark.parametrize("order,row", [("cascading", "gradcam"), ("independent", "cam")])
def test_blockwise_randomization_equals_model_randomization_with_one_module_per_block(order, row):
    """Blocks of one module each (heads = the head's conv, then fc): the shared-forward randomization gives
    the similarities of camkit's model_randomization, same seed, same draws (cascading: the steps that end a
    block; independent: the blocks of one module)."""
    model = _tiny()
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    rows = [row]
    reg = dict(camkit.methods.METHODS)
    heads = {"cam": model.head}

    def explain_row(row):
        def explain(m, images, t):
            return S.resize(S.FeatureMaps({"cam": m.head}, [row], reg)(m.backbone(images), t)[row], 24)
        return explain

    with torch.no_grad():
        t = model(x).argmax(1)
    work = S.Randomizer(S.stages(model.backbone), heads, seed=3)  # re-draws the given model's modules, restores
    acts = S.staged_forward(work.stage_list, x)
    fm = S.FeatureMaps(heads, rows, reg)
    got = S.randomize_chunk(work, fm, acts, fm(acts[-1], t), t, 24, (order,))[order]
    layers = ["head.conv", "head.fc", "backbone.blocks.1.0", "backbone.blocks.0.0", "backbone.stem", "backbone.bn1"]
    steps = {"cascading": [1, 2, 3, 5], "independent": [None, 2, 3, None]}[order]
    ref = model_randomization(model, explain_row(row), x, t, order=order, layers=layers, seed=3)
    for s in S.SIMS:
        for level, step in enumerate(steps):
            if step is not None:
                _close(got[row][s][level], ref[s][step])
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), _tiny().state_dict().values()))


def test_closed_form_scorecam_on_a_cam_head_equals_camkit_scorecam():
    head = CAMHead(8, 3).eval()
    f = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(0)).relu()
    t = torch.tensor([0, 2])
    fm = S.FeatureMaps({"cam": head}, ["scorecam"], dict(camkit.methods.METHODS))
    ref = camkit.ScoreCAM(CAMModel(nn.Identity(), head, freeze=True).eval(), layers=["backbone"])(
        f, targets=t[:, None]).maps[:, 0]
    assert fm.check_scorecam(f, t) <= 1e-5 and fm.fast_scorecam
    _close(fm(f, t)["scorecam"], ref)


def test_labels_are_permuted_per_image_and_copies_share_theirs():
    y = torch.arange(6).repeat_interleave(3) % 3  # 6 images x 3 copies, classes 0 1 2 0 1 2
    index = torch.arange(100, 106).repeat_interleave(3)
    s = S.image_level_shuffle(y, index, seed=0)
    per = s.view(6, 3)
    assert (per == per[:, :1]).all()  # the copies of an image keep one label
    assert sorted(per[:, 0].tolist()) == sorted(y.view(6, 3)[:, 0].tolist())  # the same labels, permuted
    assert not torch.equal(s, y)


def test_shuffled_label_training_fits_the_permuted_labels():
    g = torch.Generator().manual_seed(0)
    n, c = 24, 16
    cache = {"train": {"x": torch.randn(n, c, 2, 2, generator=g).half(), "y": torch.arange(n) % 3,
                       "index": torch.arange(n)},
             "val": {"x": torch.randn(6, c, 2, 2, generator=g).half(), "y": torch.arange(6) % 3}}
    heads, info = S.train_shuffled(cache, {"cam": 0.05, "recam_minmax": 0.05}, epochs=8, batch_size=8)
    assert isinstance(heads["cam"], CAMHead) and type(heads["recam_minmax"]).__name__ == "ReCAMHead"
    assert info["labels_changed"] > 0.3
    h = info["history"]["cam"]
    assert len(h) == 8 and h[-1]["train_top1_shuffled"] > 0.8 > h[0]["train_top1_shuffled"] - 0.5


def test_mask_iou_and_foreground_share_by_hand():
    a = np.zeros((2, 2, 2), bool)
    b = np.zeros((2, 2, 2), bool)
    a[0, 0, :] = True          # 2 px
    b[0, :, 0] = True          # 2 px, 1 shared -> IoU 1/3; image 1 both empty -> 1
    assert np.allclose(MS.iou(a, b), [1 / 3, 1.0])
    maps = torch.tensor([[[0.1, 0.3], [0.2, 0.9]]])
    assert MS.masks(maps, 0.21, torch.tensor([4])).tolist() == [[[False, True], [False, True]]]
    single = (torch.tensor([[[0.1, 0.3], [0.2, 0.9]]]), torch.tensor([[[0.5, 0.3], [0.2, 0.9]]]))
    out = MS.summarize({"cam": single, "layercam": single}, torch.tensor([1]), [0.21])["0.21"]
    assert out["foreground"]["cam"]["single"]["mean"] == 0.5 and out["foreground"]["cam"]["multi"]["mean"] == 0.75
    assert out["self_iou"]["cam"]["mean"] == pytest.approx(2 / 3)
    assert out["pair_iou"]["cam|layercam"]["single"]["mean"] == 1.0
