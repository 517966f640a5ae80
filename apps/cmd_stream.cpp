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
#include "common/files.h"
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
  bool json = false;
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

int run_stream(StreamArgs& a) {
  // Our errors are one line each: silence OpenCV's and FFmpeg's own logs (OPENCV_FFMPEG_LOGLEVEL=-8 is
  // AV_LOG_QUIET; set it yourself, e.g. to 24, to see FFmpeg's warnings again).
  cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_SILENT);
  ::setenv("OPENCV_FFMPEG_LOGLEVEL", "-8", 0);
  common::configure_threads(a.threads);
  const std::string device_name = common::resolve_device(a.device);
  common::configure_cuda_speed(device_name);
  const int colormap = vision::colormap_from_name(a.colormap);
  const bool display = !a.no_display;
  if (display && !std::getenv("DISPLAY") && !std::getenv("WAYLAND_DISPLAY"))
    throw std::runtime_error("no display to open a window on (DISPLAY is not set); pass --no-display to run headless");
  std::ostream& info_out = a.json ? std::cerr : std::cout;  // stdout carries only the JSON summary

  // Model first (fast failure on a bad checkpoint), then the source, then the output file.
  Checkpoint info;
  auto model = load_checkpoint(weights_or_bundled(a.weights), &info);
  const torch::Device device(device_name);
  const torch::ScalarType dtype =
      a.precision != "auto" ? common::dtype_from_name(a.precision)
                            : (vision::reduced_precision_is_fast(device, torch::kBFloat16) ? torch::kBFloat16 : torch::kFloat32);
  if (dtype == torch::kHalf && device.is_cpu())
    throw std::runtime_error("--precision float16 needs --device cuda (CPU convolutions have no fast float16 path); use bfloat16");
  vision::FrameAnalyzer analyzer(model, info, device, dtype);
  vision::ViewChoice first_view{analyzer.resolve(explain_method_from_name(a.method)), a.layer};
  const auto valid_layers = analyzer.layers(first_view.method);
  if (std::find(valid_layers.begin(), valid_layers.end(), a.layer) == valid_layers.end()) {
    std::string list;
    for (size_t i = 1; i < valid_layers.size(); ++i) list += (i > 1 ? ", " : "") + valid_layers[i];
    throw std::runtime_error("--layer " + a.layer + ": not a layer " + explain_method_name(first_view.method) + " can use (valid: " + list + ")");
  }

  const vision::SourceSpec spec = vision::parse_source(a.source);
  vision::VideoSource source(spec, {a.width, a.height, a.fps});
  const auto& mode = source.mode();
  // Files and folders are analysed several frames per forward (throughput); live sources one at a
  // time, since waiting to fill a batch would add latency and make the capture queue drop frames.
  const int batch = a.batch > 0 ? a.batch : (source.live() ? 1 : 8);
  std::unique_ptr<vision::VideoFileWriter> writer;
  if (!a.output.empty()) {
    const double out_fps = mode.fps > 0 && mode.fps < 1000 ? mode.fps : (a.fps > 0 ? a.fps : 25.0);
    writer = std::make_unique<vision::VideoFileWriter>(a.output, cv::Size(mode.width, mode.height), out_fps);
  }
  info_out << "source: " << source.name() << ": " << vision::describe(mode) << "\n"
           << "model: " << info.config.name() << ", " << explain_method_name(first_view.method) << " maps, " << device_name << ", "
           << common::dtype_name(dtype) << ", batch " << batch << "\n"
           << std::flush;
  if (display) cv::namedWindow(kWindow, cv::WINDOW_AUTOSIZE);

  SigintGuard sigint;
  SharedView shared_view(first_view);
  // Room for a batch being read while the previous one is analysed; results hold a whole batch.
  vision::BoundedQueue<vision::Frame> frames(source.live() ? std::max(2, batch) : 2 * batch,
                                             source.live() ? vision::QueuePolicy::DropOldest : vision::QueuePolicy::Block);
  vision::BoundedQueue<vision::Analysis> results(std::max(2, batch), vision::QueuePolicy::Block);
  std::string inference_error;
  const auto start = Clock::now();
  std::optional<vision::CaptureThread> capture;
  capture.emplace(source, frames);
  std::thread inference([&] {
    try {
      int64_t analysed = 0;
      bool open = true;
      while (open) {
        // Never analyse frames past --max-frames: the last batch is cut to what is still wanted.
        const int64_t wanted = a.max_frames > 0 ? std::min<int64_t>(batch, a.max_frames - analysed) : batch;
        if (wanted <= 0) break;
        auto batch_frames = frames.pop_up_to(static_cast<size_t>(wanted), /*fill=*/!source.live());
        if (batch_frames.empty()) break;
        analysed += static_cast<int64_t>(batch_frames.size());
        for (auto& r : analyzer.analyze(std::move(batch_frames), shared_view.get())) {
          if (!results.push(std::move(r))) {
            open = false;
            break;
          }
        }
      }
    } catch (const c10::Error& e) {
      inference_error = e.what_without_backtrace();
    } catch (const std::exception& e) {
      inference_error = e.what();
    }
    results.close();
  });
  // Every way out of the loop (end, q, Ctrl-C, an exception while drawing) stops both threads.
  struct Stop {
    std::function<void()> fn;
    ~Stop() { fn(); }
  } stop_threads{[&] {
    results.close();
    if (capture) capture->stop();
    if (inference.joinable()) inference.join();
  }};

  vision::HeatmapRenderer renderer({a.alpha, colormap, a.smooth});
  int64_t processed = 0;
  double inference_ms = 0, preprocess_ms = 0, draw_ms = 0, encode_ms = 0, shown_fps = 0;
  auto last = Clock::now();
  bool paused = false, quit = false;
  cv::Mat shown;
  const auto handle_key = [&](int key) {
    if (key < 0) return;
    switch (key & 0xFF) {
      case 'q': case 27: quit = true; break;
      case ' ': paused = !paused; break;
      case 'm': {
        auto v = shared_view.get();
        v.method = next_in(analyzer.methods(), v.method);
        const auto layers = analyzer.layers(v.method);
        if (std::find(layers.begin(), layers.end(), v.layer) == layers.end()) v.layer.clear();
        shared_view.set(v);
        break;
      }
      case 'l': {
        auto v = shared_view.get();
        v.layer = next_in(analyzer.layers(v.method), v.layer);
        shared_view.set(v);
        break;
      }
      case 's':
        if (!shown.empty()) info_out << "snapshot: " << save_snapshot(shown, a.out_dir, processed) << "\n" << std::flush;
        break;
      default: break;
    }
  };

  while (!quit && !g_interrupted) {
    auto r = results.pop();
    if (!r) break;
    ++processed;
    inference_ms += r->inference_ms;
    preprocess_ms += r->preprocess_ms;
    const auto now = Clock::now();
    const double dt = std::chrono::duration<double>(now - last).count();
    last = now;
    if (dt > 0) shown_fps = processed <= 2 ? 1.0 / dt : 0.9 * shown_fps + 0.1 / dt;
    shown = renderer.render(*r, analyzer.class_name(r->label), shown_fps);
    const auto drawn = Clock::now();
    draw_ms += std::chrono::duration<double, std::milli>(drawn - now).count();
    if (writer) writer->write(shown);
    encode_ms += std::chrono::duration<double, std::milli>(Clock::now() - drawn).count();
    if (display) {
      cv::imshow(kWindow, vision::upscale_for_display(shown, 360));
      handle_key(cv::waitKey(1));
      while (paused && !quit && !g_interrupted) handle_key(cv::waitKey(30));
    }
    if (a.max_frames > 0 && processed >= a.max_frames) break;
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  stop_threads.fn();
  stop_threads.fn = [] {};
  if (display) cv::destroyAllWindows();

  std::string error = capture->error();
  if (error.empty()) error = inference_error;
  std::string output_note;
  if (writer) {
    writer->finish();
    output_note = writer->frames() > 0 ? writer->path() : "";
  }
  const int64_t dropped = frames.dropped();
  const double fps = seconds > 0 ? processed / seconds : 0;
  const double avg_ms = processed > 0 ? inference_ms / processed : 0;
  if (a.json) {
    nlohmann::json j;
    j["source"] = source.name();
    j["model"] = info.config.name();
    j["method"] = explain_method_name(shared_view.get().method);
    j["layer"] = shared_view.get().layer;  // "" = the method's default layers
    j["frames"] = processed;
    j["dropped"] = dropped;
    j["fps"] = fps;
    j["inference_ms"] = avg_ms;
    // Where the time goes, per processed frame (the stages overlap, so they add up to more than 1/fps
    // when the cores are free): decoding, preprocessing and explain() (= inference_ms together), drawing, encoding.
    const double n = std::max<int64_t>(processed, 1);
    j["stage_ms"] = {{"decode", capture->frames_read() > 0 ? capture->read_ms() / capture->frames_read() : 0.0},
                     {"preprocess", preprocess_ms / n},
                     {"explain", (inference_ms - preprocess_ms) / n},
                     {"draw", draw_ms / n},
                     {"encode", encode_ms / n}};
    j["seconds"] = seconds;
    j["output"] = output_note;
    j["interrupted"] = g_interrupted.load();
    j["error"] = error;
    std::cout << j.dump() << "\n";
  } else {
    std::cout << std::fixed << std::setprecision(1) << "stream: " << processed << " frames, " << dropped << " dropped, " << fps
              << " FPS end to end, " << std::setprecision(2) << avg_ms << " ms inference per frame"
              << (output_note.empty() ? "" : ", video: " + output_note) << "\n";
  }
  std::cout << std::flush;
  if (!error.empty()) {
    std::cerr << "attnkit: " << error
              << (writer && writer->frames() > 0 ? "; the " + std::to_string(writer->frames()) + " frames before it are kept in " + writer->path() : "")
              << "\n";
    return kFailure;
  }
  return kOk;
}

}  // namespace

