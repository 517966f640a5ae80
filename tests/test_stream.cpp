// The pieces of `attnkit stream` (apps/vision): the bounded queue's drop and no-drop policies and its
// batches, --source parsing, image-folder and video-file sources, the capture thread, the video
// writer's codecs and temporary-then-rename file, and the frame analyser's batches and precision. The whole program is tested by
// tests/cli_stream.cmake. Like test_data, this links the apps library.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#ifndef ATTNKIT_HAVE_OPENCV
TEST(Stream, NeedsOpenCV) { GTEST_SKIP() << "attnkit was configured without OpenCV: no stream command"; }
#else
#include "common/stderr_capture.h"
#include "vision/frame_pipeline.h"
#include "vision/heatmap.h"
#include "vision/image_list.h"
#include "vision/preprocess.h"
#include "vision/video_source.h"
#include "vision/video_writer.h"

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <ftw.h>
#include <cstdio>

namespace {
namespace fs = std::filesystem;
using attnkit::vision::BoundedQueue;
using attnkit::vision::QueuePolicy;
using attnkit::vision::SourceKind;

fs::path scratch_root() { return fs::temp_directory_path() / ("attnkit_test_stream_" + std::to_string(::getpid())); }

fs::path scratch(const std::string& name) {
  const fs::path dir = scratch_root() / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

/// Removes every scratch folder once all tests have run.
class ScratchCleanup : public ::testing::Environment {
 public:
  // Removed with POSIX nftw: std::filesystem::remove_all resolved into libtorch.so's own copy here
  // and crashed at tear-down (a null call inside it), while it works during the tests.
  void TearDown() override {
    nftw(scratch_root().c_str(), [](const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); },
         16, FTW_DEPTH | FTW_PHYS);
  }
};
const auto* const cleanup = ::testing::AddGlobalTestEnvironment(new ScratchCleanup);

/// Frame `i` of a synthetic clip: a gradient with a moving square, so codecs have something to do.
cv::Mat synthetic_frame(int i, cv::Size size = {64, 48}) {
  cv::Mat m(size, CV_8UC3);
  for (int y = 0; y < size.height; ++y)
    for (int x = 0; x < size.width; ++x) m.at<cv::Vec3b>(y, x) = cv::Vec3b(uchar(4 * x), uchar(5 * y), uchar(7 * i));
  cv::rectangle(m, cv::Rect((3 * i) % (size.width - 8), 10, 8, 8), cv::Scalar(255, 255, 255), cv::FILLED);
  return m;
}

TEST(BoundedQueue, DropOldestKeepsTheNewestAndCountsDrops) {
  BoundedQueue<int> q(2, QueuePolicy::DropOldest);
  for (int i = 1; i <= 5; ++i) EXPECT_TRUE(q.push(i));  // never waits
  EXPECT_EQ(q.dropped(), 3);
  EXPECT_EQ(*q.pop(), 4);
  EXPECT_EQ(*q.pop(), 5);
  q.close();
  EXPECT_FALSE(q.pop().has_value());
}

TEST(BoundedQueue, BlockMakesTheProducerWaitAndLosesNothing) {
  BoundedQueue<int> q(2, QueuePolicy::Block);
  std::atomic<int> pushed{0};
  std::thread producer([&] {
    for (int i = 0; i < 50; ++i) {
      q.push(i);
      ++pushed;
    }
    q.close();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(pushed.load(), 2);  // full: the third push waits for the consumer
  for (int i = 0; i < 50; ++i) {
    const auto v = q.pop();
    ASSERT_TRUE(v.has_value());
    EXPECT_EQ(*v, i);
  }
  EXPECT_FALSE(q.pop().has_value());
  producer.join();
  EXPECT_EQ(q.dropped(), 0);
}

TEST(BoundedQueue, CloseWakesABlockedProducerAndDrainsWhatIsQueued) {
  BoundedQueue<int> q(1, QueuePolicy::Block);
  ASSERT_TRUE(q.push(1));
  std::atomic<int> result{-1};
  std::thread producer([&] { result = q.push(2) ? 1 : 0; });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  q.close();
  producer.join();
  EXPECT_EQ(result.load(), 0);  // refused, not queued
  EXPECT_EQ(*q.pop(), 1);
  EXPECT_FALSE(q.pop().has_value());
  EXPECT_FALSE(q.push(3));
  EXPECT_THROW(BoundedQueue<int>(0, QueuePolicy::Block), std::invalid_argument);
}

TEST(BoundedQueue, PopUpToFillsBatchesFromFilesInOrderAndDrainsTheRest) {
  BoundedQueue<int> q(4, QueuePolicy::Block);
  std::thread producer([&] {
    for (int i = 0; i < 10; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // a slow reader: batches must still fill
      q.push(i);
    }
    q.close();
  });
  std::vector<int> seen;
  std::vector<size_t> sizes;
  while (true) {
    const auto batch = q.pop_up_to(3, /*fill=*/true);
    if (batch.empty()) break;
    sizes.push_back(batch.size());
    seen.insert(seen.end(), batch.begin(), batch.end());
  }
  producer.join();
  EXPECT_EQ(sizes, (std::vector<size_t>{3, 3, 3, 1}));  // full batches, then the remainder at the end
  std::vector<int> expected(10);
  for (int i = 0; i < 10; ++i) expected[i] = i;
  EXPECT_EQ(seen, expected);
}

TEST(BoundedQueue, PopUpToWithoutFillTakesOnlyWhatIsQueued) {
  BoundedQueue<int> q(4, QueuePolicy::DropOldest);
  q.push(1);
  q.push(2);
  EXPECT_EQ(q.pop_up_to(8, /*fill=*/false), (std::vector<int>{1, 2}));  // no waiting for more
  q.push(3);
  EXPECT_EQ(q.pop_up_to(1, /*fill=*/false), (std::vector<int>{3}));
  q.close();
  EXPECT_TRUE(q.pop_up_to(8, /*fill=*/false).empty());
}

TEST(Source, ParsesEveryKind) {
  using attnkit::vision::parse_source;
  EXPECT_EQ(parse_source("0").kind, SourceKind::Camera);
  EXPECT_EQ(parse_source("12").index, 12);
  EXPECT_EQ(parse_source("/dev/video2").kind, SourceKind::Device);
  EXPECT_EQ(parse_source("videotestsrc ! videoconvert ! appsink").kind, SourceKind::Pipeline);
  EXPECT_EQ(parse_source(scratch("folder").string()).kind, SourceKind::Folder);
  EXPECT_EQ(parse_source("clip.mp4").kind, SourceKind::File);
  EXPECT_EQ(parse_source("0.mp4").kind, SourceKind::File);
  EXPECT_THROW(parse_source(""), std::invalid_argument);
  EXPECT_TRUE(attnkit::vision::is_live(SourceKind::Camera));
  EXPECT_TRUE(attnkit::vision::is_live(SourceKind::Pipeline));
  EXPECT_FALSE(attnkit::vision::is_live(SourceKind::File));
  EXPECT_FALSE(attnkit::vision::is_live(SourceKind::Folder));
}

TEST(Source, FolderFramesInNameOrderAndAnUnreadableImageIsAnError) {
  const auto dir = scratch("frames");
  for (int i : {2, 0, 1}) cv::imwrite((dir / ("f" + std::to_string(i) + ".png")).string(), synthetic_frame(i));
  std::ofstream(dir / "notes.txt") << "not an image";
  attnkit::vision::VideoSource src(attnkit::vision::parse_source(dir.string()));
  EXPECT_EQ(src.mode().frame_count, 3);
  EXPECT_EQ(src.mode().width, 64);
  cv::Mat f;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(src.read(f));
    EXPECT_EQ(cv::norm(f, synthetic_frame(i), cv::NORM_INF), 0) << "frame " << i;
  }
  EXPECT_FALSE(src.read(f));

  std::ofstream(dir / "f1.png", std::ios::trunc) << "garbage";
  attnkit::vision::VideoSource broken(attnkit::vision::parse_source(dir.string()));
  ASSERT_TRUE(broken.read(f));
  EXPECT_THROW(broken.read(f), std::runtime_error);
}

TEST(Source, MissingFileEmptyFolderAndAbsentCameraFailWithOneLine) {
  using attnkit::vision::VideoSource;
  using attnkit::vision::parse_source;
  try {
    VideoSource s(parse_source("/nonexistent/clip.avi"));
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("no such file"), std::string::npos);
  }
  EXPECT_THROW(VideoSource(parse_source(scratch("empty").string())), std::runtime_error);
  EXPECT_THROW(VideoSource(parse_source("/dev/video99")), std::runtime_error);
}

// GStreamer prints a bad pipeline as GLib warnings of its own; they end up in our one line, and
// nothing else reaches stderr.
TEST(Source, ABadGStreamerPipelineIsOneLineAndNothingElseOnStderr) {
  using attnkit::vision::VideoSource;
  using attnkit::vision::parse_source;
  for (const std::string pipeline : {"nosuchelement ! appsink", "videotestsrc ! ! appsink"}) {
    ::testing::internal::CaptureStderr();
    std::string message;
    try {
      VideoSource s(parse_source(pipeline));
    } catch (const std::runtime_error& e) {
      message = e.what();
    }
    const std::string leaked = ::testing::internal::GetCapturedStderr();
    EXPECT_THAT(message, ::testing::HasSubstr("cannot open the GStreamer pipeline \"" + pipeline + "\"")) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    EXPECT_EQ(leaked, "") << pipeline;
  }
}

TEST(Source, LibraryMessagesBecomeOneLine) {
  using attnkit::common::one_line_summary;
  EXPECT_EQ(one_line_summary(""), "");
  EXPECT_EQ(one_line_summary("\n\n"), "");
  EXPECT_EQ(one_line_summary("\n(attnkit:6659): GLib-GObject-WARNING **: 10:55:56.932: invalid cast from 'A' to 'B'\n\n"
                             "(attnkit:6659): GStreamer-CRITICAL **: 10:55:56.932: gst_iterator_next: assertion failed\n"),
            "GLib-GObject-WARNING: invalid cast from 'A' to 'B' (1 more message)");
  EXPECT_EQ(one_line_summary("[ WARN:0@0.340] global ./modules/videoio/src/cap_gstreamer.cpp (1226) open OpenCV | "
                             "GStreamer warning: cannot find appsink in manual pipeline\n"),
            "cannot find appsink in manual pipeline");
  EXPECT_EQ(one_line_summary("plain words\n"), "plain words");
}

TEST(Writer, CodecByExtension) {
  using attnkit::vision::fourcc_for;
  EXPECT_EQ(fourcc_for("a.mp4"), cv::VideoWriter::fourcc('m', 'p', '4', 'v'));
  EXPECT_EQ(fourcc_for("dir/A.AVI"), cv::VideoWriter::fourcc('M', 'J', 'P', 'G'));
  EXPECT_EQ(fourcc_for("a.mkv"), cv::VideoWriter::fourcc('M', 'J', 'P', 'G'));
  EXPECT_THROW(fourcc_for("a.gif"), std::invalid_argument);
  EXPECT_THROW(attnkit::vision::VideoFileWriter("/nonexistent-folder/out.avi", {64, 48}, 25), std::runtime_error);
}

// What OpenCV + FFmpeg write, they read back: every extension, frame count and size.
TEST(Writer, EveryExtensionRoundTripsThroughTheFileSource) {
  const auto dir = scratch("videos");
  for (const auto& ext : attnkit::vision::video_extensions()) {
    const std::string path = (dir / ("clip" + ext)).string();
    {
      attnkit::vision::VideoFileWriter w(path, {64, 48}, 25);
      for (int i = 0; i < 20; ++i) w.write(synthetic_frame(i));
      EXPECT_FALSE(fs::exists(path)) << "the final name appears only when the video is complete";
      w.write(synthetic_frame(20, {128, 96}));  // another size is resized, not refused
      w.finish();
    }
    ASSERT_TRUE(fs::exists(path)) << ext;
    EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()),
              static_cast<long>(&ext - &attnkit::vision::video_extensions()[0]) + 1)
        << "no temporary file left behind";
    attnkit::vision::VideoSource src(attnkit::vision::parse_source(path));
    EXPECT_EQ(src.mode().width, 64) << ext;
    EXPECT_EQ(src.mode().height, 48) << ext;
    int n = 0;
    for (cv::Mat f; src.read(f);) ++n;
    EXPECT_EQ(n, 21) << ext;
  }
}

