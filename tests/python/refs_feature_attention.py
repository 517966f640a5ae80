"""References for SelfAttention2d and LocalAttention2d (tests/test_feature_attention.cpp).

Multi-head self-attention is written out as explicit softmax(Q Kᵀ · s + B) V with the bias table
looked up by plain loops; the non-local variant is timm's NonLocalAttn itself; neighborhood
attention is a slow loop over query positions with NATTEN's window-start rule written from its
definition. Nothing here uses attnkit. All in float64.
"""
import math

import torch
import torch.nn.functional as F

import reflib


def _rand(g, *shape, std=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float64) * std


def _conv1x1(x, w, b):
    return F.conv2d(x, w, b)


# ---- multi-head self-attention -------------------------------------------------------------------

def _swin_bias(table, h, w):
    """[heads, L, L] bias: table[(yq-yk+h-1)*(2w-1) + (xq-xk+w-1)] by loops."""
    L = h * w
    rows = []
    for q in range(L):
        row = []
        for k in range(L):
            yq, xq, yk, xk = q // w, q % w, k // w, k % w
            row.append((yq - yk + h - 1) * (2 * w - 1) + (xq - xk + w - 1))
        rows.append(row)
    idx = torch.tensor(rows)
    return table[idx].permute(2, 0, 1)


