"""torchvision models at a fraction of their width, for tests whose cost grows with the channels
(one forward per channel, float64 hand computations) and whose checks do not depend on the width.

Same classes (``torchvision.models.ResNet``, ``torchvision.models.segmentation.FCN``), blocks, module
names, strides, dilations and forward code as the full models: only each stage's channel count is
divided (and the final Linear / head sized to match).
"""
from __future__ import annotations

import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


class NarrowResNet(torchvision.models.ResNet):
    """``torchvision.models.ResNet`` with each stage's width divided by ``divisor`` (layer1..layer4 of
    ResNet18: 8, 16, 32, 64 channels at ``divisor=8``, instead of 64..512); the stem keeps 64."""

    def __init__(self, block, layers, divisor: int = 8, num_classes: int = 1000, **kw):
        self._divisor = divisor
        super().__init__(block, layers, num_classes=num_classes, **kw)
        self.fc = nn.Linear(512 * block.expansion // divisor, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        return super()._make_layer(block, planes // self._divisor, blocks, stride, dilate)


def narrow_resnet18(num_classes: int, divisor: int = 8) -> NarrowResNet:
    return NarrowResNet(BasicBlock, [2, 2, 2, 2], divisor, num_classes)


def narrow_fcn_resnet50(num_classes: int, divisor: int = 8) -> nn.Module:
    """torchvision's FCN-ResNet50 as ``fcn_resnet50(weights=None, weights_backbone=None, aux_loss=False)``
    builds it (the ResNet50 backbone with layer3 and layer4 dilated, output stride 8, ``FCNHead``,
    bilinear upsampling to the input, ``{"out": (B, C, H, W)}``), each stage ``divisor`` times narrower."""
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    backbone = NarrowResNet(Bottleneck, [3, 4, 6, 3], divisor, replace_stride_with_dilation=[False, True, True])
    backbone = IntermediateLayerGetter(backbone, return_layers={"layer4": "out"})
    return FCN(backbone, FCNHead(2048 // divisor, num_classes), None)
