// faithfulness(): pytorch-grad-cam's metrics (confidence change, drop, increase; ROAD MoRF/LeRF with
// the noisy linear imputation) against grad-cam itself on the same model, input and maps
// (tests/python/refs_explain.py: explain_faithfulness), the imputation against a direct solve and
// grad-cam's imputed image, NumPy's percentile, and errors.
#include <attnkit/attnkit.h>
#include <attnkit/backbones/faithfulness.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>

#include "testing.h"

using namespace attnkit;
using attnkit::testing::all_close;
using attnkit::testing::error_of;
using ::testing::HasSubstr;

namespace {

TEST(Percentile, IsNumpysLinearInterpolation) {
  // np.percentile([[4, 1, 3, 2, 10]], p): sorted 1 2 3 4 10, position p/100·4.
  const auto v = torch::tensor({4.f, 1.f, 3.f, 2.f, 10.f}).view({1, 5});
  EXPECT_DOUBLE_EQ(percentile_rows(v, 0).item<double>(), 1.0);
  EXPECT_DOUBLE_EQ(percentile_rows(v, 50).item<double>(), 3.0);
  EXPECT_DOUBLE_EQ(percentile_rows(v, 90).item<double>(), 4.0 + 0.6 * 6.0);
  EXPECT_DOUBLE_EQ(percentile_rows(v, 100).item<double>(), 10.0);
}

TEST(NoisyLinearImpute, SolvesTheNeighbourAverageSystem) {
  torch::manual_seed(3);
  const auto image = torch::randn({2, 3, 9, 7}, torch::kDouble);
  const auto keep = torch::rand({2, 9, 7}) > 0.6;
  const auto filled = noisy_linear_impute(image, keep, 0.0);
  // Kept pixels unchanged; every imputed pixel is the weighted mean of its in-image neighbours
  // (weights 1/6 edges, 1/12 corners, renormalised at the border).
  EXPECT_TRUE(torch::equal(torch::where(keep.unsqueeze(1), filled, image), image));
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t y = 0; y < 9; ++y)
      for (int64_t x = 0; x < 7; ++x) {
        if (keep[n][y][x].item<bool>()) continue;
        auto sum = torch::zeros({3}, torch::kDouble);
        double weights = 0;
        for (int dy = -1; dy <= 1; ++dy)
          for (int dx = -1; dx <= 1; ++dx) {
            if ((dy == 0 && dx == 0) || y + dy < 0 || y + dy >= 9 || x + dx < 0 || x + dx >= 7) continue;
            const double w = (dy == 0 || dx == 0) ? 1.0 / 6 : 1.0 / 12;
            sum += w * filled[n].select(1, y + dy).select(1, x + dx);
            weights += w;
          }
        // CG to a relative residual of 1e-12 in float64 on unit-scale data.
        EXPECT_TRUE(all_close(filled[n].select(1, y).select(1, x), sum / weights, 1e-9)) << n << " " << y << " " << x;
      }
  // Noise lands on the imputed pixels only, reproducibly per seed.
  auto g1 = at::detail::createCPUGenerator(5), g2 = at::detail::createCPUGenerator(5);
  const auto noisy = noisy_linear_impute(image, keep, 0.5, g1);
  EXPECT_TRUE(torch::equal(noisy, noisy_linear_impute(image, keep, 0.5, g2)));
  EXPECT_TRUE(torch::equal(torch::where(keep.unsqueeze(1), noisy, image), image));
  EXPECT_GT((noisy - filled).abs().max().item<double>(), 0.1);
}

struct Reference {
  std::map<std::string, torch::Tensor> refs;
  std::shared_ptr<Backbone> model;
};

Reference load_reference() {
  Reference r;
  r.refs = attnkit::testing::load_refs("explain_faithfulness");
  const auto weights = attnkit::testing::load_refs("explain_gradcam");
  if (r.refs.empty() || weights.empty()) return r;
  r.model = make_model("resnet18", 1000);
  attnkit::testing::load_into(r.model->module(), attnkit::testing::with_prefix(weights, "state."));
  r.model->module().eval();
  return r;
}

