// attnkit stream: attention heatmaps over live video. Three stages overlap on three threads:
//   capture thread   VideoSource → frames queue (live sources drop the oldest frame, files block)
//   inference thread frames → FrameAnalyzer (preprocess + explain, several frames per forward for
//                    files) → results queue
//   main thread      results → HeatmapRenderer → window (keys), --output video, snapshots
// One summary line at the end (frames, dropped, end-to-end FPS, average inference ms; --json: JSON).
#include "commands.h"
#include "validators.h"

#ifdef ATTNKIT_HAVE_OPENCV  // the whole command needs OpenCV (video, windows)
#include "bundled.h"

#include "common/device.h"
#include "common/precision.h"
#include "common/files.h"
#include "train/calibration.h"
#include "vision/bounded_queue.h"
#include "vision/frame_pipeline.h"
#include "vision/heatmap.h"
#include "vision/video_source.h"
#include "vision/video_writer.h"

#include <attnkit/backbones/checkpoint.h>
#include <attnkit/backbones/explain.h>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <opencv2/core/utils/logger.hpp>
#include <opencv2/highgui.hpp>
#include <opencv2/imgcodecs.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <functional>
#include <iomanip>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

namespace attnkit::app {
namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kWindow = "attnkit stream";

struct StreamArgs {
  std::string source;
  int width = 0, height = 0;
  double fps = 0;
  bool no_display = false;
  std::string output;
  std::string out_dir;
  int64_t max_frames = 0;
  double smooth = 0;
  std::string method = "auto";
  std::string layer;
  double alpha = 0.5;
  std::string colormap = "jet";
  std::string weights;
  std::string device = "auto";
  int threads = 0;
  int batch = 0;
  std::string precision = "auto";
  bool eager = false;
  bool json = false;
  bool aug_smooth = false, eigen_smooth = false;
  int cam_batch = 32;
};

std::atomic<bool> g_interrupted{false};
void on_sigint(int) { g_interrupted = true; }

/// SIGINT ends the stream like the q key while it runs; the previous handler comes back afterwards.
class SigintGuard {
 public:
  SigintGuard() {
    g_interrupted = false;
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &previous_);
  }
  ~SigintGuard() { sigaction(SIGINT, &previous_, nullptr); }

 private:
  struct sigaction previous_ {};
};

/// What the keys change while the stream runs; read by the inference thread for each frame.
class SharedView {
 public:
  explicit SharedView(vision::ViewChoice v) : view_(std::move(v)) {}
  vision::ViewChoice get() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return view_;
  }
  void set(vision::ViewChoice v) {
    std::lock_guard<std::mutex> lock(mutex_);
    view_ = std::move(v);
  }

 private:
  mutable std::mutex mutex_;
  vision::ViewChoice view_;
};

/// The next entry of `list` after `current` (the first when `current` is not in it).
template <typename T>
T next_in(const std::vector<T>& list, const T& current) {
  const auto it = std::find(list.begin(), list.end(), current);
  return it == list.end() || it + 1 == list.end() ? list.front() : *(it + 1);
}

std::string save_snapshot(const cv::Mat& image, const std::string& dir, int64_t frame) {
  std::error_code ec;
  const std::filesystem::path folder = dir.empty() ? std::filesystem::current_path() : std::filesystem::path(dir);
  std::filesystem::create_directories(folder, ec);
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  std::ostringstream name;
  name << "stream-" << std::put_time(&tm, "%Y%m%d-%H%M%S") << "-" << std::setw(6) << std::setfill('0') << frame << ".png";
  const std::string path = (folder / name.str()).string();
  std::vector<uchar> png;
  if (!cv::imencode(".png", image, png)) throw std::runtime_error(path + ": cannot encode the snapshot");
  common::write_file_atomic(path, std::string(png.begin(), png.end()));
  return path;
}

// ---- plan: model, source and output opened, every error before the first frame --------------------

