// Temperature scaling: the library's NLL, reliability diagram / ECE and fit_temperature
// (backbones/calibration.h) against direct computations, a grid search and data that is calibrated by
// construction; and where `attnkit calibrate` takes its data from (apps/train/calibrate_source.h): the
// held-out split rebuilt from a checkpoint's metadata, the error that names what is missing, and the
// refusal of test splits. The checkpoint field is tested with the other checkpoint fields
// (test_checkpoint.cpp), the commands through the program (tests/cli_calibrate.cmake).
#include "train/calibrate_source.h"
#include "train/dataset.h"

#include "testing.h"

#include <attnkit/backbones/calibration.h>
#include <attnkit/backbones/checkpoint.h>

#include <ATen/CPUGeneratorImpl.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

namespace {
using namespace attnkit;
using attnkit::testing::error_of;
using attnkit::testing::TempDir;
using ::testing::HasSubstr;

/// Labels drawn from softmax(logits / temperature), one per row: data for which `temperature` is the
/// calibrated one by construction.
torch::Tensor labels_drawn_from(const torch::Tensor& logits, double temperature, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::multinomial(torch::softmax(logits.to(torch::kDouble) / temperature, 1), 1, false, gen).squeeze(1);
}

torch::Tensor random_logits(int64_t n, int64_t k, double scale, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn({n, k}, gen, torch::kFloat) * scale;
}

}  // namespace

// ---- the measures ----------------------------------------------------------------------------------

// Four images worked out by hand: two classes, probabilities 0.9/0.1, 0.25/0.75 and 0.3/0.7.
TEST(Calibration, HandCheckedTinyCase) {
  const auto logits = torch::tensor({std::log(9.0), 0.0, std::log(9.0), 0.0, 0.0, std::log(3.0), 0.0, std::log(7.0 / 3.0)},
                                    torch::kDouble)
                          .view({4, 2});
  const auto labels = torch::tensor({0, 1, 1, 1}, torch::kLong);
  // Confidences 0.9 (right), 0.9 (wrong), 0.75 (right), 0.7 (right): bins (13/15, 14/15], (11/15, 12/15]
  // and (10/15, 11/15]. ECE = 2/4·|0.5 − 0.9| + 1/4·|1 − 0.75| + 1/4·|1 − 0.7| = 0.2 + 0.0625 + 0.075.
  const auto d = reliability_diagram(logits, labels);
  EXPECT_NEAR(d.ece, 0.3375, 1e-14);
  ASSERT_EQ(d.bins(), 15);
  EXPECT_EQ(d.count[13], 2);
  EXPECT_EQ(d.count[11], 1);
  EXPECT_EQ(d.count[10], 1);
  EXPECT_EQ(d.images, 4);
  EXPECT_NEAR(d.confidence[13], 0.9, 1e-15);
  EXPECT_NEAR(d.accuracy[13], 0.5, 1e-15);
  EXPECT_TRUE(std::isnan(d.confidence[0]) && std::isnan(d.accuracy[0]));
  EXPECT_NEAR(negative_log_likelihood(logits, labels), -(std::log(0.9) + std::log(0.1) + std::log(0.75) + std::log(0.7)) / 4, 1e-14);
  // At T = 2 the probabilities are the square roots, renormalised: 0.9/0.1 → 3/4, 1/4.
  EXPECT_NEAR(calibrated_softmax(logits, 2.0)[0][0].item<double>(), 0.75, 1e-15);
}

