"""References for tests/test_backbones.cpp and tests/test_checkpoint.cpp.

Models come from torchvision and timm, with random (seeded) weights and randomised BatchNorm
statistics so that every parameter and buffer matters. ResNet-50+CBAM is written here from the
official code's layout (github.com/Jongchan/attention-module, MODELS/model_resnet.py + cbam.py) and
the paper's equations; the CIFAR ResNet from He et al. 2016, section 4.2. Weights are saved the way
users have them: `torch.save(model.state_dict())`, a training checkpoint dict, or .safetensors.
Reference logits are computed in double precision from the same (fp32-representable) weights.
"""
import copy
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import reflib


def _randomise_bn(model, gen):
    """Random affine parameters and running statistics for every BatchNorm (eval-mode parity)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.num_batches_tracked.fill_(7)


def _save_state(out, name, state):
    path = os.path.join(out, name)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _logits(model, x):
    """Double-precision logits of an eval-mode copy of `model`."""
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        return m(x.double())


def _parity(out, name, model, gen, size=64):
    _randomise_bn(model, gen)
    model.eval()
    x = torch.randn(2, 3, size, size, generator=gen)
    return x, _logits(model, x)


@reflib.reference
def backbones_torchvision(out):
    import torchvision

    for depth in (18, 50):
        torch.manual_seed(depth)
        gen = torch.Generator().manual_seed(100 + depth)
        model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        x, logits = _parity(out, f"resnet{depth}", model, gen)
        _save_state(out, f"backbones_tv_resnet{depth}_state.pt", model.state_dict())
        reflib.save(out, f"backbones_tv_resnet{depth}", {
            "x": x, "logits": logits,
            "num_params": torch.tensor(sum(p.numel() for p in model.parameters())),
        })


@reflib.reference
def backbones_timm_seresnet50(out):
    import timm

    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(205)
    model = timm.create_model("seresnet50", pretrained=False)
    x, logits = _parity(out, "seresnet50", model, gen)
    _save_state(out, "backbones_timm_seresnet50_state.pt", model.state_dict())
    reflib.save(out, "backbones_timm_seresnet50", {
        "x": x, "logits": logits, "num_params": torch.tensor(sum(p.numel() for p in model.parameters()))})


# ---- ResNet-50 + CBAM in the official code's layout --------------------------------------------

class ChannelGate(nn.Module):
    """CBAM eq. 2: sigmoid(MLP(avgpool(F)) + MLP(maxpool(F))); official names mlp.1 / mlp.3."""

    def __init__(self, c, r=16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(c, c // r), nn.ReLU(), nn.Linear(c // r, c))

    def forward(self, x):
        att = self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True))
        return x * torch.sigmoid(att)[:, :, None, None]


class BasicConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x):
        return self.bn(self.conv(x))


class SpatialGate(nn.Module):
    """CBAM eq. 3 as the official code: sigmoid(BN(conv7x7([max_c, mean_c])))."""

    def __init__(self):
        super().__init__()
        self.spatial = BasicConv()

    def forward(self, x):
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ChannelGate = ChannelGate(c)
        self.SpatialGate = SpatialGate()

    def forward(self, x):
        return self.SpatialGate(self.ChannelGate(x))


class CbamBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))
        self.cbam = CBAM(planes * 4)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.cbam(self.bn3(self.conv3(out)))  # after the last BN, before the residual add
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class CbamResNet50(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            layers = []
            for b in range(blocks):
                layers.append(CbamBottleneck(inplanes, planes, 2 if (b == 0 and i > 0) else 1))
                inplanes = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean((2, 3)))


@reflib.reference
def backbones_cbam_official(out):
    torch.manual_seed(7)
    gen = torch.Generator().manual_seed(207)
    model = CbamResNet50()
    x, logits = _parity(out, "cbam", model, gen)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    # The official training script's checkpoint: DataParallel names inside "state_dict", plus extras.
    _save_state(out, "backbones_cbam_official_checkpoint.pth.tar", {
        "epoch": 90, "arch": "resnet", "best_prec1": 77.3,
        "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
    })
    reflib.save(out, "backbones_cbam_official", {
        "x": x, "logits": logits, "num_params": torch.tensor(sum(p.numel() for p in model.parameters()))})


# ---- CIFAR ResNet (He et al. 2016, section 4.2) ------------------------------------------------

class CifarBlock(nn.Module):
    def __init__(self, inp, out, stride, option):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.option, self.stride, self.pad = option, stride, out - inp
        self.downsample = None
        if option == "B" and (stride != 1 or inp != out):
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def shortcut(self, x):
        if self.downsample is not None:
            return self.downsample(x)
        if self.pad == 0 and self.stride == 1:
            return x
        y = x[:, :, ::self.stride, ::self.stride]  # option A: subsample, then zero channels
        return F.pad(y, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth, option, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        inp = 16
        for i, w in enumerate((16, 32, 64)):
            blocks = [CifarBlock(inp if b == 0 else w, w, 2 if (b == 0 and i > 0) else 1, option) for b in range(n)]
            inp = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        for i in range(3):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean((2, 3)))


@reflib.reference
def backbones_cifar(out):
    from safetensors.torch import save_file

    for option in ("A", "B"):
        torch.manual_seed(20)
        gen = torch.Generator().manual_seed(320)
        model = CifarResNet(20, option)
        x, logits = _parity(out, "cifar", model, gen, size=32)
        reflib.save(out, f"backbones_cifar_resnet20{option}", {
            **reflib.with_state("state.", model), "x": x, "logits": logits,
            "num_params": torch.tensor(sum(p.numel() for p in model.parameters()))})
        # The same weights as a .safetensors file (written by the safetensors package).
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  os.path.join(out, f"backbones_cifar_resnet20{option}_state.safetensors"))
