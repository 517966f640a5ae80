#!/usr/bin/env bash
# attnkit set-up: installs every dependency the build, the tests and the demo need.
# Idempotent: a second run with everything present only checks, and takes seconds.
#
#   scripts/setup.sh            # Debian packages + Python venv with torch/torchvision/timm/grad-cam
#                               # (+ onnxruntime/openvino/onnx/onnxscript for scripts/bench_peers.py)
#
# Environment:
#   ATTNKIT_VENV     where the Python environment lives (default ~/.cache/attnkit/venv).
#                    It is outside the checkout on purpose: fresh clones (CI) reuse it.
#   ATTNKIT_SKIP_APT=1  do not touch Debian packages (for machines you do not administer).
set -euo pipefail

VENV="${ATTNKIT_VENV:-$HOME/.cache/attnkit/venv}"
TORCH_VERSION=2.11.0
TORCHVISION_VERSION=0.26.0
TIMM_VERSION=1.0.31
# pytorch-grad-cam: the CAM family's reference maps and faithfulness metrics (tests/python/refs_explain.py)
# and the peer of scripts/bench_cam.py.
GRADCAM_VERSION=1.5.7
# Benchmark peers, for scripts/bench_peers.py only (onnxscript: torch.onnx.export's exporter needs it).
ONNXRUNTIME_VERSION=1.32.0
OPENVINO_VERSION=2026.4.1
ONNX_VERSION=1.23.2
ONNXSCRIPT_VERSION=0.7.2

say() { printf '[setup] %s\n' "$*"; }

# ---- Debian packages ---------------------------------------------------------------------------
APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  python3-venv
  libopencv-dev        # apps: image/video I/O, drawing, windows (FFmpeg + GStreamer back-ends)
  libcli11-dev         # apps: command-line parsing
  nlohmann-json3-dev   # JSON: checkpoint metadata, safetensors headers, --json output
  zlib1g-dev           # apps: gzipped IDX data (the Fashion-MNIST package)
  libgtest-dev libgmock-dev  # tests
  libbenchmark-dev     # micro-benchmarks
  dataset-fashion-mnist  # training data for the bundled weights and the tests
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good  # videotestsrc etc. for stream tests
  ffmpeg               # writes test videos
  xvfb xauth           # window tests without a display
  xdotool              # presses the stream window's keys in those tests
  clang libclang-rt-dev  # scripts/fuzz.sh: libFuzzer and AddressSanitizer (the fuzz preset)
)

if [[ "${ATTNKIT_SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    say "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    say "Debian packages: all present"
  fi
fi

# ---- Python environment with LibTorch ------------------------------------------------------------
# The interpreter: prefer the system one (python3-venv above), any python3 >= 3.10 works.
PY="${ATTNKIT_PYTHON:-python3}"
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating Python environment at $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
fi
PIP_PINS=("torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" "timm==$TIMM_VERSION" "grad-cam==$GRADCAM_VERSION"
          "onnxruntime==$ONNXRUNTIME_VERSION" "openvino==$OPENVINO_VERSION" "onnx==$ONNX_VERSION"
          "onnxscript==$ONNXSCRIPT_VERSION")
want="${PIP_PINS[*]}"
# What the venv has of the same packages, in the same order ("name==missing" for an absent one).
have=$("$VENV/bin/python" - "${PIP_PINS[@]%%==*}" <<'PY' 2>/dev/null || true
import importlib.metadata as m, sys
def version(p):
    try:
        return m.version(p)
    except m.PackageNotFoundError:
        return "missing"
print(" ".join(f"{p}=={version(p)}" for p in sys.argv[1:]))
PY
)
if [[ "$have" != "$want" ]]; then
  say "installing into $VENV: $want (a few GB on first run)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet "${PIP_PINS[@]}" numpy safetensors
else
  say "Python environment: $want present"
fi
say "LibTorch CMake config: $("$VENV/bin/python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