def _mhsa(x, state, heads, head_dim, bias=None):
    """Returns output and the full attention weights [N, heads, L, L]."""
    n, _, h, w = x.shape
    L = h * w
    qkv = _conv1x1(x, state["qkv.weight"], state.get("qkv.bias"))
    qkv = qkv.reshape(n, 3, heads, head_dim, L)
    q, k, v = qkv[:, 0].transpose(-1, -2), qkv[:, 1].transpose(-1, -2), qkv[:, 2].transpose(-1, -2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    if bias is not None:
        logits = logits + bias
    attn = torch.softmax(logits, dim=-1)
    out = (attn @ v).transpose(-1, -2).reshape(n, heads * head_dim, h, w)
    return _conv1x1(out, state["proj.weight"], state["proj.bias"]), attn


def _with_grads(out, x, state, g):
    """Backprops sum(out * gout) and returns {gout, grad.x, grad.<param>}."""
    gout = _rand(g, *out.shape)
    params = [x] + list(state.values())
    grads = torch.autograd.grad((out * gout).sum(), params)
    res = {"gout": gout, "grad.x": grads[0]}
    for name, gr in zip(state.keys(), grads[1:]):
        res["grad." + name] = gr
    return res


def _mhsa_state(g, c, heads, head_dim, qkv_bias=True):
    inner = heads * head_dim
    s = {"qkv.weight": _rand(g, 3 * inner, c, 1, 1, std=0.6)}
    if qkv_bias:
        s["qkv.bias"] = _rand(g, 3 * inner, std=0.1)
    s["proj.weight"] = _rand(g, c, inner, 1, 1, std=0.4)
    s["proj.bias"] = _rand(g, c, std=0.1)
    return {k: v.requires_grad_() for k, v in s.items()}


@reflib.reference
def feature_attention_mhsa(out):
    g = torch.Generator().manual_seed(11)
    c, heads, hd = 8, 2, 4
    state = _mhsa_state(g, c, heads, hd)
    x = _rand(g, 2, c, 5, 7).requires_grad_()
    y, attn = _mhsa(x, state, heads, hd)
    d = {"x": x, "y": y}
    d.update({"state." + k: v for k, v in state.items()})
    d.update(_with_grads(y, x, state, g))
    # recorded rows: the centre (2, 3) by default, and (0, 0), (4, 6), (1, 5) on request
    d["attn_centre"] = attn[:, :, 2 * 7 + 3].reshape(2, heads, 1, 5, 7)
    d["attn_listed"] = attn[:, :, [0, 34, 12]].reshape(2, heads, 3, 5, 7)
    reflib.save(out, "feature_attention_mhsa", d)


@reflib.reference
def feature_attention_mhsa_head_dim(out):
    # head_dim set explicitly, C (6) not a multiple of heads (4), no qkv bias, H·W = 3·4
    g = torch.Generator().manual_seed(12)
    c, heads, hd = 6, 4, 3
    state = _mhsa_state(g, c, heads, hd, qkv_bias=False)
    x = _rand(g, 1, c, 3, 4).requires_grad_()
    y, _ = _mhsa(x, state, heads, hd)
    d = {"x": x, "y": y}
    d.update({"state." + k: v for k, v in state.items()})
    d.update(_with_grads(y, x, state, g))
    reflib.save(out, "feature_attention_mhsa_head_dim", d)


@reflib.reference
def feature_attention_mhsa_rel_pos(out):
    g = torch.Generator().manual_seed(13)
    c, heads, hd, fh, fw = 8, 2, 4, 5, 7
    state = _mhsa_state(g, c, heads, hd)
    state["relative_position_bias_table"] = _rand(g, (2 * fh - 1) * (2 * fw - 1), heads).requires_grad_()
    d = {"state." + k: v for k, v in state.items()}
    # at feat_size
    x = _rand(g, 2, c, fh, fw).requires_grad_()
    y, attn = _mhsa(x, state, heads, hd, _swin_bias(state["relative_position_bias_table"], fh, fw))
    d.update({"x": x, "y": y, "attn_centre": attn[:, :, 2 * 7 + 3].reshape(2, heads, 1, fh, fw)})
    d.update(_with_grads(y, x, state, g))
    # at another size (4×6): Swin's bicubic resize of each head's (2H-1)×(2W-1) grid
    h2, w2 = 4, 6
    table = state["relative_position_bias_table"].detach()
    grid = table.t().reshape(1, heads, 2 * fh - 1, 2 * fw - 1)
    resized = F.interpolate(grid, size=(2 * h2 - 1, 2 * w2 - 1), mode="bicubic", align_corners=False)
    resized = resized.reshape(heads, -1).t()
    x2 = _rand(g, 2, c, h2, w2)
    y2, attn2 = _mhsa(x2, {k: v.detach() for k, v in state.items()}, heads, hd, _swin_bias(resized, h2, w2))
    d.update({"x_resized": x2, "y_resized": y2, "attn_resized_centre": attn2[:, :, 2 * 6 + 3].reshape(2, heads, 1, h2, w2)})
    reflib.save(out, "feature_attention_mhsa_rel_pos", d)


# ---- non-local (timm) ----------------------------------------------------------------------------

@reflib.reference
def feature_attention_non_local(out):
    from timm.layers.non_local_attn import NonLocalAttn

    g = torch.Generator().manual_seed(14)
    c = 16
    m = NonLocalAttn(c).double()  # rd = make_divisible(16 / 8, 8) = 8
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(_rand(g, *p.shape, std=0.4))
        m.norm.running_mean.copy_(_rand(g, c, std=0.3))
        m.norm.running_var.copy_(torch.rand(c, generator=g, dtype=torch.float64) + 0.5)
    m.eval()
    x = _rand(g, 2, c, 5, 6).requires_grad_()
    y = m(x)
    gout = _rand(g, *y.shape)
    names = [n for n, _ in m.named_parameters()]
    grads = torch.autograd.grad((y * gout).sum(), [x] + [p for _, p in m.named_parameters()])
    # clone: state_dict() shares storage with the module, and the train-mode call below moves the
    # running statistics
    d = {k: v.clone() for k, v in reflib.with_state("state.", m).items()}
    d.update({"x": x, "y": y, "gout": gout, "grad.x": grads[0]})
    d.update({"grad." + n: gr for n, gr in zip(names, grads[1:])})
    # attention rows of the centre (2, 3), from timm's own t/p convs
    with torch.no_grad():
        t = m.t(x).flatten(2).transpose(1, 2)
        p = m.p(x).flatten(2)
        attn = torch.softmax(t @ p * m.scale, dim=2)
    d["attn_centre"] = attn[:, 2 * 6 + 3].reshape(2, 1, 1, 5, 6)
    # train mode (batch statistics) too
    m.train()
    d["y_train"] = m(x)
    reflib.save(out, "feature_attention_non_local", d)


# ---- neighborhood attention ----------------------------------------------------------------------

def _natten_window_start(index, length, kernel_size, dilation):
    """NATTEN's window start (written from its definition: shift inward at the borders, per
    dilation group)."""
    nh = kernel_size // 2
    if dilation <= 1:
        start = max(index - nh, 0)
        if index + nh >= length:
            start += length - index - nh - 1
        return start
    ni = index - nh * dilation
    if ni < 0:
        return index % dilation
    if index + nh * dilation >= length:
        imodd = index % dilation
        a = (length // dilation) * dilation
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * nh * dilation
        return a + imodd - kernel_size * dilation
    return ni


def _neighborhood_attention(x, state, heads, k, dil):
    n, c, h, w = x.shape
    hd = c // heads
    qkv = _conv1x1(x, state["qkv.weight"], state.get("qkv.bias")).reshape(n, 3, heads, hd, h, w)
    q, kk, v = qkv[:, 0] * hd ** -0.5, qkv[:, 1], qkv[:, 2]
    rpb = state.get("rpb")
    out = torch.zeros(n, heads, hd, h, w, dtype=x.dtype)
    out_rows = []
    attn_all = torch.zeros(n, heads, h, w, k, k, dtype=x.dtype)
    for y in range(h):
        sy = _natten_window_start(y, h, k, dil)
        ys = [sy + i * dil for i in range(k)]
        assert all(0 <= yy < h and (yy - y) % dil == 0 for yy in ys)
        for xx in range(w):
            sx = _natten_window_start(xx, w, k, dil)
            xs = [sx + j * dil for j in range(k)]
            keys = kk[:, :, :, ys][:, :, :, :, xs]          # [n, heads, hd, k, k]
            vals = v[:, :, :, ys][:, :, :, :, xs]
            logits = torch.einsum("nhd,nhdij->nhij", q[:, :, :, y, xx], keys)
            if rpb is not None:
                bi = [(yy - y) // dil + k - 1 for yy in ys]
                bj = [(x2 - xx) // dil + k - 1 for x2 in xs]
                logits = logits + rpb[:, bi][:, :, bj]
            attn = torch.softmax(logits.reshape(n, heads, -1), -1).reshape(n, heads, k, k)
            attn_all[:, :, y, xx] = attn.detach()
            out_rows.append(((y, xx), torch.einsum("nhij,nhdij->nhd", attn, vals)))
    out = torch.stack([r for _, r in out_rows], -1).reshape(n, heads * hd, h, w)
    return _conv1x1(out, state["proj.weight"], state["proj.bias"]), attn_all


def _local_case(out, name, seed, k, dil, rpb, shape=(2, 8, 9, 11), heads=2):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    s = {"qkv.weight": _rand(g, 3 * c, c, 1, 1, std=0.6), "qkv.bias": _rand(g, 3 * c, std=0.1),
         "proj.weight": _rand(g, c, c, 1, 1, std=0.4), "proj.bias": _rand(g, c, std=0.1)}
    if rpb:
        s["rpb"] = _rand(g, heads, 2 * k - 1, 2 * k - 1, std=0.5)
    state = {kk: v.requires_grad_() for kk, v in s.items()}
    x = _rand(g, *shape).requires_grad_()
    y, attn = _neighborhood_attention(x, state, heads, k, dil)
    d = {"x": x, "y": y, "attn": attn}
    d.update({"state." + kk: v for kk, v in state.items()})
    d.update(_with_grads(y, x, state, g))
    reflib.save(out, name, d)


@reflib.reference
def feature_attention_local_k3_d1(out):
    _local_case(out, "feature_attention_local_k3_d1", 21, 3, 1, True)


@reflib.reference
def feature_attention_local_k3_d2(out):
    _local_case(out, "feature_attention_local_k3_d2", 22, 3, 2, True)


@reflib.reference
def feature_attention_local_k5_d1(out):
    _local_case(out, "feature_attention_local_k5_d1", 23, 5, 1, True)


@reflib.reference
def feature_attention_local_k3_d1_no_rpb(out):
    _local_case(out, "feature_attention_local_k3_d1_no_rpb", 24, 3, 1, False)


@reflib.reference
def feature_attention_local_k3_d3_no_rpb(out):
    # 9 = k·d exactly along H: every dilation group has exactly k members
    _local_case(out, "feature_attention_local_k3_d3_no_rpb", 25, 3, 3, False)


@reflib.reference
def feature_attention_local_k5_d2(out):
    # W = 11 = 5·2 + 1: groups of 6 and 5 members along W, 10 along H
    _local_case(out, "feature_attention_local_k5_d2", 26, 5, 2, True, shape=(1, 4, 10, 11), heads=1)
