"""camkit: class activation maps from hooks on named layers of PyTorch vision models."""
from . import fusion, heads, normalize
from .heads import CAMHead, CAMModel, ReCAMHead, load_head, save_head
from .methods import CAM, CAMResult, GradCAM, GradCAMpp, LayerCAM, ReCAM

__version__ = "0.1.0"
__all__ = [
    "CAM", "GradCAM", "GradCAMpp", "LayerCAM", "ReCAM", "CAMResult",
    "CAMHead", "ReCAMHead", "CAMModel", "save_head", "load_head",
    "normalize", "fusion", "heads",
]