/// Everything the stream needs, in the order it is made: the model first (fast failure on a bad
/// checkpoint), then the source, then the output file.
struct StreamPlan {
  std::string device_name;
  bool display = false;
  int colormap = 0;
  Checkpoint info;
  common::Precision precision;
  std::unique_ptr<vision::FrameAnalyzer> analyzer;
  vision::ViewChoice first_view;
  std::unique_ptr<vision::VideoSource> source;
  /// Frames per forward pass.
  int batch = 1;
  std::unique_ptr<vision::VideoFileWriter> writer;
};

/// Our errors are one line each: silence OpenCV's and FFmpeg's own logs (OPENCV_FFMPEG_LOGLEVEL=-8 is
/// AV_LOG_QUIET; set it yourself, e.g. to 24, to see FFmpeg's warnings again).
void silence_library_logs() {
  cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_SILENT);
  ::setenv("OPENCV_FFMPEG_LOGLEVEL", "-8", 0);
}

void check_layer(const vision::FrameAnalyzer& analyzer, const vision::ViewChoice& view) {
  const auto valid_layers = analyzer.layers(view.method);
  if (std::find(valid_layers.begin(), valid_layers.end(), view.layer) != valid_layers.end()) return;
  std::string list;
  for (size_t i = 1; i < valid_layers.size(); ++i) list += (i > 1 ? ", " : "") + valid_layers[i];
  throw std::runtime_error("--layer " + view.layer + ": not a layer " + explain_method_name(view.method) + " can use (valid: " + list + ")");
}

void plan_model(const StreamArgs& a, StreamPlan& plan) {
  auto model = load_checkpoint(weights_or_bundled(a.weights), &plan.info);
  const torch::Device device(plan.device_name);
  plan.precision = common::resolve_precision(a.precision, device);
  plan.analyzer = std::make_unique<vision::FrameAnalyzer>(model, plan.info, device, plan.precision.dtype, !a.eager);
  ExplainOptions options;
  options.aug_smooth = a.aug_smooth;
  options.eigen_smooth = a.eigen_smooth;
  options.batch_size = a.cam_batch;
  plan.analyzer->set_explain_options(options);
  plan.first_view = {plan.analyzer->resolve(explain_method_from_name(a.method)), a.layer};
  check_layer(*plan.analyzer, plan.first_view);
}

void plan_source_and_output(const StreamArgs& a, StreamPlan& plan) {
  plan.source = std::make_unique<vision::VideoSource>(vision::parse_source(a.source), vision::CaptureRequest{a.width, a.height, a.fps});
  const auto& mode = plan.source->mode();
  // Files and folders are analysed several frames per forward (throughput); live sources one at a
  // time, since waiting to fill a batch would add latency and make the capture queue drop frames.
  plan.batch = a.batch > 0 ? a.batch : (plan.source->live() ? 1 : 8);
  if (a.output.empty()) return;
  const double out_fps = mode.fps > 0 && mode.fps < 1000 ? mode.fps : (a.fps > 0 ? a.fps : 25.0);
  plan.writer = std::make_unique<vision::VideoFileWriter>(a.output, cv::Size(mode.width, mode.height), out_fps);
}

StreamPlan plan_stream(const StreamArgs& a) {
  silence_library_logs();
  StreamPlan plan;
  common::configure_threads(a.threads);
  plan.device_name = common::resolve_device(a.device);
  common::configure_cuda_speed(plan.device_name);
  plan.colormap = vision::colormap_from_name(a.colormap);
  plan.display = !a.no_display;
  if (plan.display && !std::getenv("DISPLAY") && !std::getenv("WAYLAND_DISPLAY"))
    throw std::runtime_error("no display to open a window on (DISPLAY is not set); pass --no-display to run headless");
  plan_model(a, plan);
  plan_source_and_output(a, plan);
  return plan;
}