// The library against plain LibTorch ops: cross-entropy, and the ECE bin by bin with masks.
TEST(Calibration, NllAndEceMatchADirectComputation) {
  const auto logits = random_logits(3000, 7, 3.0, 1);
  const auto labels = labels_drawn_from(logits, 1.7, 2);
  for (const double t : {1.0, 0.6, 2.3}) {
    const auto z = logits.to(torch::kDouble) / t;
    EXPECT_NEAR(negative_log_likelihood(logits, labels, t), torch::nn::functional::cross_entropy(z, labels).item<double>(), 1e-12);
    const auto [confidence, prediction] = torch::softmax(z, 1).max(1);
    const auto correct = (prediction == labels).to(torch::kDouble);
    const auto d = reliability_diagram(logits, labels, t, 15);
    double ece = 0;
    for (int b = 0; b < 15; ++b) {
      const auto in_bin = (confidence > b / 15.0) & (confidence <= (b + 1) / 15.0);
      const int64_t n = in_bin.sum().item<int64_t>();
      EXPECT_EQ(d.count[b], n) << "bin " << b << " at T = " << t;
      if (n == 0) continue;
      const double conf = confidence.masked_select(in_bin).mean().item<double>();
      const double acc = correct.masked_select(in_bin).mean().item<double>();
      EXPECT_NEAR(d.confidence[b], conf, 1e-12);
      EXPECT_NEAR(d.accuracy[b], acc, 1e-12);
      ece += static_cast<double>(n) / 3000 * std::abs(acc - conf);
    }
    EXPECT_NEAR(d.ece, ece, 1e-12) << "T = " << t;
  }
  // Other bin counts follow the same rule.
  const auto d10 = reliability_diagram(logits, labels, 1.0, 10);
  EXPECT_EQ(d10.bins(), 10);
  int64_t total = 0;
  for (auto c : d10.count) total += c;
  EXPECT_EQ(total, 3000);
}

// Dividing by T > 0 keeps the order: the top-1 class is the same at every temperature.
TEST(Calibration, SoftmaxDividesByTemperatureAndKeepsTheTop1) {
  const auto logits = random_logits(200, 10, 4.0, 3);
  for (const double t : {0.25, 1.0, 3.0}) {
    const auto p = calibrated_softmax(logits, t);
    EXPECT_TRUE(torch::allclose(p, torch::softmax(logits / t, 1), 1e-6, 1e-7));
    EXPECT_TRUE(torch::equal(p.argmax(1), logits.argmax(1)));
  }
}

// ---- the fit ---------------------------------------------------------------------------------------

// The NLL is unimodal in T (convex in 1/T), so the grid's best point lies within one step of the true
// minimiser: the fitted T must too, and its NLL may not be above the grid's best.
TEST(Calibration, FittedTemperatureMatchesAGridSearch) {
  for (const double truth : {2.5, 0.5}) {  // over- and under-confident logits
    const auto logits = random_logits(2000, 10, 3.0, 4);
    const auto labels = labels_drawn_from(logits, truth, 5);
    const double fitted = fit_temperature(logits, labels);
    // The grid in plain LibTorch ops, 100 temperatures at a time: [100, N, K] scaled logits.
    const double step = 1e-3;
    const auto grid = torch::arange(0.2, 6.0, step, torch::kDouble);
    const auto z = logits.to(torch::kDouble);
    const auto zy = z.gather(1, labels.unsqueeze(1)).squeeze(1);
    std::vector<torch::Tensor> nlls;
    for (const auto& t : grid.split(100)) {
      const auto scaled = z.unsqueeze(0) / t.view({-1, 1, 1});
      nlls.push_back((torch::logsumexp(scaled, 2) - zy.unsqueeze(0) / t.view({-1, 1})).mean(1));
    }
    const auto nll = torch::cat(nlls);
    const int64_t best = nll.argmin().item<int64_t>();
    const double best_t = grid[best].item<double>(), best_nll = nll[best].item<double>();
    EXPECT_NEAR(fitted, best_t, step) << "labels drawn at T = " << truth;
    EXPECT_LE(negative_log_likelihood(logits, labels, fitted), best_nll + 1e-12);
    EXPECT_NEAR(fitted, truth, 0.25 * truth) << "the fit should find roughly the temperature the labels were drawn at";
  }
}

