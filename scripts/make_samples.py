#!/usr/bin/env python3
"""Writes weights/samples/: the first test-set image of every Fashion-MNIST class as a PNG.

The demo, the README examples and the apps' tests use these files. Test-set images only illustrate;
nothing is trained or selected on them. Run: python3 scripts/make_samples.py [DATA_DIR] [OUT_DIR]
"""
import gzip
import pathlib
import struct
import sys
import zlib

NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def read_idx(path):
    data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def write_png_gray(path, width, height, pixels):
    # Minimal PNG writer (8-bit grayscale), so this script needs nothing beyond the standard library.
    raw = b"".join(b"\x00" + pixels[y * width:(y + 1) * width] for y in range(height))
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def main():
    data = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
    out = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else pathlib.Path(__file__).resolve().parent.parent / "weights" / "samples")
    out.mkdir(parents=True, exist_ok=True)
    (n, h, w), images = read_idx(data / "t10k-images-idx3-ubyte.gz")
    _, labels = read_idx(data / "t10k-labels-idx1-ubyte.gz")
    seen = set()
    for i in range(n):
        label = labels[i]
        if label in seen:
            continue
        seen.add(label)
        write_png_gray(out / f"{i:04d}-{NAMES[label]}.png", w, h, images[i * h * w:(i + 1) * h * w])
        if len(seen) == len(NAMES):
            break


if __name__ == "__main__":
    main()