void print_plan(const StreamPlan& plan, std::ostream& info_out) {
  info_out << "source: " << plan.source->name() << ": " << vision::describe(plan.source->mode()) << "\n"
           << "model: " << plan.info.config.name() << ", " << explain_method_name(plan.first_view.method) << " maps, "
           << plan.device_name << ", " << plan.precision.description << ", "
           << (plan.analyzer->inference_path(plan.first_view.method) ? "inference path" : "eager (autograd)") << ", batch "
           << plan.batch << ", probabilities " << train::calibration_note(plan.info) << "\n"
           << std::flush;
}

// ---- run: capture and inference threads, drawing and keys on this one ------------------------------

/// The capture and inference threads and the queues between them. Every way out of the stream (end,
/// q, Ctrl-C, an exception while drawing) stops both threads: stop() or the destructor.
class Pipeline {
 public:
  Pipeline(StreamPlan& plan, SharedView& view, int64_t max_frames)
      : plan_(plan), view_(view), max_frames_(max_frames), live_(plan.source->live()),
        // Room for a batch being read while the previous one is analysed; results hold a whole batch.
        frames_(live_ ? std::max(2, plan.batch) : 2 * plan.batch, live_ ? vision::QueuePolicy::DropOldest : vision::QueuePolicy::Block),
        results_(std::max(2, plan.batch), vision::QueuePolicy::Block) {
    capture_.emplace(*plan.source, frames_);
    inference_ = std::thread([this] { infer(); });
  }
  ~Pipeline() { stop(); }
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  std::optional<vision::Analysis> next() { return results_.pop(); }
  void stop() {
    results_.close();
    if (capture_) capture_->stop();
    if (inference_.joinable()) inference_.join();
  }
  /// After stop(): the source's failure, else the inference thread's, else "".
  std::string error() const {
    const std::string capture_error = capture_->error();
    return capture_error.empty() ? inference_error_ : capture_error;
  }
  int64_t dropped() const { return frames_.dropped(); }
  /// Decoding time per frame read, in milliseconds.
  double decode_ms() const { return capture_->frames_read() > 0 ? capture_->read_ms() / capture_->frames_read() : 0.0; }

 private:
  void infer() {
    try {
      analyse_until_done();
    } catch (const c10::Error& e) {
      inference_error_ = e.what_without_backtrace();
    } catch (const std::exception& e) {
      inference_error_ = e.what();
    }
    results_.close();
  }
  void analyse_until_done() {
    int64_t analysed = 0;
    while (true) {
      // Never analyse frames past --max-frames: the last batch is cut to what is still wanted.
      const int64_t wanted = max_frames_ > 0 ? std::min<int64_t>(plan_.batch, max_frames_ - analysed) : plan_.batch;
      if (wanted <= 0) return;
      auto batch_frames = frames_.pop_up_to(static_cast<size_t>(wanted), /*fill=*/!live_);
      if (batch_frames.empty()) return;
      analysed += static_cast<int64_t>(batch_frames.size());
      for (auto& r : plan_.analyzer->analyze(std::move(batch_frames), view_.get()))
        if (!results_.push(std::move(r))) return;  // closed: the main thread is done
    }
  }

  StreamPlan& plan_;
  SharedView& view_;
  const int64_t max_frames_;
  const bool live_;
  vision::BoundedQueue<vision::Frame> frames_;
  vision::BoundedQueue<vision::Analysis> results_;
  std::string inference_error_;
  std::optional<vision::CaptureThread> capture_;
  std::thread inference_;
};

/// Where the time of the main thread goes, summed over the frames shown.
struct StreamStats {
  int64_t processed = 0;
  double inference_ms = 0, preprocess_ms = 0, draw_ms = 0, encode_ms = 0;
};

/// The main thread's stage: draws each analysed frame, writes it to --output, shows it and acts on
/// the keys (q/Esc quit, space pause, m method, l layer, s snapshot).
class Presenter {
 public:
  Presenter(const StreamArgs& a, StreamPlan& plan, SharedView& view, std::ostream& info_out)
      : a_(a), plan_(plan), view_(view), info_out_(info_out), renderer_({a.alpha, plan.colormap, a.smooth}) {}