// Labels drawn from softmax(z): T = 1 is calibrated by construction. The fitted beta = 1/T is a maximum
// likelihood estimate of a true beta = 1, with standard deviation 1/sqrt(N · I), I = mean Var_p[z] the
// Fisher information per image at beta = 1; near 1, T = 1/beta moves by the same amount. Five standard
// deviations: a correct fit fails with probability below 1e-6 (and the seed is fixed).
TEST(Calibration, CalibratedDataGivesTemperatureOne) {
  const int64_t n = 20000;
  const auto logits = random_logits(n, 10, 2.0, 6).to(torch::kDouble);
  const auto labels = labels_drawn_from(logits, 1.0, 7);
  const auto p = torch::softmax(logits, 1);
  const auto mean = (p * logits).sum(1, true);
  const double fisher = (p * (logits - mean).square()).sum(1).mean().item<double>();
  const double tolerance = 5 / std::sqrt(n * fisher);
  EXPECT_NEAR(fit_temperature(logits, labels), 1.0, tolerance);
  // The same tolerance separates it from logits that are off by 20%.
  EXPECT_GT(std::abs(fit_temperature(logits * 1.2, labels) - 1.0), tolerance);
  EXPECT_LT(tolerance, 0.05);
}

TEST(Calibration, ErrorsSayWhy) {
  const auto logits = torch::tensor({3.0, 0.0, 0.0, 2.0}).view({2, 2});
  EXPECT_THAT(error_of([&] { fit_temperature(logits, torch::tensor({0, 1})); }),
              HasSubstr("every one of the 2 images is classified correctly"));
  EXPECT_THAT(error_of([&] { fit_temperature(logits, torch::tensor({1, 0})); }),
              HasSubstr("rank the true class no higher than the average class"));
  EXPECT_THAT(error_of([&] { calibrated_softmax(logits, 0.0); }), HasSubstr("temperature must be a finite number > 0, got 0"));
  EXPECT_THAT(error_of([&] { negative_log_likelihood(logits, torch::tensor({0, 1}), NAN); }), HasSubstr("finite number > 0"));
  EXPECT_THAT(error_of([&] { reliability_diagram(logits, torch::tensor({0, 2})); }), HasSubstr("labels must be in [0, 2)"));
  EXPECT_THAT(error_of([&] { reliability_diagram(logits, torch::tensor({0, 1, 1})); }), HasSubstr("labels must be [N] = [2]"));
  EXPECT_THAT(error_of([&] { reliability_diagram(logits, torch::tensor({0, 1}), 1.0, 0); }), HasSubstr("bins must be >= 1"));
}

// ---- where `attnkit calibrate` takes its data from ----------------------------------------------------

namespace {

/// A checkpoint description (no weights needed) for 3 classes of 2x2 gray images.
Checkpoint tiny_checkpoint(std::map<std::string, std::string> metadata) {
  Checkpoint ck;
  ck.config = parse_model_name("resnet20");
  ck.config.num_classes = 3;
  ck.config.in_channels = 1;
  ck.class_names = {"a", "b", "c"};
  ck.preprocessing = Preprocessing::small(2, {0.5}, {0.25});
  ck.preprocessing.color_order = ColorOrder::Gray;
  ck.metadata = std::move(metadata);
  return ck;
}

/// A pixel CSV of `n` 2x2 images, label i % 3, pixels from i.
std::string write_pixel_csv(const TempDir& dir, const std::string& name, int n) {
  std::ofstream out(dir.file(name));
  out << "label,p1,p2,p3,p4\n";
  for (int i = 0; i < n; ++i) out << i % 3 << "," << i << "," << (2 * i) % 256 << "," << (3 * i) % 256 << "," << (5 * i) % 256 << "\n";
  return dir.file(name);
}

}  // namespace

