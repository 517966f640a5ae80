#!/usr/bin/env python3
"""Seed inputs for the fuzz targets in tests/fuzz, and the crafted inputs kept as regressions.

  ~/.cache/attnkit/venv/bin/python scripts/fuzz_corpus.py --out build/tests/fuzz-corpus
  ~/.cache/attnkit/venv/bin/python scripts/fuzz_corpus.py --regressions tests/fuzz/regressions

--out DIR writes one folder per target (checkpoint, state_dict, safetensors, idx, image_list) of
small, well-formed inputs that exercise each reader's features (every dtype, strided and shared
storages, gzip, metadata, list-file syntax) plus a few damaged ones. Files named valid-* are ones the
reader must accept; the replay (CTest's fuzz.* cases) checks that. libFuzzer starts from the same
folders (README, "Fuzzing").

--regressions DIR writes, per target, the hostile inputs that once crashed a reader, made it read
out of bounds, allocate far beyond what the file holds, or accept a damaged file (issue 21's
probe). Each must be rejected; the replay checks that too. They are committed in
tests/fuzz/regressions, so the CTest cases do not depend on this script's output staying the same;
this script documents how each was made.

Everything is deterministic (fixed seeds), so a corpus made twice is byte-for-byte the same.
"""
import argparse
import gzip
import io
import json
import os
import pickletools
import re
import struct
import sys
import zipfile

import torch

MASK = (1 << 64) - 1
DTYPE_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
               torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
               torch.uint8: "Byte", torch.bool: "Bool"}
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                      torch.uint8: "U8", torch.bool: "BOOL"}


# ---- attnkit checkpoints (backbones/checkpoint.h) ------------------------------------------------

class Fnv:
    """checkpoint.cpp's checksum: FNV-1a's step over 64-bit little-endian words, then the length."""

    def __init__(self):
        self.h = 0xcbf29ce484222325

    def _step(self, w):
        self.h = ((self.h ^ w) * 0x100000001b3) & MASK

    def feed(self, data: bytes):
        n = len(data)
        full = n - n % 8
        for i in range(0, full, 8):
            self._step(int.from_bytes(data[i:i + 8], "little"))
        self._step(int.from_bytes(data[full:], "little"))
        self._step(n)


def tensor_bytes(t):
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def checkpoint_checksum(config: str, state: dict) -> str:
    h = Fnv()
    h.feed(config.encode())
    for name in sorted(state, key=lambda s: s.encode()):
        t = state[name]
        h.feed(name.encode())
        h.feed(DTYPE_NAMES[t.dtype].encode())
        h.feed(struct.pack(f"<{t.dim()}q", *t.shape))
        h.feed(tensor_bytes(t))
    return f"{h.h:016x}"


def checkpoint_config(num_classes=3):
    return json.dumps({
        "model": {"name": "resnet20", "family": "cifar_resnet", "depth": 20, "attention": ["", "", ""],
                  "num_classes": num_classes, "in_channels": 1, "width": 1.0, "stem": "small", "shortcut": "B"},
        "class_names": [f"class {i}" for i in range(num_classes)],
        "preprocessing": {"input_height": 28, "input_width": 28, "resize": "stretch", "resize_size": 28,
                          "crop": "none", "color_order": "GRAY", "pixel_scale": 1 / 255, "mean": [0.5],
                          "std": [0.25]},
        "metadata": {"source": "scripts/fuzz_corpus.py"}})


def save_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def checkpoint_bytes(state, config=None, checksum=None) -> bytes:
    config = config if config is not None else checkpoint_config()
    return save_bytes({"format": "attnkit-checkpoint", "version": 1, "config": config, "state": state,
                       "checksum": checksum if checksum is not None else checkpoint_checksum(config, state)})


def small_state(gen):
    base = torch.randn(6, 4, generator=gen)
    return {"conv1.weight": torch.randn(2, 1, 3, 3, generator=gen),
            "fc.weight": base.t(),                       # a transposed view: strides (1, 4)
            "fc.bias": base[1, :3],                      # shares base's storage at an offset
            "bn1.running_var": torch.rand(2, generator=gen, dtype=torch.float64),
            "bn1.num_batches_tracked": torch.tensor(7),
            "layer1.0.half": torch.randn(5, generator=gen).half(),
            "layer1.0.bf16": torch.randn(5, generator=gen).bfloat16(),
            "mask": torch.tensor([True, False, True]),
            "empty": torch.empty(0, 3)}


