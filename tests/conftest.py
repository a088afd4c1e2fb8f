import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
