"""References for the sequence-attention modules (tests/test_sequence_attention.cpp).

- torch.nn.functional.scaled_dot_product_attention for attnkit::functional (weights written out in
  plain torch, since torch SDPA does not return them);
- torch.nn.MultiheadAttention (its own random init; the state dict is saved) for attnkit::MultiheadAttention;
- additive (Bahdanau) attention written in plain torch for attnkit::AdditiveAttention.
Everything in float64; each case is saved under the prefix "<case>." of one file per family, with
the gradients of sum(output * grad_out) w.r.t. the inputs (and some parameters).
"""
import math

import torch
import torch.nn.functional as F

import reflib

D64 = torch.float64


def _rand(g, *shape):
    return torch.randn(*shape, generator=g, dtype=D64)


def _keep_mask(g, *shape):
    """Random bool mask (true = keep) with at least one true per row (last dim)."""
    m = torch.rand(*shape, generator=g) > 0.4
    m[..., 0] = True
    return m


def _grads(out, inputs, g):
    grad_out = _rand(g, *out.shape)
    grads = torch.autograd.grad(out, inputs, grad_out)
    return grad_out, grads


def _plain_weights(q, k, scale, bool_keep=None, additive=None, causal=False):
    s = q @ k.transpose(-2, -1) * scale
    if causal:
        tri = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        s = s.masked_fill(~tri, float("-inf"))
    if bool_keep is not None:
        s = s.masked_fill(~bool_keep, float("-inf"))
    if additive is not None:
        s = s + additive
    return torch.softmax(s, -1)


@reflib.reference
def sequence_sdpa(out):
    g = torch.Generator().manual_seed(11)
    res = {}

    def case(name, shape_q, lk, dv, mask=None, scale=None, causal=False, torch_scale=None):
        *lead, lq, d = shape_q
        q = _rand(g, *lead, lq, d).requires_grad_()
        k = _rand(g, *lead, lk, d).requires_grad_()
        v = _rand(g, *lead, lk, dv).requires_grad_()
        m = mask(lead, lq, lk) if mask is not None else None
        ts = torch_scale if torch_scale is not None else scale
        ref_mask, is_causal = m, causal
        if causal and m is not None:  # torch rejects mask + is_causal: give it the combined mask
            tri = torch.ones(lq, lk, dtype=torch.bool).tril()
            ref_mask = (m & tri) if m.dtype == torch.bool else m.masked_fill(~tri, float("-inf"))
            is_causal = False
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=ref_mask, is_causal=is_causal, scale=ts)
        grad_out, (dq, dk, dv_) = _grads(o, (q, k, v), g)
        eff_scale = ts if ts is not None else 1.0 / math.sqrt(d)
        with torch.no_grad():
            w = _plain_weights(q, k, eff_scale,
                               bool_keep=m if m is not None and m.dtype == torch.bool else None,
                               additive=m if m is not None and m.dtype != torch.bool else None, causal=causal)
        t = {"q": q, "k": k, "v": v, "out": o, "weights": w, "grad_out": grad_out, "dq": dq, "dk": dk, "dv": dv_}
        if m is not None:
            t["mask"] = m
        if scale is not None:
            t["scale"] = torch.tensor(scale, dtype=D64)
        res.update({f"{name}.{key}": val for key, val in t.items()})

    case("basic", (2, 3, 5, 6), 7, 5)
    case("scale", (2, 3, 5, 6), 7, 5, scale=0.37)
    case("dot", (2, 4, 5), 3, 2, torch_scale=1.0)  # dot_product_attention: scale 1
    case("causal_wide", (2, 2, 5, 4), 7, 3, causal=True)
    case("causal_tall", (1, 2, 7, 4), 4, 3, causal=True)
    case("bool_2d", (2, 3, 5, 13), 7, 5, mask=lambda lead, lq, lk: _keep_mask(g, lq, lk))
    case("bool_keys", (2, 3, 4, 6), 9, 5, mask=lambda lead, lq, lk: _keep_mask(g, lead[0], 1, 1, lk))
    case("float_full", (2, 3, 5, 6), 7, 5, mask=lambda lead, lq, lk: _rand(g, *lead, lq, lk))
    case("float_heads", (2, 3, 5, 6), 7, 5, mask=lambda lead, lq, lk: _rand(g, 3, 1, lk))
    case("causal_bool", (2, 2, 6, 5), 6, 4, causal=True, mask=lambda lead, lq, lk: _keep_mask(g, lead[0], 1, lq, lk))
    case("single", (3, 1, 13), 1, 3)  # L = 1 on both sides, 3-D input, D = 13
    # A fully masked query row: torch SDPA gives zeros (its math path uses a safe softmax).
    q, k, v = _rand(g, 2, 4, 6), _rand(g, 2, 5, 6), _rand(g, 2, 5, 3)
    m = _keep_mask(g, 2, 4, 5)
    m[1, 2] = False
    res.update({"dead.q": q, "dead.k": k, "dead.v": v, "dead.mask": m,
                "dead.out": F.scaled_dot_product_attention(q, k, v, attn_mask=m)})
    reflib.save(out, "sequence_sdpa", res)


