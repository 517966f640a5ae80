#include "metrics.h"

#include "distributed.h"
#include "loader.h"

#include <torch/csrc/autograd/grad_mode.h>
#include <torch/nn/functional/loss.h>

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>

namespace attnkit::train {

namespace {
std::string number(double v) {
  if (!std::isfinite(v)) return "null";
  std::ostringstream s;
  s << std::setprecision(10) << v;
  return s.str();
}
}  // namespace

std::string to_json_line(const EpochRecord& r) {
  std::ostringstream s;
  s << "{\"epoch\": " << r.epoch << ", \"lr\": " << number(r.lr) << ", \"train_loss\": " << number(r.train_loss)
    << ", \"train_acc\": " << number(r.train_acc) << ", \"val_loss\": " << number(r.val_loss)
    << ", \"val_acc\": " << number(r.val_acc) << ", \"seconds\": " << number(r.seconds)
    << ", \"images_per_s\": " << number(r.images_per_s) << "}";
  return s.str();
}

torch::Tensor records_to_tensor(const std::vector<EpochRecord>& records) {
  auto t = torch::empty({static_cast<int64_t>(records.size()), 8}, torch::kDouble);
  auto a = t.accessor<double, 2>();
  for (size_t i = 0; i < records.size(); ++i) {
    const auto& r = records[i];
    const double v[8] = {double(r.epoch), r.lr, r.train_loss, r.train_acc, r.val_loss, r.val_acc, r.seconds, r.images_per_s};
    for (int j = 0; j < 8; ++j) a[i][j] = v[j];
  }
  return t;
}

std::vector<EpochRecord> records_from_tensor(const torch::Tensor& t) {
  std::vector<EpochRecord> out;
  auto a = t.accessor<double, 2>();
  for (int64_t i = 0; i < t.size(0); ++i) {
    out.push_back({static_cast<int64_t>(a[i][0]), a[i][1], a[i][2], a[i][3], a[i][4], a[i][5], a[i][6], a[i][7]});
  }
  return out;
}

torch::Tensor confusion_matrix(const torch::Tensor& labels, const torch::Tensor& predictions, int64_t classes) {
  const auto flat = labels.to(torch::kLong) * classes + predictions.to(torch::kLong);
  return torch::bincount(flat.cpu(), {}, classes * classes).view({classes, classes}).to(torch::kLong);
}

Accuracy accuracy_from_confusion(const torch::Tensor& confusion) {
  const auto c = confusion.to(torch::kDouble);
  Accuracy acc;
  const double total = c.sum().item<double>();
  acc.overall = total > 0 ? c.diagonal().sum().item<double>() / total : std::nan("");
  const auto rows = c.sum(1);
  for (int64_t k = 0; k < c.size(0); ++k) {
    const double n = rows[k].item<double>();
    acc.per_class.push_back(n > 0 ? c[k][k].item<double>() / n : std::nan(""));
  }
  return acc;
}

std::string format_confusion(const torch::Tensor& confusion, const std::vector<std::string>& classes) {
  const int64_t k = confusion.size(0);
  size_t name_w = 4;
  for (const auto& n : classes) name_w = std::max(name_w, n.size());
  const int64_t max_v = confusion.numel() ? confusion.max().item<int64_t>() : 0;
  const int cell = std::max<int>(4, static_cast<int>(std::to_string(max_v).size()) + 1);
  std::ostringstream s;
  s << std::string(name_w, ' ') << "  predicted →\n" << std::left << std::setw(static_cast<int>(name_w)) << "true" << std::right;
  for (int64_t j = 0; j < k; ++j) s << std::setw(cell) << j;
  s << "\n";
  for (int64_t i = 0; i < k; ++i) {
    const std::string name = i < static_cast<int64_t>(classes.size()) ? classes[i] : std::to_string(i);
    s << std::left << std::setw(static_cast<int>(name_w)) << name << std::right;
    for (int64_t j = 0; j < k; ++j) s << std::setw(cell) << confusion[i][j].item<int64_t>();
    s << "   (" << i << ")\n";
  }
  return s.str();
}

EvalResult evaluate(const std::function<torch::Tensor(const torch::Tensor&)>& forward, const torch::Tensor& images,
                    const torch::Tensor& labels, int64_t classes, const Normalization& norm, int64_t batch_size,
                    bool channels_last, bool hflip_tta, const Distributed* dist) {
  torch::NoGradGuard no_grad;
  const int64_t n = labels.size(0);
  const int64_t batches = (n + batch_size - 1) / batch_size;
  // With several processes each runs a contiguous block of the one-process batches, so every image goes
  // through the network in the same batch as in a one-process run (the same logits, bit for bit).
  const int64_t world = dist ? dist->world_size() : 1, rank = dist ? dist->rank() : 0;
  const int64_t begin = std::min(n, batches * rank / world * batch_size);
  const int64_t end = std::min(n, batches * (rank + 1) / world * batch_size);
  LoaderOptions opts;
  opts.batch_size = batch_size;
  opts.norm = norm;
  opts.prefetch = images.is_cuda() ? 0 : 2;
  opts.channels_last = channels_last;
  BatchLoader loader(images.slice(0, begin, end), labels.slice(0, begin, end), opts);
  std::vector<torch::Tensor> pieces;  // kept on the device: one copy to the CPU at the end, no sync per batch
  while (auto batch = loader.next()) {
    auto logits = forward(batch->images).to(torch::kFloat);
    if (hflip_tta) logits = (logits + forward(batch->images.flip({3})).to(torch::kFloat)) / 2;
    pieces.push_back(logits);
  }
  const auto device = torch::TensorOptions().device(images.device());
  torch::Tensor logits = pieces.empty() ? torch::empty({0, classes}, device.dtype(torch::kFloat)) : torch::cat(pieces);
  if (dist) {
    // Every process gets all logits: each fills its rows of a zero matrix and the sum is exact.
    auto all = torch::zeros({n, classes}, torch::kFloat);
    all.slice(0, begin, end).copy_(logits);
    dist->all_reduce_sum(all);
    logits = all.to(images.device());
  }
  // Scored batch by batch, as the one-process run has always summed its loss.
  auto loss_sum = torch::zeros({}, device.dtype(torch::kDouble));
  auto confusion = torch::zeros({classes * classes}, device.dtype(torch::kLong));
  for (int64_t b = 0; b < batches; ++b) {
    const auto l = logits.slice(0, b * batch_size, std::min(n, (b + 1) * batch_size));
    const auto y = labels.slice(0, b * batch_size, std::min(n, (b + 1) * batch_size));
    loss_sum += torch::nn::functional::cross_entropy(l, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                    .to(torch::kDouble);
    confusion += torch::bincount(y * classes + l.argmax(1), {}, classes * classes);
  }
  EvalResult r;
  r.count = n;
  r.loss = r.count > 0 ? loss_sum.item<double>() / static_cast<double>(r.count) : std::nan("");
  r.confusion = confusion.view({classes, classes}).cpu();
  r.logits = logits.cpu();
  return r;
}

}  // namespace attnkit::train
