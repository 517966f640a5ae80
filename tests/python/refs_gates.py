"""References for the CNN gates (tests/test_gates.cpp): SE, ECA, CBAM's channel and spatial gates.

timm's SEModule, EcaModule and CbamModule are used as they are. The official CBAM formulation
(github.com/Jongchan/attention-module, MODELS/cbam.py: shared Linear MLP over avg- and max-pooled
descriptors, spatial conv over [max, mean] followed by BatchNorm2d(eps 1e-5, momentum 0.01)) is
written out below with plain torch ops, keeping the official parameter names (ChannelGate.mlp.1 /
.mlp.3, SpatialGate.spatial.conv / .bn) so the C++ test also exercises the documented name mapping.

Every file holds one or more cases, keys "<case>.<what>":
  x        input (double)            g        upstream gradient for y
  y        output                    map      the attention map the block records
  gx       dL/dx with L = sum(y * g) grad.<p> dL/d(parameter p), p in the reference's naming
  state.<k> the reference's parameters and buffers (reference naming)
"""
import math

import torch
import torch.nn.functional as F
from timm.layers.cbam import CbamModule
from timm.layers.eca import EcaModule
from timm.layers.squeeze_excite import SEModule

import reflib

DT = torch.float64


def _randomise(module, gen, scale=0.5):
    """Non-trivial parameters and BatchNorm statistics (the defaults would hide mistakes)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT) * scale)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=DT) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=DT) + 0.5)


def _case(out, name, module, x, map_fn, gen):
    """Runs `module` on x (eval unless already training), returns the case's tensors."""
    x = x.clone().requires_grad_(True)
    y = module(x)
    g = torch.randn(y.shape, generator=gen, dtype=DT)
    params = dict(module.named_parameters())
    grads = torch.autograd.grad(y, [x] + list(params.values()), g, allow_unused=True)
    with torch.no_grad():
        amap = map_fn(x.detach())
    res = {f"{name}.x": x.detach(), f"{name}.y": y.detach(), f"{name}.g": g, f"{name}.map": amap,
           f"{name}.gx": grads[0]}
    for (k, _), gr in zip(params.items(), grads[1:]):
        if gr is not None:
            res[f"{name}.grad.{k}"] = gr
    res.update({f"{name}.state.{k}": v for k, v in module.state_dict().items()})
    out.update(res)


# ---- squeeze-and-excitation (timm SEModule) ---------------------------------------------------------

def _se_map(m):
    return lambda x: torch.sigmoid(m.fc2(F.relu(m.fc1(x.mean((2, 3), keepdim=True))))).flatten(1)


@reflib.reference
def gates_se(out_dir):
    gen = torch.Generator().manual_seed(101)
    out = {}
    # (case, channels, input shape, SEModule kwargs); hidden widths 8 (64/16 rounded to 8), 8, 8, 4
    for case, c, shape, kw in [("c64", 64, (2, 64, 5, 7), {}),
                               ("c37", 37, (3, 37, 4, 4), {}),
                               ("c1", 1, (2, 1, 3, 2), {}),
                               ("hw1", 48, (4, 48, 1, 1), {"rd_channels": 4})]:
        m = SEModule(c, **kw).to(DT).eval()
        _randomise(m, gen)
        _case(out, case, m, torch.randn(shape, generator=gen, dtype=DT), _se_map(m), gen)
    reflib.save(out_dir, "gates_se", out)


# ---- ECA (timm EcaModule; the paper's k = 1 case written out) ---------------------------------------

def _eca_map(m):
    return lambda x: torch.sigmoid(m.conv(x.mean((2, 3)).unsqueeze(1))).squeeze(1)


class _EcaPlain(torch.nn.Module):
    """ECA with an explicit kernel size, from the paper (eq. 12 for k, zero-padded conv across C)."""

    def __init__(self, k):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x):
        return x * _eca_map(self)(x)[:, :, None, None]


@reflib.reference
def gates_eca(out_dir):
    gen = torch.Generator().manual_seed(202)
    out = {}
    # timm's k: C=64 -> 3, C=256 -> 5, C=4 -> 3 (timm clamps; the paper gives 1)
    for case, c, shape in [("c64", 64, (2, 64, 5, 3)), ("c256", 256, (2, 256, 3, 4)), ("c4timm", 4, (3, 4, 2, 5))]:
        m = EcaModule(channels=c).to(DT).eval()
        _randomise(m, gen)
        _case(out, case, m, torch.randn(shape, generator=gen, dtype=DT), _eca_map(m), gen)
    # The paper's k for C=4 and C=1: t = int(|log2 C + 1| / 2) = 1 and 0 -> k = 1
    for case, c, shape in [("c4paper", 4, (3, 4, 2, 5)), ("c1", 1, (2, 1, 3, 3))]:
        t = int(abs(math.log2(c) + 1) / 2)
        m = _EcaPlain(t if t % 2 else t + 1).to(DT).eval()
        _randomise(m, gen)
        _case(out, case, m, torch.randn(shape, generator=gen, dtype=DT), _eca_map(m), gen)
    reflib.save(out_dir, "gates_eca", out)


