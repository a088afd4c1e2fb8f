import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# The caller's environment must not change an outcome: CAMKIT_DEBUG=1 turns the command's one-line errors,
# which tests check, into tracebacks (here and in the commands the tests start).
os.environ.pop("CAMKIT_DEBUG", None)

#: Torch threads of every test unless it asks for more with the ``threads`` fixture. One: the tests'
#: tensors are small, and on a 2-core machine (often shared) two spinning OpenMP threads cost far more
#: than they give. Set here at import (module-scoped fixtures run with it) and again around each test.
TEST_THREADS = 1
torch.set_num_threads(TEST_THREADS)


@pytest.fixture(autouse=True)
def _default_torch_threads():
    """Every test starts and ends at TEST_THREADS, so one that changes the thread count cannot leak it."""
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(TEST_THREADS)


@pytest.fixture
def threads():
    """Opt in to another torch thread count for this test: ``threads(n)`` sets it and returns the count
    in effect; the autouse fixture above puts TEST_THREADS back afterwards."""

    def set_threads(n: int) -> int:
        torch.set_num_threads(n)
        return torch.get_num_threads()

    return set_threads


@pytest.fixture(scope="session")
def vgg64():
    """torchvision's VGG16 with random weights in float64 (exact comparisons), eval mode, its classifier
    narrowed: the same three Linear / ReLU / Dropout stages and 1000 classes, hidden width 256 instead
    of 4096. The tests read VGG16's feature layers (``features.N``, the same weights as the full model's:
    drawn first from the same seed); the full classifier's 25088 x 4096 float64 weight (0.8 GB) cost
    more on every forward and backward than all the convolutions at 64 x 64. The hidden layers' weights
    are drawn as VGG draws them (normal, bias 0) with the standard deviation scaled by sqrt(4096 / 256),
    so that logits and gradients keep the full model's magnitudes."""
    import torchvision
    from torch import nn

    torch.manual_seed(0)
    model = torchvision.models.vgg16()
    hidden = 256
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(0.5),
        nn.Linear(hidden, 1000),
    )
    for m in model.classifier:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01 if m.in_features == 512 * 7 * 7 else 0.01 * (4096 / hidden) ** 0.5)
            nn.init.constant_(m.bias, 0)
    return model.double().eval()


@pytest.fixture(scope="session")
def img64():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64, dtype=torch.float64)