// A finished video proves itself before it replaces anything (what a full disk leaves, OpenCV
// does not report): whole files pass, files cut short do not.
TEST(Writer, AVideoCutShortFailsTheFinishedFileCheck) {
  const auto dir = scratch("damaged_video");
  for (const std::string ext : {".mp4", ".avi", ".mkv"}) {
    const std::string path = (dir / ("clip" + ext)).string();
    {
      attnkit::vision::VideoFileWriter w(path, {64, 48}, 25);
      for (int i = 0; i < 40; ++i) w.write(synthetic_frame(i));
    }
    EXPECT_EQ(attnkit::vision::check_video_file(path, 40), "") << ext;
    EXPECT_THAT(attnkit::vision::check_video_file(path, 400), ::testing::HasSubstr("frames written")) << ext;
    const std::string cut = (dir / ("cut" + ext)).string();
    fs::copy_file(path, cut, fs::copy_options::overwrite_existing);
    fs::resize_file(cut, fs::file_size(path) / 3);
    EXPECT_NE(attnkit::vision::check_video_file(cut, 40), "") << ext << ": a third of the file passed";
    fs::resize_file(cut, 64);
    EXPECT_NE(attnkit::vision::check_video_file(cut, 40), "") << ext << ": 64 bytes passed";
  }
}