# ---- CBAM as timm's CbamModule --------------------------------------------------------------------------

def _timm_cbam_map(m):
    def f(x):
        x = m.channel(x)
        a = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return torch.sigmoid(m.spatial.conv(a))
    return f


@reflib.reference
def gates_cbam_timm(out_dir):
    gen = torch.Generator().manual_seed(303)
    out = {}
    # C=24: timm's hidden width is round(24/16) = 2 (the official floor would give 1).
    for case, c, shape in [("c24", 24, (2, 24, 6, 5)), ("hw1", 32, (3, 32, 1, 1))]:
        m = CbamModule(c).to(DT).eval()
        _randomise(m, gen)
        assert m.channel.fc1.weight.shape[0] == 2
        _case(out, case, m, torch.randn(shape, generator=gen, dtype=DT), _timm_cbam_map(m), gen)
    reflib.save(out_dir, "gates_cbam_timm", out)


# ---- CBAM as the official code (written out) ------------------------------------------------------------

class _OfficialChannelGate(torch.nn.Module):
    def __init__(self, c, r, pools):
        super().__init__()
        hidden = max(1, c // r)  # the official c // r, kept >= 1 so that C < r is defined
        self.mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, c))
        self.pools = pools

    def gate(self, x):
        h, w = x.shape[2], x.shape[3]
        total = 0
        for p in self.pools:
            pooled = F.avg_pool2d(x, (h, w)) if p == "avg" else F.max_pool2d(x, (h, w))
            total = total + self.mlp(pooled)
        return torch.sigmoid(total)

    def forward(self, x):
        return x * self.gate(x)[:, :, None, None]


class _OfficialBasicConv(torch.nn.Module):
    def __init__(self, k):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 1, k, padding=(k - 1) // 2, bias=False)
        self.bn = torch.nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True)


class _OfficialSpatialGate(torch.nn.Module):
    def __init__(self, k=7):
        super().__init__()
        self.spatial = _OfficialBasicConv(k)

    def gate(self, x):
        pooled = torch.cat([torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)], 1)
        return torch.sigmoid(self.spatial.bn(self.spatial.conv(pooled)))

    def forward(self, x):
        return x * self.gate(x)


class _OfficialCBAM(torch.nn.Module):
    def __init__(self, c, r=16, pools=("avg", "max"), no_spatial=False, k=7):
        super().__init__()
        self.ChannelGate = _OfficialChannelGate(c, r, pools)
        self.no_spatial = no_spatial
        if not no_spatial:
            self.SpatialGate = _OfficialSpatialGate(k)

    def attention_map(self, x):
        y = self.ChannelGate(x)
        return self.ChannelGate.gate(x) if self.no_spatial else self.SpatialGate.gate(y)

    def forward(self, x):
        y = self.ChannelGate(x)
        return y if self.no_spatial else self.SpatialGate(y)


@reflib.reference
def gates_cbam_official(out_dir):
    gen = torch.Generator().manual_seed(404)
    out = {}
    cases = [  # (case, input shape, constructor kwargs); hidden widths: 2, 1 (C < r), 4, 4, 4, 3, 2
        ("c37", (2, 37, 5, 6), {}),
        ("c1", (2, 1, 4, 3), {}),
        ("avg", (2, 64, 4, 4), {"pools": ("avg",)}),
        ("max", (2, 64, 4, 4), {"pools": ("max",)}),
        ("nosp", (2, 64, 3, 5), {"no_spatial": True}),
        ("k3", (2, 48, 5, 4), {"k": 3}),
        ("hw1", (3, 32, 1, 1), {}),
    ]
    for case, shape, kw in cases:
        m = _OfficialCBAM(shape[1], **kw).to(DT).eval()
        _randomise(m, gen)
        _case(out, case, m, torch.randn(shape, generator=gen, dtype=DT), m.attention_map, gen)
    # Training mode: the BatchNorm uses batch statistics and moves its running ones by momentum 0.01.
    m = _OfficialCBAM(24).to(DT).train()
    _randomise(m, gen)
    x = torch.randn((3, 24, 5, 4), generator=gen, dtype=DT)
    out.update({f"train.state.{k}": v.clone() for k, v in m.state_dict().items()})
    xg = x.clone().requires_grad_(True)
    y = m(xg)
    g = torch.randn(y.shape, generator=gen, dtype=DT)
    (gx,) = torch.autograd.grad(y, [xg], g)
    out.update({"train.x": x, "train.y": y.detach(), "train.g": g, "train.gx": gx,
                "train.running_mean": m.SpatialGate.spatial.bn.running_mean.clone(),
                "train.running_var": m.SpatialGate.spatial.bn.running_var.clone()})
    reflib.save(out_dir, "gates_cbam_official", out)