  /// Shows one frame; false once the viewer asked to stop.
  bool show(const vision::Analysis& r) {
    ++stats_.processed;
    stats_.inference_ms += r.inference_ms;
    stats_.preprocess_ms += r.preprocess_ms;
    const auto now = Clock::now();
    const double dt = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    if (dt > 0) shown_fps_ = stats_.processed <= 2 ? 1.0 / dt : 0.9 * shown_fps_ + 0.1 / dt;
    shown_ = renderer_.render(r, plan_.analyzer->class_name(r.label), shown_fps_);
    const auto drawn = Clock::now();
    stats_.draw_ms += std::chrono::duration<double, std::milli>(drawn - now).count();
    if (plan_.writer) plan_.writer->write(shown_);
    stats_.encode_ms += std::chrono::duration<double, std::milli>(Clock::now() - drawn).count();
    if (plan_.display) show_in_window();
    return !quit_;
  }
  const StreamStats& stats() const { return stats_; }

 private:
  void show_in_window() {
    cv::imshow(kWindow, vision::upscale_for_display(shown_, 360));
    handle_key(cv::waitKey(1));
    while (paused_ && !quit_ && !g_interrupted) handle_key(cv::waitKey(30));
  }
  void handle_key(int key) {
    if (key < 0) return;
    switch (key & 0xFF) {
      case 'q': case 27: quit_ = true; break;
      case ' ': paused_ = !paused_; break;
      case 'm': next_method(); break;
      case 'l': next_layer(); break;
      case 's':
        if (!shown_.empty()) info_out_ << "snapshot: " << save_snapshot(shown_, a_.out_dir, stats_.processed) << "\n" << std::flush;
        break;
      default: break;
    }
  }
  /// The layer stays when the next method can use it, else its default layers are shown.
  void next_method() {
    auto v = view_.get();
    v.method = next_in(plan_.analyzer->methods(), v.method);
    const auto layers = plan_.analyzer->layers(v.method);
    if (std::find(layers.begin(), layers.end(), v.layer) == layers.end()) v.layer.clear();
    view_.set(v);
  }
  void next_layer() {
    auto v = view_.get();
    v.layer = next_in(plan_.analyzer->layers(v.method), v.layer);
    view_.set(v);
  }

  const StreamArgs& a_;
  StreamPlan& plan_;
  SharedView& view_;
  std::ostream& info_out_;
  vision::HeatmapRenderer renderer_;
  StreamStats stats_;
  double shown_fps_ = 0;
  Clock::time_point last_ = Clock::now();
  bool paused_ = false, quit_ = false;
  cv::Mat shown_;
};

/// What the summary reports.
struct StreamOutcome {
  StreamStats stats;
  double seconds = 0, decode_ms = 0;
  int64_t dropped = 0;
  vision::ViewChoice last_view;
  /// The video written ("" when none, or no frame reached it).
  std::string output;
  std::string error;
};

StreamOutcome run_frames(const StreamArgs& a, StreamPlan& plan, std::ostream& info_out) {
  if (plan.display) cv::namedWindow(kWindow, cv::WINDOW_AUTOSIZE);
  SigintGuard sigint;
  SharedView view(plan.first_view);
  const auto start = Clock::now();
  Pipeline pipeline(plan, view, a.max_frames);
  Presenter presenter(a, plan, view, info_out);
  while (!g_interrupted) {
    auto r = pipeline.next();
    if (!r || !presenter.show(*r)) break;
    if (a.max_frames > 0 && presenter.stats().processed >= a.max_frames) break;
  }
  StreamOutcome outcome;
  outcome.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  pipeline.stop();
  if (plan.display) cv::destroyAllWindows();
  outcome.stats = presenter.stats();
  outcome.decode_ms = pipeline.decode_ms();
  outcome.dropped = pipeline.dropped();
  outcome.last_view = view.get();
  outcome.error = pipeline.error();
  if (plan.writer) {
    plan.writer->finish();
    outcome.output = plan.writer->frames() > 0 ? plan.writer->path() : "";
  }
  return outcome;
}

