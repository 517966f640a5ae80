#!/usr/bin/env bash
# Sets everything up, builds attnkit and runs the whole test suite (the README's test command).
#   scripts/test.sh             # Release build in ./build, then ctest
# Environment: ATTNKIT_BUILD_DIR (default build), ATTNKIT_JOBS (default: number of cores),
# plus everything scripts/setup.sh reads.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${ATTNKIT_BUILD_DIR:-build}"
JOBS="${ATTNKIT_JOBS:-$(nproc)}"

scripts/setup.sh
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j"$JOBS"
ctest --test-dir "$BUILD" --output-on-failure -j"$JOBS" --timeout 1800
