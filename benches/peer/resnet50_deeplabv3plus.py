"""resnet50_deeplabv3plus in PyTorch, the peer of flowseg's built-in model (ops/src/models/resnet.rs)
for the GPU step benchmark (`deeplab_lite.py time-gpu`, scripts/gpu-check.sh).

torchvision's ResNet-50 (Bottleneck v1.5: the stride on the 3x3, expansion 4; 3, 4, 6, 3 blocks;
without avgpool and fc) at output stride 16 (layer4 dilated: stride 1, dilation 2, its first
block at dilation 1; a 3x3 conv's padding is its dilation), then the DeepLabv3+ head of
resnet18_deeplabv3plus.py on layer4's 2048 channels and layer1's 256. The state names are
flowseg's without the model prefix (torchvision's for the backbone).

Only timed, not cross-checked against flowseg yet (the resnet18 twin is: deeplab_lite.py check).
Imported by deeplab_lite.py; not run on its own.
"""

import torch.nn as nn
import torch.nn.functional as F

from resnet18_deeplabv3plus import Head, bn, conv


class Bottleneck(nn.Module):
    """torchvision's Bottleneck: conv1 1x1-bn1-relu-conv2 3x3(stride, dilation)-bn2-relu-conv3
    1x1 to 4 * planes-bn3 + (x | downsample(x)), relu."""

    def __init__(self, ci, planes, stride, dilation=1):
        super().__init__()
        self.conv1 = conv(ci, planes, 1)
        self.bn1 = bn(planes)
        self.conv2 = conv(planes, planes, 3, stride, dilation)
        self.bn2 = bn(planes)
        self.conv3 = conv(planes, 4 * planes, 1)
        self.bn3 = bn(4 * planes)
        self.downsample = None
        if stride != 1 or ci != 4 * planes:
            self.downsample = nn.Sequential(conv(ci, 4 * planes, 1, stride), bn(4 * planes))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        s = x if self.downsample is None else self.downsample(x)
        return F.relu(y + s)


class ResNet50DeepLabV3Plus(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = conv(3, 64, 7, stride=2)
        self.bn1 = bn(64)
        ci, dilation = 64, 1
        # torchvision's _make_layer with replace_stride_with_dilation [False, False, True].
        for i, (planes, blocks, stride, replace) in enumerate(
                [(64, 3, 1, False), (128, 4, 2, False), (256, 6, 2, False), (512, 3, 2, True)]):
            previous = dilation
            if replace:
                dilation *= stride
                stride = 1
            layer = [Bottleneck(ci, planes, stride, previous)]
            ci = 4 * planes
            layer += [Bottleneck(ci, planes, 1, dilation) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
        self.head = Head(classes, low=256, high=2048)

    def forward(self, image):
        x = F.relu(self.bn1(self.conv1(image)))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        low_level = self.layer1(x)
        x = self.layer4(self.layer3(self.layer2(low_level)))
        return self.head(x, low_level, image.shape[-2:])
