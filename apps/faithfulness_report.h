// What `attnkit visualize --score` prints: the faithfulness scores of every map (faithfulness.h), per
// image and averaged per method and layer over the images, as a table or as one JSON object. Lets a
// user pick the method whose maps the model's scores follow, instead of the prettiest picture.
#pragma once

#include <attnkit/backbones/faithfulness.h>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace attnkit::app {

class FaithfulnessReport {
 public:
  explicit FaithfulnessReport(FaithfulnessOptions options) : options_(std::move(options)) {}

  /// One map's scores (`scores` of one image: every tensor has one entry, or one column).
  void add(const std::string& image, const std::string& method, const std::string& layer, const std::string& class_name,
           const FaithfulnessScores& scores);

  /// The rows of `image`, as an indented table with a header.
  std::string image_table(const std::string& image) const;
  /// Every method and layer's mean over the images, as a table (empty when nothing was scored).
  std::string summary_table() const;
  /// {"scores": "...what they are...", "percentiles": [...], "noise": x, "maps": [one object per map],
  ///  "mean": [one object per method and layer]}.
  nlohmann::json json() const;

 private:
  struct Row {
    std::string image, method, layer, class_name;
    double score = 0, change = 0, drop = 0, increase = 0, morf = 0, lerf = 0, road = 0;
    std::vector<double> morf_each, lerf_each;
  };
  std::vector<Row> means() const;
  static nlohmann::json row_json(const Row& r, bool with_image);
  static std::string table(const std::vector<Row>& rows, bool with_class);

  FaithfulnessOptions options_;
  std::vector<Row> rows_;
};

}  // namespace attnkit::app
