#include "faithfulness_report.h"

#include <algorithm>
#include <iomanip>
#include <set>
#include <sstream>

namespace attnkit::app {

namespace {

std::vector<double> to_vector(const torch::Tensor& t) {
  const auto c = t.detach().to(torch::kCPU, torch::kDouble).contiguous().view(-1);
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

}  // namespace

void FaithfulnessReport::add(const std::string& image, const std::string& method, const std::string& layer,
                             const std::string& class_name, const FaithfulnessScores& s) {
  Row r{image, method, layer, class_name};
  r.score = s.score[0].item<double>();
  r.change = s.confidence_change[0].item<double>();
  r.drop = s.drop[0].item<double>();
  r.increase = s.increase[0].item<double>();
  r.morf = s.morf_mean[0].item<double>();
  r.lerf = s.lerf_mean[0].item<double>();
  r.road = s.road_combined[0].item<double>();
  r.morf_each = to_vector(s.morf.select(1, 0));
  r.lerf_each = to_vector(s.lerf.select(1, 0));
  rows_.push_back(std::move(r));
}

std::vector<FaithfulnessReport::Row> FaithfulnessReport::means() const {
  std::vector<Row> out;
  std::vector<int> counts;
  for (const auto& r : rows_) {
    auto it = std::find_if(out.begin(), out.end(), [&](const Row& m) { return m.method == r.method && m.layer == r.layer; });
    if (it == out.end()) {
      Row m{"", r.method, r.layer, ""};
      m.morf_each.assign(r.morf_each.size(), 0.0);
      m.lerf_each.assign(r.lerf_each.size(), 0.0);
      out.push_back(m);
      counts.push_back(0);
      it = out.end() - 1;
    }
    const size_t i = static_cast<size_t>(it - out.begin());
    ++counts[i];
    it->score += r.score, it->change += r.change, it->drop += r.drop, it->increase += r.increase;
    it->morf += r.morf, it->lerf += r.lerf, it->road += r.road;
    for (size_t k = 0; k < r.morf_each.size(); ++k) it->morf_each[k] += r.morf_each[k], it->lerf_each[k] += r.lerf_each[k];
  }
  for (size_t i = 0; i < out.size(); ++i) {
    const double n = counts[i];
    auto& m = out[i];
    m.score /= n, m.change /= n, m.drop /= n, m.increase /= n, m.morf /= n, m.lerf /= n, m.road /= n;
    for (size_t k = 0; k < m.morf_each.size(); ++k) m.morf_each[k] /= n, m.lerf_each[k] /= n;
  }
  return out;
}

std::string FaithfulnessReport::table(const std::vector<Row>& rows, bool with_class) {
  size_t method_w = 6, layer_w = 5, class_w = 5;
  for (const auto& r : rows) {
    method_w = std::max(method_w, r.method.size());
    layer_w = std::max(layer_w, r.layer.size());
    class_w = std::max(class_w, r.class_name.size());
  }
  std::ostringstream s;
  s << std::left << "  " << std::setw(static_cast<int>(method_w)) << "method" << "  " << std::setw(static_cast<int>(layer_w)) << "layer";
  if (with_class) s << "  " << std::setw(static_cast<int>(class_w)) << "class";
  s << std::right << "  " << std::setw(9) << "change" << std::setw(9) << "drop" << std::setw(9) << "increase" << std::setw(9)
    << "MoRF" << std::setw(9) << "LeRF" << std::setw(9) << "ROAD" << "\n";
  for (const auto& r : rows) {
    s << std::left << "  " << std::setw(static_cast<int>(method_w)) << r.method << "  " << std::setw(static_cast<int>(layer_w)) << r.layer;
    if (with_class) s << "  " << std::setw(static_cast<int>(class_w)) << r.class_name;
    s << std::right << std::fixed << std::setprecision(4) << "  " << std::setw(9) << r.change << std::setw(9) << r.drop
      << std::setw(9) << r.increase << std::setw(9) << r.morf << std::setw(9) << r.lerf << std::setw(9) << r.road << "\n";
  }
  return s.str();
}

std::string FaithfulnessReport::image_table(const std::string& image) const {
  std::vector<Row> rows;
  std::copy_if(rows_.begin(), rows_.end(), std::back_inserter(rows), [&](const Row& r) { return r.image == image; });
  return rows.empty() ? "" : table(rows, true);
}

std::string FaithfulnessReport::summary_table() const {
  if (rows_.empty()) return "";
  std::set<std::string> images;
  for (const auto& r : rows_) images.insert(r.image);
  std::ostringstream s;
  s << "faithfulness, mean over " << images.size() << " image" << (images.size() == 1 ? "" : "s")
    << " (scores are changes of the class's logit: change = s(image x map) - s(image), drop = max(-change, 0), "
       "increase = [change > 0]; MoRF/LeRF = ROAD's mean over percentiles, lower MoRF and higher LeRF are more faithful; "
       "ROAD = (LeRF - MoRF) / 2)\n"
    << table(means(), false);
  return s.str();
}

nlohmann::json FaithfulnessReport::row_json(const Row& r, bool with_image) {
  nlohmann::json j;
  if (with_image) {
    j["image"] = r.image;
    j["class"] = r.class_name;
  }
  j["method"] = r.method;
  j["layer"] = r.layer;
  j["score"] = r.score;
  j["confidence_change"] = r.change;
  j["drop_in_confidence"] = r.drop;
  j["increase_in_confidence"] = r.increase;
  j["road_morf"] = r.morf;
  j["road_lerf"] = r.lerf;
  j["road_combined"] = r.road;
  j["road_morf_per_percentile"] = r.morf_each;
  j["road_lerf_per_percentile"] = r.lerf_each;
  return j;
}

nlohmann::json FaithfulnessReport::json() const {
  nlohmann::json j;
  j["scores"] = "pytorch-grad-cam's metrics on the target class's logit: confidence change s(x*map) - s(x), its drop and "
                "increase; ROAD MoRF and LeRF (noisy linear imputation) s(imputed) - s(x) per percentile and their means; "
                "road_combined = (LeRF - MoRF) / 2";
  j["percentiles"] = options_.percentiles;
  j["noise"] = options_.noise;
  j["maps"] = nlohmann::json::array();
  for (const auto& r : rows_) j["maps"].push_back(row_json(r, true));
  j["mean"] = nlohmann::json::array();
  for (const auto& r : means()) j["mean"].push_back(row_json(r, false));
  return j;
}

}  // namespace attnkit::app
