#include <attnkit/modules/functional.h>

#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include <cmath>
#include <limits>
#include <vector>

namespace attnkit::functional {
namespace {

// Validates q/k/v/mask for `fn` and returns the scores' shape [..., Lq, Lk].
std::vector<int64_t> check_inputs(const char* fn, const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, const AttentionFuncOptions& o) {
  TORCH_CHECK(q.defined() && k.defined() && v.defined(), fn, ": query, key and value must be defined tensors");
  TORCH_CHECK(q.dim() >= 2, fn, ": query must have at least 2 dims [..., Lq, D], got shape ", q.sizes());
  TORCH_CHECK(k.dim() == q.dim(), fn, ": key must have the query's rank ", q.dim(), " [..., Lk, D], got shape ",
              k.sizes());
  TORCH_CHECK(v.dim() == q.dim(), fn, ": value must have the query's rank ", q.dim(), " [..., Lk, Dv], got shape ",
              v.sizes());
  TORCH_CHECK(at::isFloatingType(q.scalar_type()), fn, ": query must be floating point, got dtype ",
              q.scalar_type());
  TORCH_CHECK(k.scalar_type() == q.scalar_type(), fn, ": key dtype must equal the query's dtype ", q.scalar_type(),
              ", got ", k.scalar_type());
  TORCH_CHECK(v.scalar_type() == q.scalar_type(), fn, ": value dtype must equal the query's dtype ",
              q.scalar_type(), ", got ", v.scalar_type());
  TORCH_CHECK(k.device() == q.device(), fn, ": key must be on the query's device ", q.device(), ", got ",
              k.device());
  TORCH_CHECK(v.device() == q.device(), fn, ": value must be on the query's device ", q.device(), ", got ",
              v.device());
  const int64_t nd = q.dim();
  TORCH_CHECK(k.sizes().slice(0, nd - 2) == q.sizes().slice(0, nd - 2), fn,
              ": key's leading (batch) dims must equal the query's ", q.sizes().slice(0, nd - 2), ", got ",
              k.sizes().slice(0, nd - 2));
  TORCH_CHECK(v.sizes().slice(0, nd - 2) == q.sizes().slice(0, nd - 2), fn,
              ": value's leading (batch) dims must equal the query's ", q.sizes().slice(0, nd - 2), ", got ",
              v.sizes().slice(0, nd - 2));
  TORCH_CHECK(k.size(-1) == q.size(-1), fn, ": key's last dim must equal the query's D=", q.size(-1), ", got ",
              k.size(-1));
  TORCH_CHECK(v.size(-2) == k.size(-2), fn, ": value's length (dim -2) must equal the key's Lk=", k.size(-2),
              ", got ", v.size(-2));
  TORCH_CHECK(o.dropout() >= 0.0 && o.dropout() <= 1.0, fn, ": dropout must be in [0, 1], got ", o.dropout());

  std::vector<int64_t> scores_shape(q.sizes().begin(), q.sizes().end());
  scores_shape.back() = k.size(-2);
  const auto& m = o.mask();
  if (m.defined()) {
    TORCH_CHECK(m.scalar_type() == torch::kBool || m.scalar_type() == q.scalar_type(), fn,
                ": mask must be bool (true = attend) or of the query's dtype ", q.scalar_type(), ", got ",
                m.scalar_type());
    TORCH_CHECK(m.device() == q.device(), fn, ": mask must be on the query's device ", q.device(), ", got ",
                m.device());
    bool ok = m.dim() <= nd;
    for (int64_t i = 1; ok && i <= m.dim(); ++i) {
      const int64_t ms = m.size(-i), ss = scores_shape[nd - i];
      ok = ms == ss || ms == 1;
    }
    TORCH_CHECK(ok, fn, ": mask of shape ", m.sizes(), " must broadcast to the scores' shape [..., Lq, Lk] = ",
                c10::IntArrayRef(scores_shape));
  }
  return scores_shape;
}

AttentionOutput attention(const char* fn, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const AttentionFuncOptions& o, double default_scale) {
  check_inputs(fn, q, k, v, o);
  const double scale = o.scale().value_or(default_scale);
  auto scores = at::matmul(q, k.transpose(-2, -1));
  if (scale != 1.0) scores = scores * scale;
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  if (o.causal()) {
    auto keep = at::ones({q.size(-2), k.size(-2)}, q.options().dtype(at::kBool)).tril();
    scores = scores.masked_fill(keep.logical_not(), kNegInf);
  }
  const auto& m = o.mask();
  if (m.defined()) {
    scores = m.scalar_type() == at::kBool ? scores.masked_fill(m.logical_not(), kNegInf) : scores + m;
  }
  // Only a mask can empty a whole row (causal keeps key 0 for every query), so the plain softmax is
  // safe otherwise and we skip the extra reduction.
  torch::Tensor weights;
  if (m.defined()) {
    weights = safe_softmax(scores);
  } else if (at::isReducedFloatingType(scores.scalar_type())) {
    weights = at::softmax(scores, -1, at::kFloat).to(scores.scalar_type());
  } else {
    weights = at::softmax(scores, -1);
  }
  if (o.dropout() > 0.0) weights = at::dropout(weights, o.dropout(), /*train=*/true);
  AttentionOutput out;
  out.output = at::matmul(weights, v);
  if (o.need_weights()) out.weights = weights;
  return out;
}

}  // namespace

torch::Tensor safe_softmax(const torch::Tensor& scores) {
  TORCH_CHECK(scores.dim() >= 1, "safe_softmax: scores must have at least 1 dim, got a scalar");
  if (scores.size(-1) == 0) return scores.clone();
  const bool reduced = at::isReducedFloatingType(scores.scalar_type());
  auto s = reduced ? scores.to(at::kFloat) : scores;
  // A row that is -inf everywhere would give 0/0: give it zeros, and keep its gradient finite by
  // zeroing its scores before the softmax (masked_fill passes no gradient to filled entries).
  auto dead = s.amax(-1, /*keepdim=*/true).isneginf();
  auto w = at::softmax(s.masked_fill(dead, 0.0), -1).masked_fill(dead, 0.0);
  return reduced ? w.to(scores.scalar_type()) : w;
}

AttentionOutput scaled_dot_product_attention(const torch::Tensor& query, const torch::Tensor& key,
                                             const torch::Tensor& value, const AttentionFuncOptions& options) {
  const int64_t d = query.defined() && query.dim() >= 1 ? query.size(-1) : 1;
  return attention("scaled_dot_product_attention", query, key, value, options,
                   1.0 / std::sqrt(static_cast<double>(d > 0 ? d : 1)));
}

AttentionOutput dot_product_attention(const torch::Tensor& query, const torch::Tensor& key,
                                      const torch::Tensor& value, const AttentionFuncOptions& options) {
  return attention("dot_product_attention", query, key, value, options, 1.0);
}

}  // namespace attnkit::functional