# ---- zip surgery (the archive torch.save writes) ---------------------------------------------------

def rewrite_zip_entry(data: bytes, suffix: str, change) -> bytes:
    """The archive with the entry whose name ends in `suffix` replaced by change(old bytes); CRCs right."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = src.read(info)
            entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)   # (not the clock: reproducible)
            dst.writestr(entry, change(body) if info.filename.endswith(suffix) else body)
    return out.getvalue()


def central_directory_offset(data: bytes) -> int:
    eocd = data.rfind(b"PK\x05\x06")
    cd = struct.unpack_from("<I", data, eocd + 16)[0]
    if cd == 0xFFFFFFFF:  # zip64: the real offset is in the zip64 end record
        z64 = data.rfind(b"PK\x06\x06")
        cd = struct.unpack_from("<Q", data, z64 + 48)[0]
    return cd


def hostile_central_directory(data: bytes) -> bytes:
    """The first central-directory entry with name and extra lengths 0xFFFF and a local-header
    offset 0xFFFFFFFF (issue 21: reads past the buffer inside miniz)."""
    b = bytearray(data)
    cd = central_directory_offset(data)
    assert b[cd:cd + 4] == b"PK\x01\x02"
    struct.pack_into("<HH", b, cd + 28, 0xFFFF, 0xFFFF)
    struct.pack_into("<I", b, cd + 42, 0xFFFFFFFF)
    return bytes(b)


def local_header_then_zeros(data: bytes) -> bytes:
    return data[:30] + bytes(4096)


# ---- pickle surgery ------------------------------------------------------------------------------

def storage_larger_than_record(pkl: bytes) -> bytes:
    """The first storage's element count (BININT1 4) raised to 2^20 while its record keeps 16 bytes."""
    new, n = re.subn(rb"(X\x03\x00\x00\x00cpu(?:q.|r....)?)K\x04", lambda m: m.group(1) + b"J\x00\x00\x10\x00", pkl, count=1, flags=re.S)
    assert n == 1, "no 4-element storage in the pickle"
    return new


def first_opcode(pkl: bytes, name: str) -> int:
    """Where the pickle's first opcode called `name` starts (found by walking the opcodes, so that a
    matching byte inside a string or an argument is never mistaken for it)."""
    for op, _, pos in pickletools.genops(pkl):
        if op.name == name:
            return pos
    raise AssertionError(f"no {name} in the pickle")


def huge_memo_get(pkl: bytes) -> bytes:
    """A memo read of index 0x28000000 (LONG_BINGET, then POP) after the first memo write: the pickle
    stays otherwise intact, so the index is its only defect (torch's small pickles have no BINGET
    of their own to rewrite)."""
    pos = first_opcode(pkl, "BINPUT") + 2
    return pkl[:pos] + b"j" + struct.pack("<I", 0x28000000) + b"0" + pkl[pos:]


def huge_memo_put(pkl: bytes) -> bytes:
    """The first memo write (BINPUT, 2 bytes) turned into LONG_BINPUT at index 0x28000000 (5 bytes)."""
    pos = first_opcode(pkl, "BINPUT")
    return pkl[:pos] + b"r" + struct.pack("<I", 0x28000000) + pkl[pos + 2:]


