"""No host-device synchronization inside a call.

Every ``.item()``, ``bool(tensor)``, ``int(tensor)`` or data-dependent shape
makes the host wait for an accelerator. On the CPU they still show up as
dispatched ops (``aten::_local_scalar_dense`` and the data-dependent ops
below), so counting them under a ``TorchDispatchMode`` here guards the GPU
path. Allowed: exactly one ``Tensor.tolist()`` per call, the one read of the
call's validation flags (non-finite input or output per image, target range,
CAM's head check), which ``tolist`` does without a dispatched op on the CPU;
it is counted by wrapping ``Tensor.tolist``.
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode

import camkit

SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "is_nonzero", "equal", "_assert_async",
            "item")


class SyncSpy(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__ if hasattr(func, "__name__") else str(func)
        if any(op == name.split(".")[0] for op in SYNC_OPS):
            self.syncs.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def count(monkeypatch, fn):
    reads = []
    real = torch.Tensor.tolist

    def spy_tolist(t):
        reads.append(tuple(t.shape))
        return real(t)

    monkeypatch.setattr(torch.Tensor, "tolist", spy_tolist)
    with SyncSpy() as spy:
        fn()
    monkeypatch.setattr(torch.Tensor, "tolist", real)
    return spy.syncs, reads


CASES = {
    "gradcam top-1": lambda m: camkit.GradCAM(m, ["layer4"]),
    "gradcampp top-1": lambda m: camkit.GradCAMpp(m, ["layer4"]),
    "layercam weighted": lambda m: camkit.LayerCAM(m, ["layer2", "layer3", "layer4"], fusion="weighted",
                                                   weights=[0.4, 0.4, 0.2]),
    "layercam max": lambda m: camkit.LayerCAM(m, ["layer3", "layer4"]),
    "cam": lambda m: camkit.CAM(m, layers="layer4", fc="fc"),
}


CALLS = ["top1", "top3", "device targets", "callable"]


@pytest.mark.parametrize(("case", "call"), [(case, call) for case in sorted(CASES) for call in CALLS
                                            if (case, call) != ("cam", "callable")])  # CAM: class targets only
def test_a_call_reads_the_device_once(monkeypatch, model, case, call):
    cam = CASES[case](model)
    x = torch.randn(2, 3, 64, 64)
    targets = camkit.targets.ClassScore(torch.tensor([[1, 2], [3, 4]]))
    targets._host = None  # as for an index tensor on an accelerator: range-checked on the device
    args = {"top1": {}, "top3": {"topk": 3}, "device targets": {"targets": targets},
            "callable": {"targets": lambda s: s[:, 1] - s[:, 2]}}[call]

    def run():
        res = cam(x, **args)
        res.maps  # noqa: B018 - normalization, upsampling and fusion included

    syncs, reads = count(monkeypatch, run)
    assert syncs == [], f"host-device synchronizations during the call: {syncs}"
    assert len(reads) == 1, f"expected one read of the validation flags, got {reads}"
