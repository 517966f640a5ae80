#!/usr/bin/env python3
"""Runs `attnkit classify` and checks what it prints (tests/cli_classify.cmake).

  samples  the bundled samples (file names hold the true class) with the bundled model, JSON lines
  csv      the same as CSV, plus a missing file: header, five ranked rows per image, one error row
  parity   an image classified by a torchvision model imported with `attnkit import`, against the
           probabilities torchvision computes (refs_classify.py)
  temperature  the samples with a checkpoint given a temperature T by `attnkit calibrate --temperature`
           against the same checkpoint without one: softmax(z / T) = p^(1/T) renormalised, same top-1
"""
import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys


def run(cmd, expect_rc):
    r = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(r.stderr)
    if r.returncode != expect_rc:
        sys.exit(f"FAIL: {' '.join(cmd)} exited with {r.returncode}, expected {expect_rc}\n{r.stdout}")
    return r.stdout


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def true_class(path):
    """'0019-t-shirt.png' -> 't-shirt'."""
    return os.path.splitext(os.path.basename(path))[0].split("-", 1)[1]


def check_top(top, k):
    probs = [t["prob"] for t in top]
    assert len(top) == k, f"{len(top)} classes, expected {k}"
    assert all(0.0 <= p <= 1.0 for p in probs), probs
    assert all(a >= b for a, b in zip(probs, probs[1:])), f"not sorted: {probs}"
    assert sum(probs) <= 1.0 + 1e-6, f"probabilities sum to {sum(probs)}"
    assert len({t["index"] for t in top}) == k, "repeated class"


def samples(args):
    out = run([args.attnkit, "classify", args.samples, "--format", "json", "--threads", "2"], 0)
    rows = [json.loads(line) for line in out.splitlines()]
    names = sorted(f for f in os.listdir(args.samples) if f.endswith(".png"))
    assert [os.path.basename(r["path"]) for r in rows] == names, f"paths {[r['path'] for r in rows]}"
    correct = 0
    for r in rows:
        check_top(r["top"], 5)
        best = r["top"][0]
        ok = slug(best["label"]) == true_class(r["path"]) or slug(best["label"]).startswith(true_class(r["path"]) + "-")
        correct += ok
        print(f"{r['path']}: {best['label']} {best['prob']:.4f} (runner-up {r['top'][1]['prob']:.4f}){'' if ok else '  WRONG'}")
    print(f"top-1 correct: {correct}/{len(rows)}")
    assert correct >= args.min_correct, f"only {correct} of {len(rows)} right, expected at least {args.min_correct}"


def csv_check(args):
    missing = os.path.join(args.samples, "missing.png")
    out = run([args.attnkit, "classify", args.samples, missing, "--format", "csv", "--top-k", "3"], 1)
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["path", "rank", "label", "index", "prob", "error"], rows[0]
    images = sorted(f for f in os.listdir(args.samples) if f.endswith(".png"))
    body = rows[1:]
    assert len(body) == 3 * len(images) + 1, f"{len(body)} rows"
    for i, name in enumerate(images):
        group = body[3 * i:3 * i + 3]
        assert all(os.path.basename(r[0]) == name for r in group), group
        assert [r[1] for r in group] == ["1", "2", "3"], group
        assert all(r[5] == "" and 0 <= int(r[3]) < 10 for r in group), group
        probs = [float(r[4]) for r in group]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5, probs
    err = body[-1]
    assert err[0] == missing and err[1:5] == ["", "", "", ""] and "no such file" in err[5], err
    print(f"csv: {len(images)} images x 3 rows + 1 error row")


def parity(args):
    import torch

    ref = torch.load(args.ref)
    out = run([args.attnkit, "classify", args.image, "--weights", args.weights, "--format", "json"], 0)
    (row,) = [json.loads(line) for line in out.splitlines()]
    check_top(row["top"], 5)
    got_index = [t["index"] for t in row["top"]]
    got_prob = torch.tensor([t["prob"] for t in row["top"]], dtype=torch.float64)
    want_index, want_prob = ref["top_index"].tolist(), ref["top_prob"]
    print(f"attnkit:     {got_index} {got_prob.tolist()}")
    print(f"torchvision: {want_index} {want_prob.tolist()}")
    assert got_index == want_index, "different top-5 classes"
    err = (got_prob - want_prob).abs().max().item()
    print(f"max |difference| {err:.3g}")
    assert err <= 1e-4, f"probabilities differ by {err}"
    assert [t["label"] for t in row["top"]] == [f"class {i}" for i in want_index], row["top"]


def temperature(args):
    t = args.temperature
    plain_weights, scaled_weights = "t-1.attnkit", f"t-{t:g}.attnkit"  # in the working folder
    run([args.attnkit, "calibrate", "--weights", args.weights, "--temperature", "1", "--out", plain_weights, "--overwrite"], 0)
    run([args.attnkit, "calibrate", "--weights", args.weights, "--temperature", f"{t:g}", "--out", scaled_weights, "--overwrite"], 0)

    def probabilities(weights):
        out = run([args.attnkit, "classify", args.samples, "--weights", weights, "--format", "json", "--top-k", "10",
                   "--precision", "float32"], 0)
        return {r["path"]: {c["index"]: c["prob"] for c in r["top"]} for r in map(json.loads, out.splitlines())}

    plain, scaled = probabilities(plain_weights), probabilities(scaled_weights)
    assert plain.keys() == scaled.keys() and plain, "different images"
    worst = 0.0
    for path, p in plain.items():
        powered = {k: v ** (1 / t) for k, v in p.items()}
        total = sum(powered.values())
        worst = max(worst, max(abs(v / total - scaled[path][k]) for k, v in powered.items()))
        assert max(p, key=p.get) == max(scaled[path], key=scaled[path].get), f"{path}: the top-1 changed"
        print(f"{path}: top-1 {max(p.values()):.4f} at T = 1, {max(scaled[path].values()):.4f} at T = {t:g}")
    print(f"{len(plain)} images, max |difference| from p^(1/T) {worst:.3g}")
    assert worst <= 1e-5, f"probabilities differ by {worst}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["samples", "csv", "parity", "temperature"])
    ap.add_argument("--attnkit", required=True, help="the attnkit program")
    ap.add_argument("--samples", help="folder of the bundled samples")
    ap.add_argument("--min-correct", type=int, default=10)
    ap.add_argument("--weights", help="parity: the imported checkpoint; temperature: the checkpoint to copy")
    ap.add_argument("--temperature", type=float, default=2.0, help="temperature: the T to store")
    ap.add_argument("--image", help="parity: the image")
    ap.add_argument("--ref", help="parity: the reference .pt of refs_classify.py")
    args = ap.parse_args()
    {"samples": samples, "csv": csv_check, "parity": parity, "temperature": temperature}[args.mode](args)
    print("ok")


if __name__ == "__main__":
    main()
