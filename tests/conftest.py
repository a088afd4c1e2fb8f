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
    """VGG16 with random weights in float64 (exact comparisons), eval mode."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.vgg16().double().eval()


@pytest.fixture(scope="session")
def img64():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64, dtype=torch.float64)
