#!/usr/bin/env bash
# The prepared GPU check: build here, run there, read one summary.
#
#   scripts/gpu_check.sh prepare [DIR]   # here (no GPU needed): build the library, the CUDA test cases
#                                        # and `attnkit bench` (no OpenCV) for sm_90 into DIR
#                                        # (default gpu-check/), stripped, at most 60 MiB
#   scripts/gpu_check.sh run [DIR]       # on the GPU machine (PyTorch in its python3, nothing else):
#                                        # every CUDA test case, compute-sanitizer memcheck and
#                                        # racecheck on them, the CUDA bench rows; within 8 minutes;
#                                        # writes $OUT/gpu-summary.json, $OUT/gpu-summary.txt and
#                                        # $OUT/gpu-logs.tar.gz (three files: the device tool returns 8)
#
# With the device tool: prepare here, then run `scripts/gpu_check.sh run gpu-check` there with
# carry ["gpu-check"] (the folder is git-ignored, so it travels only when carried); $OUT gets the
# three result files.
# `run` also works where there is no GPU (the CUDA cases skip): that is how it is dry-run here
# before a GPU session, so the first real run does not die on a typo.
# After a real run: flip modules/implementation.cpp's kernel_verification() entries only for the
# ops whose CUDA cases all passed, with no sanitizer errors, and which the bench shows faster.
set -euo pipefail
cd "$(dirname "$0")/.."
verb="${1:-}"
DIR="${2:-gpu-check}"
SUITES=(test_cuda_smoke test_fused_cbam test_fused_local_attention test_fused_self_attention test_gates
        test_feature_attention test_sequence_attention test_explain)