TEST(CalibrationSource, RebuildsTheSplitTrainingHeldOut) {
  TempDir dir;
  const auto csv = write_pixel_csv(dir, "train.csv", 30);
  const auto ck = tiny_checkpoint({{"dataset", csv}, {"val_size", "6"}, {"max_images", "24"},
                                   {"recipe", "--model=resnet20 --seed=7 --milestones="}});
  const auto source = train::resolve_calibration_source({}, ck, "m.attnkit");
  EXPECT_TRUE(source.held_out);
  EXPECT_EQ(source.val_size, 6);
  EXPECT_EQ(source.seed, 7u);
  EXPECT_EQ(source.max_images, 24);
  EXPECT_THAT(source.description, HasSubstr("6 images held out of the first 24 images of " + csv + " by attnkit train (--val-size 6, --seed 7)"));
  // Exactly what train holds out: the first max_images images, then split_train_val with the seed.
  train::DataSpec spec;
  spec.path = csv;
  spec.known_classes = ck.class_names;
  const auto all = train::load_dataset(spec);
  const auto expected = train::split_train_val(train::subset(all, torch::arange(24, torch::kLong)), 6, 7).second;
  const auto got = train::load_calibration_set(source);
  EXPECT_TRUE(torch::equal(got.images, expected.images));
  EXPECT_TRUE(torch::equal(got.labels, expected.labels));
  // The command line replaces the metadata; the training data given alone still means its held-out split.
  train::CalibrationDataArgs args;
  args.seed = 8;
  EXPECT_EQ(train::resolve_calibration_source(args, ck, "m.attnkit").seed, 8u);
  args = {};
  args.data = csv;
  EXPECT_TRUE(train::resolve_calibration_source(args, ck, "m.attnkit").held_out);
  // Another data set given alone is a separate validation set, used whole.
  args.data = write_pixel_csv(dir, "val.csv", 9);
  const auto whole = train::resolve_calibration_source(args, ck, "m.attnkit");
  EXPECT_FALSE(whole.held_out);
  EXPECT_EQ(train::load_calibration_set(whole).size(), 9);
}

TEST(CalibrationSource, SaysWhatIsMissingInOneLine) {
  const auto message = error_of([] { train::resolve_calibration_source({}, tiny_checkpoint({}), "m.attnkit"); });
  EXPECT_THAT(message, HasSubstr("m.attnkit: cannot rebuild the validation split its training held out: its metadata names no "
                                 "training data; its metadata has no val_size"));
  EXPECT_THAT(message, HasSubstr("pass --data PATH --val-size N --seed S as given to attnkit train"));
  EXPECT_EQ(message.find('\n'), std::string::npos);
  // The bundled model's case: a training path of another machine, a seed in the recipe, no val_size.
  const auto bundled = tiny_checkpoint({{"dataset", ".gpu/fashion-mnist"}, {"recipe", "--seed=0"}});
  EXPECT_THAT(error_of([&] { train::resolve_calibration_source({}, bundled, "m.attnkit"); }),
              HasSubstr("the training data it names, \".gpu/fashion-mnist\", does not exist here; its metadata has no val_size "
                        "(written before attnkit train stored it); pass --data PATH --val-size N as given"));
  const auto none_held_out = tiny_checkpoint({{"dataset", "/"}, {"val_size", "0"}, {"recipe", "--seed=0"}});
  EXPECT_THAT(error_of([&] { train::resolve_calibration_source({}, none_held_out, "m.attnkit"); }),
              HasSubstr("held out no validation images"));
}

TEST(CalibrationSource, RefusesTestSplits) {
  for (const char* path : {"/data/fashion-mnist/t10k-images-idx3-ubyte.gz", "fashion-mnist_test.csv", "data/test/", "data/Testing",
                           "cifar-TEST.csv"}) {
    EXPECT_NE(train::test_split_reason(path), "") << path;
  }
  for (const char* path : {"data/val", "latest/", "contest.csv", "/usr/share/datasets/fashion-mnist", "train.csv"}) {
    EXPECT_EQ(train::test_split_reason(path), "") << path;
  }
  // An IDX folder that holds only the test split.
  TempDir dir("calibrate_idx");  // not the default tag: "attnkit_test" has the word "test"
  std::ofstream(dir.file("t10k-images-idx3-ubyte")) << "x";
  EXPECT_THAT(train::test_split_reason(dir.path()), HasSubstr("IDX folder with a test split (t10k-*) and no train split"));
  std::ofstream(dir.file("train-images-idx3-ubyte")) << "x";
  EXPECT_EQ(train::test_split_reason(dir.path()), "");
  // The command's error says why, whatever else the metadata lacks.
  train::CalibrationDataArgs args;
  args.data = "/data/fashion-mnist/t10k-images-idx3-ubyte.gz";
  EXPECT_THAT(error_of([&] { train::resolve_calibration_source(args, tiny_checkpoint({}), "m.attnkit"); }),
              HasSubstr("looks like test data (its name has the word \"t10k\" of a test split): a temperature fitted on the images "
                        "eval measures"));
}
