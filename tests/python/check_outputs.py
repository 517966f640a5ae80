"""Checks files written by `attnkit visualize` (used by tests/cli_visualize.cmake).

  check_outputs.py png FILE WIDTH HEIGHT [BITS]   a valid PNG of that size (8-bit RGB, or 16-bit gray)
  check_outputs.py npy FILE H W                   float32 [H, W] in [0, 1] whose maximum is 1
  check_outputs.py gates FILE C                   float32 [C] in (0, 1) (a channel gate's weights)
Prints "ok: FILE" or exits non-zero with the reason.
"""
import sys

import numpy as np
from PIL import Image


def main(argv):
    kind, path = argv[1], argv[2]
    if kind == "png":
        width, height = int(argv[3]), int(argv[4])
        bits = int(argv[5]) if len(argv) > 5 else 8
        with Image.open(path) as im:
            im.load()
            if im.format != "PNG":
                sys.exit(f"{path}: not a PNG ({im.format})")
            if im.size != (width, height):
                sys.exit(f"{path}: size {im.size}, expected {(width, height)}")
            expected_modes = ("RGB",) if bits == 8 else ("I;16", "I;16B", "I")
            if im.mode not in expected_modes:
                sys.exit(f"{path}: mode {im.mode}, expected {expected_modes}")
            if bits == 16:
                a = np.asarray(im)
                if a.max() != 65535 or a.min() < 0:
                    sys.exit(f"{path}: 16-bit range {a.min()}..{a.max()}, expected up to 65535")
    elif kind == "npy":
        shape = (int(argv[3]), int(argv[4]))
        a = np.load(path)
        if a.dtype != np.float32 or a.shape != shape:
            sys.exit(f"{path}: {a.dtype} {a.shape}, expected float32 {shape}")
        if not (np.isfinite(a).all() and a.min() >= 0 and a.max() == 1):
            sys.exit(f"{path}: range {a.min()}..{a.max()}, expected [0, 1] with maximum 1")
    elif kind == "gates":
        a = np.load(path)
        if a.dtype != np.float32 or a.shape != (int(argv[3]),):
            sys.exit(f"{path}: {a.dtype} {a.shape}, expected float32 ({argv[3]},)")
        if not (np.isfinite(a).all() and a.min() > 0 and a.max() < 1):
            sys.exit(f"{path}: range {a.min()}..{a.max()}, expected (0, 1)")
    else:
        sys.exit(f"unknown check {kind}")
    print(f"ok: {path}")


if __name__ == "__main__":
    main(sys.argv)
