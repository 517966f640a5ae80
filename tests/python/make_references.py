#!/usr/bin/env python3
"""Writes the numerical references the C++ tests compare against.

Each reference is one file `<name>.pt`, written with torch.save of a flat dict of tensors (inputs,
the reference module's state dict, outputs, gradients). References come from torch, torchvision and
timm, never from attnkit. Generators live in refs_*.py next to this file and register themselves
with @reflib.reference; all run by default, `--only NAME...` runs some.
"""
import argparse
import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import reflib  # noqa: E402


@reflib.reference
def smoke(out):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, generator=g, dtype=torch.float64)
    reflib.save(out, "smoke", {"x": x, "y": torch.tanh(x)})


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="folder for the .pt files")
    ap.add_argument("--only", nargs="*", help="generator names to run (default: all)")
    args = ap.parse_args()
    for f in sorted(os.listdir(HERE)):
        if f.startswith("refs_") and f.endswith(".py"):
            importlib.import_module(f[:-3])
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    names = args.only or sorted(reflib.GENERATORS)
    for name in names:
        reflib.GENERATORS[name](args.out)
    print(f"wrote {len(names)} references to {args.out}")


if __name__ == "__main__":
    main()