@reflib.reference
def sequence_mha(out):
    torch.manual_seed(5)
    g = torch.Generator().manual_seed(12)
    res = {}

    def case(name, e, h, lq, s, b, batch_first=False, kdim=None, vdim=None, bias=True, add_bias_kv=False,
             add_zero_attn=False, kpm=None, attn=None, average=True, self_attn=False, unbatched=False):
        mha = torch.nn.MultiheadAttention(e, h, bias=bias, add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn,
                                          kdim=kdim, vdim=vdim, batch_first=batch_first, dtype=D64)
        with torch.no_grad():  # make the biases non-zero so that they are tested
            for n, p in mha.named_parameters():
                if "bias" in n:
                    p.copy_(_rand(g, *p.shape) * 0.5)
        kd, vd = kdim or e, vdim or e

        def seq(length, dim):
            if unbatched:
                return _rand(g, length, dim)
            return _rand(g, b, length, dim) if batch_first else _rand(g, length, b, dim)

        query = seq(lq, e).requires_grad_()
        if self_attn:
            key = value = query
        else:
            key = seq(s, kd).requires_grad_()
            value = seq(s, vd).requires_grad_()
        kp = kpm(b, s) if kpm is not None else None
        am = attn(b, h, lq, s) if attn is not None else None
        o, w = mha(query, key, value, key_padding_mask=kp, need_weights=True, attn_mask=am,
                   average_attn_weights=average)
        params = dict(mha.named_parameters())
        wname = "in_proj_weight" if "in_proj_weight" in params else "k_proj_weight"
        inputs = (query,) if self_attn else (query, key, value)
        grad_out, grads = _grads(o, inputs + (params[wname], params["out_proj.weight"]), g)
        t = {"query": query, "out": o, "weights": w, "grad_out": grad_out, "dquery": grads[0],
             "d" + wname: grads[-2], "dout_proj.weight": grads[-1]}
        if not self_attn:
            t.update({"key": key, "value": value, "dkey": grads[1], "dvalue": grads[2]})
        if kp is not None:
            t["key_padding_mask"] = kp
        if am is not None:
            t["attn_mask"] = am
        t.update(reflib.with_state("state.", mha))
        res.update({f"{name}.{key}": val for key, val in t.items()})

    def ignore_mask(*shape):  # bool, true = ignore; never a whole row
        m = torch.rand(*shape, generator=g) < 0.35
        m[..., -1] = False
        return m

    case("self_seqfirst", 8, 2, 5, 5, 3, self_attn=True)
    case("cross_batchfirst_bool", 8, 4, 4, 6, 2, batch_first=True, average=False,
         kpm=lambda b, s: ignore_mask(b, s), attn=lambda b, h, lq, s: ignore_mask(lq, s))
    case("float_masks_3d", 6, 3, 5, 4, 2, kpm=lambda b, s: _rand(g, b, s),
         attn=lambda b, h, lq, s: _rand(g, b * h, lq, s))
    case("kvdim_nobias", 6, 3, 3, 5, 2, batch_first=True, kdim=5, vdim=7, bias=False, average=False,
         kpm=lambda b, s: ignore_mask(b, s))
    case("bias_kv_zero_attn", 8, 2, 4, 3, 2, add_bias_kv=True, add_zero_attn=True,
         kpm=lambda b, s: ignore_mask(b, s), attn=lambda b, h, lq, s: ignore_mask(lq, s))
    case("unbatched", 6, 2, 4, 5, 1, unbatched=True, kpm=lambda b, s: ignore_mask(s))
    case("single", 3, 1, 1, 1, 1, batch_first=True)
    reflib.save(out, "sequence_mha", res)