TEST(Writer, NoFrameLeavesNoFile) {
  const auto dir = scratch("empty_video");
  { attnkit::vision::VideoFileWriter w((dir / "none.avi").string(), {64, 48}, 25); }
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(Capture, FileSourceDeliversEveryFrameInOrderThroughASmallBlockingQueue) {
  const auto dir = scratch("capture");
  const std::string path = (dir / "clip.avi").string();
  {
    attnkit::vision::VideoFileWriter w(path, {64, 48}, 25);
    for (int i = 0; i < 30; ++i) w.write(synthetic_frame(i));
  }
  attnkit::vision::VideoSource src(attnkit::vision::parse_source(path));
  BoundedQueue<attnkit::vision::Frame> q(1, QueuePolicy::Block);
  attnkit::vision::CaptureThread capture(src, q);
  int64_t expected = 0;
  while (auto f = q.pop()) {
    EXPECT_EQ(f->index, expected++);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // a slow consumer
  }
  EXPECT_EQ(expected, 30);
  EXPECT_EQ(q.dropped(), 0);
  EXPECT_EQ(capture.error(), "");
}

TEST(Capture, ATruncatedFileIsAnErrorNotAnEnd) {
  const auto dir = scratch("truncated");
  const std::string path = (dir / "clip.avi").string();
  {
    attnkit::vision::VideoFileWriter w(path, {64, 48}, 25);
    for (int i = 0; i < 40; ++i) w.write(synthetic_frame(i));
  }
  fs::resize_file(path, fs::file_size(path) / 2);
  attnkit::vision::VideoSource src(attnkit::vision::parse_source(path));
  BoundedQueue<attnkit::vision::Frame> q(4, QueuePolicy::Block);
  attnkit::vision::CaptureThread capture(src, q);
  int n = 0;
  while (q.pop()) ++n;
  EXPECT_GT(n, 0);
  EXPECT_LT(n, 40);
  EXPECT_NE(capture.error().find("decoding stopped"), std::string::npos) << capture.error();
}

// ---- FrameAnalyzer: several frames per forward, and reduced precision --------------------------------

std::vector<attnkit::vision::Frame> sample_frames() {
  std::vector<attnkit::vision::Frame> frames;
  for (const auto& entry : fs::directory_iterator(fs::path(ATTNKIT_SOURCE_DIR) / "weights" / "samples")) {
    cv::Mat img = cv::imread(entry.path().string(), cv::IMREAD_COLOR);
    if (!img.empty()) frames.push_back({img, static_cast<int64_t>(frames.size())});
  }
  std::sort(frames.begin(), frames.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
  return frames;
}

attnkit::vision::FrameAnalyzer bundled_analyzer(torch::ScalarType dtype) {
  attnkit::Checkpoint info;
  auto model = attnkit::load_checkpoint(std::string(ATTNKIT_SOURCE_DIR) + "/weights/fashion-mnist-resnet20x4.attnkit", &info);
  return attnkit::vision::FrameAnalyzer(model, info, torch::Device(torch::kCPU), dtype);
}

TEST(Analyzer, ABatchGivesTheAnswersOfFramesOneByOne) {
  auto frames = sample_frames();
  ASSERT_EQ(frames.size(), 10u);
  frames[3].image = synthetic_frame(3, {97, 61});  // frames of other sizes may share a batch
  auto analyzer = bundled_analyzer(torch::kFloat32);
  const attnkit::vision::ViewChoice view{attnkit::ExplainMethod::GradCam, ""};
  const auto batched = analyzer.analyze(frames, view);
  ASSERT_EQ(batched.size(), frames.size());
  for (size_t i = 0; i < frames.size(); ++i) {
    const auto single = analyzer.analyze({frames[i]}, view);
    ASSERT_EQ(single.size(), 1u);
    EXPECT_EQ(batched[i].frame.index, frames[i].index);
    EXPECT_EQ(batched[i].label, single[0].label) << i;
    EXPECT_NEAR(batched[i].probability, single[0].probability, 1e-5) << i;
    EXPECT_EQ(batched[i].window.region, single[0].window.region) << i;
    ASSERT_EQ(batched[i].map.sizes(), single[0].map.sizes());
    EXPECT_TRUE(torch::allclose(batched[i].map, single[0].map, 1e-4, 1e-4)) << i;
  }
  EXPECT_TRUE(analyzer.analyze({}, view).empty());
}

TEST(Analyzer, Bfloat16KeepsTheLabelsOfFloat32) {
  const auto frames = sample_frames();
  auto full = bundled_analyzer(torch::kFloat32);
  auto reduced = bundled_analyzer(torch::kBFloat16);
  const attnkit::vision::ViewChoice view{attnkit::ExplainMethod::GradCam, ""};
  const auto a = full.analyze(frames, view), b = reduced.analyze(frames, view);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].label, b[i].label) << i;
    EXPECT_NEAR(a[i].probability, b[i].probability, 0.05) << i;
    EXPECT_EQ(b[i].map.scalar_type(), torch::kFloat32);
    // Same heatmap up to bf16 rounding: the maps agree closely as pictures.
    const auto x = a[i].map.flatten() - a[i].map.mean(), y = b[i].map.flatten() - b[i].map.mean();
    const double corr = (x * y).sum().item<double>() / (x.norm() * y.norm()).clamp_min(1e-12).item<double>();
    EXPECT_GT(corr, 0.95) << i;
  }
}