// ---- report ---------------------------------------------------------------------------------------

void print_json_summary(const StreamPlan& plan, const StreamOutcome& o) {
  const auto& s = o.stats;
  nlohmann::json j;
  j["source"] = plan.source->name();
  j["model"] = plan.info.config.name();
  j["temperature"] = plan.info.temperature();  // 1 = uncalibrated probabilities
  j["method"] = explain_method_name(o.last_view.method);
  j["layer"] = o.last_view.layer;  // "" = the method's default layers
  j["frames"] = s.processed;
  j["dropped"] = o.dropped;
  j["fps"] = o.seconds > 0 ? s.processed / o.seconds : 0;
  j["inference_ms"] = s.processed > 0 ? s.inference_ms / s.processed : 0;
  // Where the time goes, per processed frame (the stages overlap, so they add up to more than 1/fps
  // when the cores are free): decoding, preprocessing and explain() (= inference_ms together), drawing, encoding.
  const double n = std::max<int64_t>(s.processed, 1);
  j["stage_ms"] = {{"decode", o.decode_ms},
                   {"preprocess", s.preprocess_ms / n},
                   {"explain", (s.inference_ms - s.preprocess_ms) / n},
                   {"draw", s.draw_ms / n},
                   {"encode", s.encode_ms / n}};
  j["seconds"] = o.seconds;
  j["output"] = o.output;
  j["interrupted"] = g_interrupted.load();
  j["error"] = o.error;
  std::cout << j.dump() << "\n";
}

void print_text_summary(const StreamOutcome& o) {
  const auto& s = o.stats;
  const double fps = o.seconds > 0 ? s.processed / o.seconds : 0;
  const double avg_ms = s.processed > 0 ? s.inference_ms / s.processed : 0;
  std::cout << std::fixed << std::setprecision(1) << "stream: " << s.processed << " frames, " << o.dropped << " dropped, " << fps
            << " FPS end to end, " << std::setprecision(2) << avg_ms << " ms inference per frame"
            << (o.output.empty() ? "" : ", video: " + o.output) << "\n";
}

int report_stream(const StreamArgs& a, const StreamPlan& plan, const StreamOutcome& outcome) {
  if (a.json) print_json_summary(plan, outcome);
  else print_text_summary(outcome);
  std::cout << std::flush;
  if (outcome.error.empty()) return kOk;
  const auto& writer = plan.writer;
  std::cerr << "attnkit: " << outcome.error
            << (writer && writer->frames() > 0 ? "; the " + std::to_string(writer->frames()) + " frames before it are kept in " + writer->path() : "")
            << "\n";
  return kFailure;
}

int run_stream(const StreamArgs& a) {
  std::ostream& info_out = a.json ? std::cerr : std::cout;  // stdout carries only the JSON summary
  StreamPlan plan = plan_stream(a);
  print_plan(plan, info_out);
  const StreamOutcome outcome = run_frames(a, plan, info_out);
  return report_stream(a, plan, outcome);
}

}  // namespace

