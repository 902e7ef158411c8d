"""resnet18_deeplabv3plus in PyTorch, the peer of flowseg's built-in model (ops/src/models/resnet.rs).

torchvision's ResNet-18 (BasicBlock, v1.5 naming, without avgpool and fc) at output stride 16
(layer4 dilated: stride 1, dilation 2; its first block keeps dilation 1), then DeepLabv3+: ASPP
(`head.aspp.convs.0` 1x1, `.1`-`.3` 3x3 at dilation 6, 12, 18, `.4` image pooling, concatenated in
that order, `head.aspp.project` 1x1; torchvision's Dropout(0.5) omitted as flowseg omits it), the
decoder (`head.reduce` 1x1 to 48 channels on layer1's output, the ASPP output upsampled to its
size, cat [upsampled, skip], `head.fuse` two 3x3 conv-BN-ReLU to 256), `head.classifier` 1x1 with
bias, bilinear upsampling (align_corners=False) to the input's size. The state names are flowseg's
without the model prefix, so `load_state_dict` takes flowseg's exported initial state.

As in flowseg (and unlike torchvision, which refuses dilation > 1 in a BasicBlock), both 3x3
convs of a block take the block's dilation. Every ReLU is `F.relu`, so the cross-check of
deeplab_lite.py can record their inputs. Imported by deeplab_lite.py; not run on its own.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-5
MOMENTUM = 0.1


def bn(c):
    return nn.BatchNorm2d(c, eps=EPS, momentum=MOMENTUM)


def conv(ci, co, k, stride=1, dilation=1, bias=False):
    # flowseg's "same" padding: dilation * (k - 1) / 2 (3 for the 7x7 stem).
    return nn.Conv2d(ci, co, k, stride=stride, padding=dilation * (k - 1) // 2,
                     dilation=dilation, bias=bias)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv1-bn1-relu-conv2-bn2 + (x | downsample(x)), relu; both 3x3
    convs at `dilation` (deeplab_lite.py uses it undilated)."""

    def __init__(self, ci, planes, stride, dilation=1):
        super().__init__()
        self.conv1 = conv(ci, planes, 3, stride, dilation)
        self.bn1 = bn(planes)
        self.conv2 = conv(planes, planes, 3, 1, dilation)
        self.bn2 = bn(planes)
        self.downsample = None
        if stride != 1 or ci != planes:
            self.downsample = nn.Sequential(conv(ci, planes, 1, stride), bn(planes))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.downsample is None else self.downsample(x)
        return F.relu(y + s)


class CBR(nn.Sequential):
    """nn.Sequential(conv, BN) numbered from `first` (the ReLU, parameter-free, is applied in
    `forward` as module `first + 2` would be)."""

    def __init__(self, ci, co, k, dilation=1, first=0):
        super().__init__()
        if first:
            self.add_module("0", nn.Identity())  # ASPPPooling's pool sits at index 0
        self.add_module(str(first), conv(ci, co, k, dilation=dilation))
        self.add_module(str(first + 1), bn(co))

    def forward(self, x):
        return F.relu(super().forward(x))


class ASPP(nn.Module):
    def __init__(self, ci, rates=(6, 12, 18), channels=256):
        super().__init__()
        branches = [CBR(ci, channels, 1)]
        branches += [CBR(ci, channels, 3, dilation=r) for r in rates]
        branches.append(CBR(ci, channels, 1, first=1))  # image pooling
        self.convs = nn.ModuleList(branches)
        self.project = CBR(5 * channels, channels, 1)

    def forward(self, x):
        outs = [b(x) for b in self.convs[:4]]
        pooled = self.convs[4](F.adaptive_avg_pool2d(x, 1))
        outs.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear",
                                  align_corners=False))
        return self.project(torch.cat(outs, 1))


class Head(nn.Module):
    def __init__(self, classes, low=64, high=512):
        super().__init__()
        self.aspp = ASPP(high)
        self.reduce = CBR(low, 48, 1)
        self.fuse = nn.Sequential()
        self.fuse.add_module("0", conv(256 + 48, 256, 3))
        self.fuse.add_module("1", bn(256))
        self.fuse.add_module("3", conv(256, 256, 3))
        self.fuse.add_module("4", bn(256))
        self.classifier = nn.Conv2d(256, classes, 1, bias=True)

    def forward(self, x, low_level, size):
        features = self.aspp(x)
        skip = self.reduce(low_level)
        up = F.interpolate(features, size=low_level.shape[-2:], mode="bilinear",
                           align_corners=False)
        y = torch.cat([up, skip], 1)
        y = F.relu(self.fuse[1](self.fuse[0](y)))
        y = F.relu(self.fuse[3](self.fuse[2](y)))
        y = self.classifier(y)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class ResNet18DeepLabV3Plus(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = conv(3, 64, 7, stride=2)
        self.bn1 = bn(64)
        ci, dilation = 64, 1
        # torchvision's _make_layer with replace_stride_with_dilation [False, False, True].
        for i, (planes, stride, replace) in enumerate(
                [(64, 1, False), (128, 2, False), (256, 2, False), (512, 2, True)]):
            previous = dilation
            if replace:
                dilation *= stride
                stride = 1
            blocks = [BasicBlock(ci, planes, stride, previous),
                      BasicBlock(planes, planes, 1, dilation)]
            ci = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.head = Head(classes)

    def forward(self, image):
        x = F.relu(self.bn1(self.conv1(image)))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        low_level = self.layer1(x)
        x = self.layer4(self.layer3(self.layer2(low_level)))
        return self.head(x, low_level, image.shape[-2:])


def is_resnet18(state):
    return "conv1.weight" in state and "head.classifier.weight" in state


def classes_of(state):
    return state["head.classifier.weight"].shape[0]