TEST(FaithfulnessPytorchGradCam, ConfidenceAndRoadScoresEqualGradCamsMetrics) {
  const auto r = load_reference();
  if (r.refs.empty()) GTEST_SKIP() << "no Python references on this machine";
  const auto& x = r.refs.at("x");
  const auto& cams = r.refs.at("cams");
  // grad-cam's imputation (scipy's direct solve) of image 0 at MoRF 50%: the same system solved by CG.
  const auto keep = cams[0] < percentile_rows(cams[0].view({1, -1}), 50).to(torch::kFloat).item<float>();
  // The imputed values are weighted means of unit-scale pixels, rounded to float32 on both sides.
  EXPECT_TRUE(all_close(noisy_linear_impute(x.slice(0, 0, 1), keep.unsqueeze(0), 0.0)[0], r.refs.at("imputed_morf50"), 1e-5));

  FaithfulnessOptions o;
  o.noise = 0;  // the reference's imputer has noise=0: no random part
  o.batch_size = 5;
  const auto s = faithfulness(*r.model, x, cams, r.refs.at("targets"), o);
  // Scores are differences of float32 logits of the same network and images (imputed to 1e-5):
  // rounding_tolerance over the network's path at the logits' scale, twice (both sides), per logit,
  // and both logits of a difference; plus the imputation's 1e-5 through the network's gain (≤ the
  // logits' scale over the input's, taken as max|logit|).
  const double scale = std::max(1.0, attnkit::testing::max_abs(s.score));
  const double tol = 2 * attnkit::testing::float32_pair_tolerance(attnkit::testing::path_length(r.model->module()), scale).atol;
  EXPECT_TRUE(all_close(s.confidence_change, r.refs.at("change"), tol));
  EXPECT_TRUE(all_close(s.drop, r.refs.at("drop"), tol));
  EXPECT_TRUE(torch::equal(s.increase, r.refs.at("increase")));
  EXPECT_TRUE(all_close(s.morf, r.refs.at("morf"), tol + 1e-5 * scale));
  EXPECT_TRUE(all_close(s.lerf, r.refs.at("lerf"), tol + 1e-5 * scale));
  EXPECT_TRUE(all_close(s.morf_mean, r.refs.at("morf").mean(0), tol + 1e-5 * scale));
  EXPECT_TRUE(all_close(s.road_combined, (r.refs.at("lerf").mean(0) - r.refs.at("morf").mean(0)) / 2, tol + 1e-5 * scale));

  // With the imputation's noise (pytorch-grad-cam's default 0.01) the scores move a little and are
  // reproducible per seed (one percentile is enough to see it).
  FaithfulnessOptions noisy;
  noisy.percentiles = {50};
  const auto a = faithfulness(*r.model, x, cams, r.refs.at("targets"), noisy);
  const auto b = faithfulness(*r.model, x, cams, r.refs.at("targets"), noisy);
  EXPECT_TRUE(torch::equal(a.morf, b.morf));
  EXPECT_FALSE(torch::equal(a.morf[0], s.morf[4]));  // percentile 50 without noise
}

TEST(FaithfulnessErrors, NameTheArgument) {
  torch::manual_seed(0);
  auto model = make_model("resnet20", 10);
  model->module().eval();
  const auto x = torch::randn({2, 3, 16, 16});
  const auto cams = torch::rand({2, 16, 16});
  const auto t = torch::tensor({1, 2});
  EXPECT_THAT(error_of([&] { faithfulness(*model, x, cams.slice(1, 0, 8), t); }), HasSubstr("cams must be [N, H, W] = [2, 16, 16]"));
  EXPECT_THAT(error_of([&] { faithfulness(*model, x, cams, torch::tensor({1})); }), HasSubstr("targets must be [N] = [2]"));
  EXPECT_THAT(error_of([&] { faithfulness(*model, x, cams, torch::tensor({1, 10})); }), HasSubstr("a target is outside [0, 10)"));
  FaithfulnessOptions o;
  o.percentiles = {0};
  EXPECT_THAT(error_of([&] { faithfulness(*model, x, cams, t, o); }), HasSubstr("percentile 0 is outside (0, 100)"));
  o = {};
  o.batch_size = 0;
  EXPECT_THAT(error_of([&] { faithfulness(*model, x, cams, t, o); }), HasSubstr("batch_size must be at least 1"));
}

}  // namespace
