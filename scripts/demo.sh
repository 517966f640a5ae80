#!/usr/bin/env bash
# Sets everything up, builds attnkit and runs the demo (the README's demo command): the attention
# blocks with their cost, the bundled Fashion-MNIST model classifying and explaining the sample images,
# then evaluated on the test set.
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
echo
echo "The bundled model on the ten sample images:"
"$BUILD/bin/attnkit" classify weights/samples --top-k 3
echo
echo "Where it looks (its own CBAM maps, Grad-CAM & co.), written to ./attnkit-visualize:"
"$BUILD/bin/attnkit" visualize weights/samples/0000-ankle-boot.png --method all --out attnkit-visualize --overwrite
echo
echo "The bundled model on the Fashion-MNIST test set (10,000 images):"
"$BUILD/bin/attnkit" eval