attnkit::vision::FrameAnalyzer analyzer_for(const std::string& weights, torch::ScalarType dtype, bool inference_path) {
  attnkit::Checkpoint info;
  auto model = attnkit::load_checkpoint(std::string(ATTNKIT_SOURCE_DIR) + "/weights/" + weights, &info);
  return attnkit::vision::FrameAnalyzer(model, info, torch::Device(torch::kCPU), dtype, inference_path);
}

TEST(Analyzer, TheInferencePathGivesTheEagerLabelsAndNativeMaps) {
  // The bundled CBAM model: native maps recorded on the inference path against the module's own.
  const auto frames = sample_frames();
  auto eager = analyzer_for("fashion-mnist-resnet20-cbam-w1.attnkit", torch::kFloat32, false);
  auto frozen = analyzer_for("fashion-mnist-resnet20-cbam-w1.attnkit", torch::kFloat32, true);
  const attnkit::vision::ViewChoice view{attnkit::ExplainMethod::Native, ""};
  ASSERT_TRUE(frozen.inference_path(view.method));
  ASSERT_FALSE(eager.inference_path(view.method));
  EXPECT_FALSE(frozen.inference_path(attnkit::ExplainMethod::GradCam));  // gradients: the module
  const auto a = eager.analyze(frames, view), b = frozen.analyze(frames, view);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].label, b[i].label) << i;
    // Two float32 computations of a softmax over 10 logits: far below a printed percent.
    EXPECT_NEAR(a[i].probability, b[i].probability, 1e-4) << i;
    // Maps in [0, 1], normalised per image: float32 rounding, amplified at most by the normalisation's
    // range (the gates span a good part of (0, 1) on these images).
    EXPECT_TRUE(torch::allclose(a[i].map, b[i].map, 0, 1e-3)) << i;
  }
}