Runner add_stream_command(CLI::App& cli) {
  auto a = std::make_shared<StreamArgs>();
  auto* cmd = cli.add_subcommand("stream", "Attention heatmaps over live video: camera, video file, image folder or GStreamer pipeline");
  cmd->footer("Keys: q/Esc quit, space pause, m next method, l next layer, s snapshot PNG. Ctrl-C ends like q.\n"
              "The probability on each frame is calibrated when the checkpoint stores a temperature T (attnkit\n"
              "calibrate): softmax(logits / T); the model line says which.");
  cmd->add_option("--source", a->source,
                  "Camera index (0), V4L2 device (/dev/video0), video file, folder of images (sorted by name), "
                  "or a GStreamer pipeline ending in appsink (any text with '!')")
      ->required();
  cmd->add_option("--width", a->width, "Camera mode: requested frame width in pixels (0 = the camera's default)")
      ->check(CLI::Range(0, 16384))->capture_default_str();
  cmd->add_option("--height", a->height, "Camera mode: requested frame height in pixels (0 = default)")
      ->check(CLI::Range(0, 16384))->capture_default_str();
  cmd->add_option("--fps", a->fps, "Camera mode: requested frames per second (0 = default); also the frame rate of an image folder's --output")
      ->check(finite_number())->check(CLI::Range(0.0, 1000.0))->capture_default_str();
  cmd->add_flag("--no-display", a->no_display, "Open no window (headless; use with --output or --json)");
  cmd->add_option("--output", a->output, "Write the overlaid video here: .mp4/.mov (mp4v) or .avi/.mkv (MJPG)");
  cmd->add_option("--out", a->out_dir, "Folder for snapshots taken with the s key (default: the current folder)");
  cmd->add_option("--max-frames", a->max_frames, "Stop after this many frames (0 = until the source ends)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40))->capture_default_str();
  cmd->add_option("--smooth", a->smooth, "Temporal smoothing of the heatmaps: weight of the previous map in [0, 1) (0 = off)")
      ->check(finite_number())->check(CLI::Range(0.0, 0.99))->capture_default_str();
  cmd->add_option("--method", a->method,
                  "Heatmap method (auto = native attention maps when the model has them, else gradcam); scorecam and "
                  "ablationcam run one forward per channel of the layer: the FPS they reach is in the summary")
      ->check(CLI::IsMember(explain_method_names()))->capture_default_str();
  cmd->add_flag("--aug-smooth", a->aug_smooth,
                "Test-time augmentation as pytorch-grad-cam: each frame flipped and scaled by 0.9/1.0/1.1, six maps averaged "
                "(six times the work)");
  cmd->add_flag("--eigen-smooth", a->eigen_smooth,
                "First principal component of the weighted activations instead of their sum (pytorch-grad-cam's eigen_smooth)");
  cmd->add_option("--cam-batch", a->cam_batch, "scorecam / ablationcam: masked forwards per pass (bounds their memory)")
      ->check(CLI::Range(1, 4096))->capture_default_str();
  cmd->add_option("--layer", a->layer, "Layer of the maps, e.g. layer4 or layer3.1 (default: the method's default layers)");
  cmd->add_option("--alpha", a->alpha, "Heatmap opacity in [0, 1]")->check(finite_number())->check(CLI::Range(0.0, 1.0))->capture_default_str();
  cmd->add_option("--colormap", a->colormap, "Colour map of the heatmap")
      ->check(CLI::IsMember(vision::colormap_names()))->capture_default_str();
  cmd->add_option("--weights", a->weights, "attnkit checkpoint; default: the bundled Fashion-MNIST model")->check(CLI::ExistingFile);
  cmd->add_option("--device", a->device, "auto (CUDA when available), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))->capture_default_str();
  cmd->add_option("--threads", a->threads, "CPU threads of LibTorch (0 = its default)")->check(CLI::Range(0, 1024))->capture_default_str();
  cmd->add_option("--batch", a->batch,
                  "Frames per forward pass (0 = auto: 8 for files and folders, 1 for live sources, where batching adds latency)")
      ->check(CLI::Range(0, 256))->capture_default_str();
  cmd->add_option("--precision", a->precision, common::kPrecisionHelp)
      ->check(CLI::IsMember({"auto", "float32", "bfloat16", "float16"}))->capture_default_str();
  cmd->add_flag("--eager", a->eager, std::string(common::kEagerHelp) + ". Without it, the gradient-free maps (native, "
                "eigencam, scorecam, ablationcam) come from the inference path; the gradient CAMs always run the module "
                "(they need autograd)");
  cmd->add_flag("--json", a->json, "Print the summary as one JSON object on stdout (other messages go to stderr)");
  return [cmd, a]() -> int { return cmd->parsed() ? run_stream(*a) : -1; };
}

}  // namespace attnkit::app
#endif  // ATTNKIT_HAVE_OPENCV