prepare() {
  local build=build-gpu
  scripts/setup.sh >/dev/null
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DATTNKIT_CUDA=ON -DATTNKIT_CUDA_ARCHITECTURES=90 \
        -DATTNKIT_APPS_OPENCV=OFF -DATTNKIT_BUILD_TESTS=ON >/dev/null
  cmake --build "$build" -j"$(nproc)" --target attnkit attnkit_cli "${SUITES[@]}"
  # The references the CUDA cases read (the backbones' state dicts are not needed there: hundreds of MB).
  if [[ ! -f "$build/tests/refs/gates_se.pt" ]]; then
    "${ATTNKIT_VENV:-$HOME/.cache/attnkit/venv}/bin/python" tests/python/make_references.py --out "$build/tests/refs"
  fi
  rm -rf "$DIR"
  mkdir -p "$DIR/bin" "$DIR/lib" "$DIR/refs"
  cp -L "$build/lib/libattnkit.so.0" "$DIR/lib/"  # the SONAME the binaries load
  cp "$build/bin/attnkit" "$DIR/bin/"
  for s in "${SUITES[@]}"; do cp "$build/bin/$s" "$DIR/bin/"; done
  cp "$build"/tests/refs/{gates,feature,sequence}_*.pt "$DIR/refs/" 2>/dev/null || true
  strip --strip-unneeded "$DIR"/bin/* "$DIR"/lib/*
  # compute-sanitizer, which the GPU machine lacks: NVIDIA's PyPI wheel (binaries only, compressed).
  local wheel_dir
  wheel_dir=$(mktemp -d)
  "${ATTNKIT_VENV:-$HOME/.cache/attnkit/venv}/bin/python" -m pip download --quiet --no-deps -d "$wheel_dir" \
      "nvidia-cuda-sanitizer-api==13.*"
  (cd "$wheel_dir" && python3 -m zipfile -e ./*.whl unpacked >/dev/null)  # zipfile drops the exec bits:
  chmod +x "$wheel_dir"/unpacked/nvidia/cu13/compute-sanitizer/{compute-sanitizer,TreeLauncherSubreaper}
  tar -cJf "$DIR/compute-sanitizer.tar.xz" -C "$wheel_dir/unpacked/nvidia/cu13" --exclude=docs compute-sanitizer
  rm -rf "$wheel_dir"
  cp scripts/gpu_check.sh "$DIR/"
  git rev-parse --short HEAD > "$DIR/COMMIT"  # the run's summary names the commit it checked
  local mib
  mib=$(du -sm "$DIR" | cut -f1)
  echo "gpu_check: prepared $DIR ($mib MiB)"
  if (( mib > 60 )); then
    echo "gpu_check: $DIR is over 60 MiB: it cannot be carried to the GPU machine" >&2
    exit 1
  fi
}

# Runs "$@" with a time limit; never fails the script (the summary records the result).
limited() { local limit=$1; shift; timeout --kill-after=10 "$limit" "$@"; }

run() {
  local dest="${OUT:-$PWD/gpu-out}" start=$SECONDS
  local out
  out=$(mktemp -d)  # every log here; only the summaries and one archive of the logs go to $dest
  mkdir -p "$dest"
  local torch_lib
  torch_lib=$(python3 -c "import torch, os; print(os.path.join(torch.__path__[0], 'lib'))")
  export LD_LIBRARY_PATH="$DIR/lib:$torch_lib:${LD_LIBRARY_PATH:-}"
  export ATTNKIT_REFS_DIR="$DIR/refs"
  local sanitizer
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1 || true)
  if [[ -z "$sanitizer" && -f "$DIR/compute-sanitizer.tar.xz" ]]; then
    local tools
    tools=$(mktemp -d)
    tar -xJf "$DIR/compute-sanitizer.tar.xz" -C "$tools"
    sanitizer="$tools/compute-sanitizer/compute-sanitizer"
  fi
  local gpu
  gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')")
  {
    echo "gpu: $gpu"
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(cat "$DIR/COMMIT" 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  } > "$out/gpu-summary.txt"

  # 1. Every CUDA case (gtest filter *Cuda*), 90 s per suite; results as gtest JSON.
  local results=()
  for s in "${SUITES[@]}"; do
    local rc=0
    limited 90 "$DIR/bin/$s" --gtest_filter='*Cuda*:*CUDA*:KernelCopy.*' --gtest_output="json:$out/$s.json" \
      > "$out/$s.log" 2>&1 || rc=$?
    results+=("\"$s\": {\"exit\": $rc, \"passed\": $(grep -c '^\[       OK \]' "$out/$s.log" || true), \"failed\": $(grep -c '^\[  FAILED  \] [A-Za-z].*(' "$out/$s.log" || true), \"skipped\": $(grep -c '^\[  SKIPPED \] [A-Za-z].*(' "$out/$s.log" || true)}")
    echo "$s: exit $rc" >> "$out/gpu-summary.txt"
  done

  # 2. compute-sanitizer memcheck and racecheck on the fused ops' CUDA cases (60 s each).
  local san=()
  if [[ -n "$sanitizer" ]]; then
    for tool in memcheck racecheck; do
      for s in test_fused_cbam test_fused_local_attention test_fused_self_attention; do
        local log="$out/$s.$tool.log"
        limited 60 "$sanitizer" --tool "$tool" --error-exitcode 99 "$DIR/bin/$s" --gtest_filter='*Cuda*' > "$log" 2>&1 || true
        local errors
        errors=$(grep -Eo 'ERROR SUMMARY: [0-9]+' "$log" | grep -Eo '[0-9]+' | tail -n 1 || true)
        san+=("\"$s.$tool\": ${errors:-null}")
        echo "$s $tool: ${errors:-no summary} errors" >> "$out/gpu-summary.txt"
      done
    done
  else
    echo "compute-sanitizer: not found" >> "$out/gpu-summary.txt"
  fi

  # 3. The CUDA bench rows of issue 16 (fused vs composite vs copy), as JSON lines.
  local bench="$out/bench.jsonl"
  : > "$bench"
  if [[ "$gpu" != none ]]; then
    limited 60 "$DIR/bin/attnkit" bench --device cuda --op cbam --shape 32 256 56 56 --dtype float16 --pass both --json >> "$bench" 2>> "$out/bench.log" || true
    limited 60 "$DIR/bin/attnkit" bench --device cuda --op local --shape 2 128 56 56 --dtype float32 --pass both --json >> "$bench" 2>> "$out/bench.log" || true
    limited 60 "$DIR/bin/attnkit" bench --device cuda --op self --shape 1 256 56 56 --dtype float16 --pass both --json >> "$bench" 2>> "$out/bench.log" || true
    for a in cbam none; do
      limited 60 "$DIR/bin/attnkit" bench --device cuda --op resnet50 --attention "$a" --batch 64 --dtype float16 --pass forward --json >> "$bench" 2>> "$out/bench.log" || true
    done
  fi

  local IFS=,
  {
    echo "{\"gpu\": \"$gpu\", \"seconds\": $((SECONDS - start)), \"suites\": {${results[*]}},"
    echo " \"sanitizer\": {${san[*]}},"
    echo " \"bench\": ["
    paste -sd, "$bench"
    echo "]}"
  } > "$dest/gpu-summary.json"
  cp "$out/gpu-summary.txt" "$dest/"
  tar -czf "$dest/gpu-logs.tar.gz" -C "$out" .
  echo "gpu_check: $((SECONDS - start)) s; summary in $dest/gpu-summary.json"
  cat "$dest/gpu-summary.txt"
}

case "$verb" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: scripts/gpu_check.sh prepare|run [DIR]" >&2; exit 2 ;;
esac