def deep_nesting(depth=150_000) -> bytes:
    """A pickle of lists nested `depth` deep (the probe used 600,000; the reader's stack bound is 100,000): EMPTY_LIST × depth, APPEND × (depth - 1)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def huge_string_length() -> bytes:
    """A BINUNICODE string that claims 4 GiB - 1 bytes and holds 5."""
    return b"\x80\x02X\xff\xff\xff\xffhello."


def replace_pickle(data: bytes, pkl: bytes) -> bytes:
    return rewrite_zip_entry(data, "data.pkl", lambda _: pkl)


# ---- safetensors ---------------------------------------------------------------------------------

def safetensors_bytes(tensors: dict, metadata=None, offsets=None, pad_header=0) -> bytes:
    header, blob = {}, b""
    for name, t in tensors.items():
        data = tensor_bytes(t)
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    if offsets:
        for name, off in offsets.items():
            header[name]["data_offsets"] = off
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode() + b" " * pad_header
    return struct.pack("<Q", len(text)) + text + blob


# ---- IDX -----------------------------------------------------------------------------------------

IDX_TYPES = {torch.uint8: 0x08, torch.int8: 0x09, torch.int16: 0x0B, torch.int32: 0x0C, torch.float32: 0x0D,
             torch.float64: 0x0E}


def idx_bytes(t) -> bytes:
    head = bytes([0, 0, IDX_TYPES[t.dtype], t.dim()]) + b"".join(struct.pack(">I", s) for s in t.shape)
    body = t.contiguous().numpy().astype(t.numpy().dtype.newbyteorder(">")).tobytes() if t.numel() else b""
    return head + body


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# ---- the folders ---------------------------------------------------------------------------------

def corpus(gen):
    state = small_state(gen)
    ck = checkpoint_bytes(state)
    tv_keys = {"conv1.weight": torch.randn(4, 3, 3, 3, generator=gen), "bn1.weight": torch.ones(4),
               "bn1.bias": torch.zeros(4), "bn1.running_mean": torch.zeros(4), "bn1.running_var": torch.ones(4),
               "bn1.num_batches_tracked": torch.tensor(0), "layer1.0.conv1.weight": torch.randn(4, 4, 3, 3, generator=gen),
               "layer1.0.bn1.weight": torch.ones(4), "fc.weight": torch.randn(10, 4, generator=gen),
               "fc.bias": torch.zeros(10)}
    dtypes = {f"t_{SAFETENSORS_DTYPES[d].lower()}": (torch.randn(3, 2, generator=gen) * 4).to(d)
              for d in SAFETENSORS_DTYPES}
    images = torch.randint(0, 256, (3, 5, 4), generator=gen, dtype=torch.uint8)
    return {
        "checkpoint": {
            "valid-small.attnkit": ck,
            "valid-no-class-names.attnkit": checkpoint_bytes(
                {"fc.bias": torch.zeros(3)}, config=checkpoint_config().replace('"class 0", "class 1", "class 2"', "")),
            "bad-checksum.attnkit": checkpoint_bytes(state, checksum="0" * 16),
            "truncated.attnkit": ck[: len(ck) // 2],
        },
        "state_dict": {
            "valid-torchvision.pth": save_bytes(tv_keys),
            "valid-dataparallel.pth": save_bytes({"module." + k: v for k, v in tv_keys.items()}),
            "valid-training-checkpoint.pth": save_bytes({"epoch": 3, "state_dict": tv_keys, "arch": "resnet18"}),
            "valid-strided.pth": save_bytes({k: v for k, v in state.items() if k != "empty"} | tv_keys),
            "valid-torchvision.safetensors": safetensors_bytes(tv_keys, metadata={"format": "pt"}),
            "legacy-tar.pth": b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.",   # the old non-zip format: refused
        },
        "safetensors": {
            "valid-all-dtypes.safetensors": safetensors_bytes(dtypes, metadata={"format": "pt", "note": "seed"}),
            "valid-empty-tensor.safetensors": safetensors_bytes({"e": torch.empty(0, 4), "s": torch.tensor(2.5)}),
            "valid-padded-header.safetensors": safetensors_bytes({"a": torch.arange(4.0)}, pad_header=6),
            "valid-nothing.safetensors": safetensors_bytes({}),
            "gap.safetensors": safetensors_bytes({"a": torch.arange(2.0), "b": torch.arange(2.0)},
                                                 offsets={"b": [12, 20]}),
        },
        "idx": {
            "valid-images.idx": idx_bytes(images),
            "valid-images.idx.gz": gz(idx_bytes(images)),
            "valid-labels.idx": idx_bytes(torch.tensor([0, 9, 3], dtype=torch.uint8)),
            "valid-float.idx": idx_bytes(torch.randn(2, 3, generator=gen)),
            "valid-int16-4d.idx": idx_bytes(torch.arange(24, dtype=torch.int16).reshape(1, 2, 3, 4)),
            "valid-double.idx": idx_bytes(torch.randn(2, generator=gen, dtype=torch.float64)),
            "truncated.idx": idx_bytes(images)[:-3],
        },
        "image_list": {   # first byte: bit 0 = recursive; the rest is the list file
            "files.txt": b"\x00a.png\nb.JPG\n# a comment\n\n  c.jpeg  \r\nnotes.txt\n",
            "folders.txt": b"\x00sub\n.\nempty\nfolder.png\n",
            "recursive.txt": b"\x01sub\n.\n",
            "patterns.txt": b"\x00*.png\nsub/*\n[[]x].png\nstar[*].png\n*.JPG\n**\n",
            "odd.txt": b"\x00pipe.png\nloop\nloop/loop/a.png\nmissing.png\nsub/../a.png\na.png\n",
        },
    }


def regressions(gen):
    state = {"w": torch.arange(4.0)}          # one 4-element float storage: a 16-byte record
    ck = checkpoint_bytes(state)
    sd = save_bytes(state)
    return {
        "checkpoint": {
            "storage-larger-than-record.attnkit": rewrite_zip_entry(ck, "data.pkl", storage_larger_than_record),
            "central-directory-ffff.attnkit": hostile_central_directory(ck),
            "local-header-then-zeros.attnkit": local_header_then_zeros(ck),
            "memo-get-0x28000000.attnkit": rewrite_zip_entry(ck, "data.pkl", huge_memo_get),
            "memo-put-0x28000000.attnkit": rewrite_zip_entry(ck, "data.pkl", huge_memo_put),
            "nested-150000.attnkit": replace_pickle(ck, deep_nesting()),
            "string-4gib.attnkit": replace_pickle(ck, huge_string_length()),
        },
        "state_dict": {
            "storage-larger-than-record.pth": rewrite_zip_entry(sd, "data.pkl", storage_larger_than_record),
            "central-directory-ffff.pth": hostile_central_directory(sd),
            "local-header-then-zeros.pth": local_header_then_zeros(sd),
            "memo-get-0x28000000.pth": rewrite_zip_entry(sd, "data.pkl", huge_memo_get),
            "string-4gib.pth": replace_pickle(sd, huge_string_length()),
            "stride-0-4gib.pth": save_bytes({"w": torch.zeros(4).expand(1 << 28, 4)}),
        },
        "safetensors": {
            "overlapping-offsets.safetensors": safetensors_bytes(
                {"a": torch.arange(2.0), "b": torch.arange(2.0), "c": torch.arange(1.0)},
                offsets={"b": [4, 12], "c": [12, 16]}),
            "shifted-offsets.safetensors": safetensors_bytes(
                {"a": torch.arange(2.0), "b": torch.arange(2.0)}, offsets={"a": [4, 12], "b": [12, 20]}),
            "length-past-data.safetensors": safetensors_bytes(
                {"a": torch.arange(2.0)}, offsets={"a": [0, 1 << 40]}),
            "shape-times-dtype-mismatch.safetensors": safetensors_bytes(
                {"a": torch.arange(4.0)}, offsets={"a": [0, 12]})[:-4],
            "header-length-huge.safetensors": struct.pack("<Q", (1 << 64) - 1) + b"{}",
        },
        "idx": {
            # a few KB of gzip that inflate to 64 MiB, behind a header that claims one byte
            "gzip-bomb.idx.gz": gz(bytes([0, 0, 8, 3]) + struct.pack(">III", 1, 1, 1) + bytes(64 << 20)),
            # 65536^4 elements: the element count wraps to 0 in 64 bits, so a 20-byte file "fits"
            "count-wraps.idx": bytes([0, 0, 8, 4]) + struct.pack(">IIII", 65536, 65536, 65536, 65536),
            # found by fuzz_idx: one size 0, the others' product past int64 (LibTorch's stride overflow)
            "zero-size-huge-others.idx": bytes([0, 0, 8, 4]) + struct.pack(">IIII", 0, 0x01010000, 0xFE000000, 0x10000),
            "five-dims.idx": bytes([0, 0, 8, 5]) + struct.pack(">IIIII", 1, 1, 1, 1, 1) + b"\x00",
        },
    }


def write_tree(root, tree):
    for target, files in tree.items():
        folder = os.path.join(root, target)
        os.makedirs(folder, exist_ok=True)
        for name, data in files.items():
            tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, os.path.join(folder, name))
        print(f"{folder}: {len(files)} files")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the seed corpus here (one folder per target)")
    ap.add_argument("--regressions", help="write the regression inputs here (one folder per target)")
    args = ap.parse_args()
    if not args.out and not args.regressions:
        ap.error("give --out and/or --regressions")
    if args.out:
        write_tree(args.out, corpus(torch.Generator().manual_seed(0)))
    if args.regressions:
        write_tree(args.regressions, regressions(torch.Generator().manual_seed(0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