def _additive(q, k, v, wq, wk, bk, w_score, keep=None):
    """Bahdanau: score[b,i,j] = w_score . tanh(wq q_i + wk k_j + bk); softmax over j; sum_j w v_j."""
    qh = torch.einsum("bid,hd->bih", q, wq)
    kh = torch.einsum("bjd,hd->bjh", k, wk)
    if bk is not None:
        kh = kh + bk
    scores = torch.einsum("bijh,h->bij", torch.tanh(qh[:, :, None, :] + kh[:, None, :, :]), w_score[0])
    if keep is not None:
        scores = scores.masked_fill(~(keep[:, None, :] if keep.dim() == 2 else keep), float("-inf"))
    w = torch.softmax(scores, -1)
    return torch.einsum("bij,bjd->bid", w, v), w


@reflib.reference
def sequence_additive(out):
    g = torch.Generator().manual_seed(13)
    res = {}

    def case(name, b, lq, lk, dq, dk, dv, hidden, bias=False, mask=None):
        q, k, v = _rand(g, b, lq, dq), _rand(g, b, lk, dk), _rand(g, b, lk, dv)
        wq = (_rand(g, hidden, dq) * 0.5).requires_grad_()
        wk = (_rand(g, hidden, dk) * 0.5).requires_grad_()
        bk = (_rand(g, hidden) * 0.5).requires_grad_() if bias else None
        ws = (_rand(g, 1, hidden) * 0.5).requires_grad_()
        for t in (q, k, v):
            t.requires_grad_()
        keep = mask(b, lq, lk) if mask is not None else None
        o, w = _additive(q, k, v, wq, wk, bk, ws, keep)
        params = [wq, wk, ws] + ([bk] if bias else [])
        grad_out, grads = _grads(o, [q, k, v] + params, g)
        t = {"query": q, "key": k, "value": v, "out": o, "weights": w, "grad_out": grad_out,
             "dquery": grads[0], "dkey": grads[1], "dvalue": grads[2],
             "state.query_proj.weight": wq, "state.key_proj.weight": wk, "state.score_proj.weight": ws,
             "dquery_proj.weight": grads[3], "dkey_proj.weight": grads[4], "dscore_proj.weight": grads[5]}
        if bias:
            t.update({"state.key_proj.bias": bk, "dkey_proj.bias": grads[6]})
        if keep is not None:
            t["mask"] = keep
        res.update({f"{name}.{key}": val for key, val in t.items()})

    case("nomask", 2, 3, 5, 4, 6, 3, 7)
    case("key_mask", 3, 4, 6, 5, 3, 2, 4, mask=lambda b, lq, lk: _keep_mask(g, b, lk))
    case("query_mask_bias", 2, 1, 5, 3, 3, 4, 5, bias=True, mask=lambda b, lq, lk: _keep_mask(g, b, lq, lk))
    reflib.save(out, "sequence_additive", res)