TEST(Analyzer, Bfloat16OnTheInferencePathKeepsTheTopClassOfEverySample) {
  // The bundled default model: bfloat16 on the inference path against float32 eager, top-1 on every
  // bundled sample (Grad-CAM runs the module; Eigen-CAM runs the inference path).
  const auto frames = sample_frames();
  auto reference = analyzer_for("fashion-mnist-resnet20x4.attnkit", torch::kFloat32, false);
  auto bf16 = analyzer_for("fashion-mnist-resnet20x4.attnkit", torch::kBFloat16, true);
  const attnkit::vision::ViewChoice view{attnkit::ExplainMethod::EigenCam, ""};
  ASSERT_TRUE(bf16.inference_path(view.method));
  const auto a = reference.analyze(frames, view), b = bf16.analyze(frames, view);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].label, b[i].label) << i;
}

TEST(Analyzer, ReducedPrecisionIsOnlyCalledFastWhereItIs) {
  using attnkit::vision::reduced_precision_is_fast;
  EXPECT_FALSE(reduced_precision_is_fast(torch::Device(torch::kCPU), torch::kFloat16));
  EXPECT_FALSE(reduced_precision_is_fast(torch::Device(torch::kCPU), torch::kFloat32));
  EXPECT_TRUE(reduced_precision_is_fast(torch::Device(torch::kCUDA, 0), torch::kBFloat16));
}

}  // namespace
#endif