Runner add_stream_command(CLI::App& cli) {
  auto a = std::make_shared<StreamArgs>();
  auto* cmd = cli.add_subcommand("stream", "Attention heatmaps over live video: camera, video file, image folder or GStreamer pipeline");
  cmd->footer("Keys: q/Esc quit, space pause, m next method, l next layer, s snapshot PNG. Ctrl-C ends like q.");
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
  cmd->add_option("--method", a->method, "Heatmap method (auto = native attention maps when the model has them, else gradcam)")
      ->check(CLI::IsMember(explain_method_names()))->capture_default_str();
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
  cmd->add_option("--precision", a->precision,
                  "Arithmetic of the network: float32, bfloat16, float16 (CUDA only), or auto = bfloat16 on CUDA and on "
                  "CPUs with AMX-BF16 (2-3x faster convolutions), else float32. Maps and labels may differ slightly from float32")
      ->check(CLI::IsMember({"auto", "float32", "bfloat16", "float16"}))->capture_default_str();
  cmd->add_flag("--json", a->json, "Print the summary as one JSON object on stdout (other messages go to stderr)");
  return [cmd, a]() -> int { return cmd->parsed() ? run_stream(*a) : -1; };
}

}  // namespace attnkit::app
#endif  // ATTNKIT_HAVE_OPENCV
