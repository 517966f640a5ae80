#!/usr/bin/env bash
# Sets everything up, builds attnkit and runs the demo (the README's demo command).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${ATTNKIT_BUILD_DIR:-build}"
JOBS="${ATTNKIT_JOBS:-$(nproc)}"

scripts/setup.sh
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j"$JOBS"

echo
"$BUILD/bin/attnkit" --version
echo
"$BUILD/bin/attnkit" blocks
