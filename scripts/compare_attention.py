#!/usr/bin/env python3
"""Does attention pay? Trains plain / SE / ECA / CBAM ResNet-20s on one recipe with several seeds and
prints test accuracy (mean ± standard deviation), parameters, multiply-adds and images/s in training
and inference, as the table in weights/README.md.

Two phases, so that the long one may share the machine and the timed one need not:
  train   every (model, seed) run with `attnkit train`, then `attnkit eval --json` of its best epoch
          on the test set. Resumable: a finished run is kept, an interrupted one continues (--resume).
  speed   on an idle machine: training images/s (one epoch of --speed-images images, the first epoch's
          rate) and inference images/s (`attnkit eval` of the 10,000 test images), per model: the
          median of --repeats rounds over all models.
  table   the Markdown table from what the two phases saved.

Training runs go to --out (runs/compare-attention, not in the repository); each finished run's result
(test accuracy, size, time) and the speeds go to --results (weights/compare-attention, in the
repository: the data behind weights/README.md's table, and what lets a later session skip finished runs).

  python scripts/compare_attention.py train --attnkit build/bin/attnkit
  python scripts/compare_attention.py speed --attnkit build/bin/attnkit
  python scripts/compare_attention.py table
"""
import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

MODELS = ["resnet20", "resnet20-se", "resnet20-eca", "resnet20-cbam"]


def recipe(a, epochs=None):
    return ["--width", str(a.width), "--epochs", str(epochs or a.epochs), "--batch-size", "128", "--lr", "0.1",
            "--warmup-epochs", "0.5", "--label-smoothing", "0.1", "--erasing", "0.5", "--threads", str(a.threads),
            "--device", "cpu", "--weights-dtype", "float16"]


def run(cmd, **kw):
    print("+ " + " ".join(map(str, cmd)), flush=True)
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(map(str, cmd))}\n{p.stdout}\n{p.stderr}")
    return p


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    return "unknown CPU"


def train_phase(a):
    out, results = Path(a.out), Path(a.results)
    for model in a.models:
        for seed in a.seeds:
            run_dir = out / f"{model}-s{seed}"
            result = results / f"{model}-s{seed}.json"
            if result.exists():
                continue
            finished = (run_dir / "metrics.jsonl").exists() and len(
                (run_dir / "metrics.jsonl").read_text().strip().splitlines()) >= a.epochs
            if not finished:
                resume = ["--resume"] if (run_dir / "train_state.pt").exists() else []
                run([a.attnkit, "train", "--model", model, *recipe(a), "--seed", str(seed), "--out", run_dir, "--quiet",
                     *resume])
            ev = run([a.attnkit, "eval", "--weights", run_dir / "best.pt", "--json", "--threads", str(a.threads)])
            j = json.loads(ev.stdout)
            metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
            best = max(metrics, key=lambda m: m["val_acc"])
            result.write_text(json.dumps({
                "model": model, "seed": seed, "test_accuracy": j["accuracy"], "val_accuracy": best["val_acc"],
                "best_epoch": best["epoch"], "parameters": j["parameters"],
                "multiply_adds_per_image": j["multiply_adds_per_image"],
                "train_seconds": sum(m["seconds"] for m in metrics)}, indent=1))
            print(f"{model} seed {seed}: test {100 * j['accuracy']:.2f}%", flush=True)


def speed_phase(a):
    """Median of --repeats measurements per model, the models interleaved round by round so that a
    slow spell of a shared machine does not fall on one model."""
    out, results = Path(a.out), Path(a.results)
    speeds = {"cpu": cpu_name(), "threads": a.threads, "repeats": a.repeats, "models": {}}
    runs = {model: {"train": [], "inference": []} for model in a.models}
    for _ in range(a.repeats):
        for model in a.models:
            tmp = out / f"speed-{model}"
            subprocess.run(["rm", "-rf", str(tmp)])
            run([a.attnkit, "train", "--model", model, *recipe(a, epochs=1), "--max-images", str(a.speed_images),
                 "--val-size", "0", "--out", tmp, "--quiet"])
            runs[model]["train"].append(json.loads((tmp / "metrics.jsonl").read_text().splitlines()[0])["images_per_s"])
            ev = run([a.attnkit, "eval", "--weights", tmp / "last.pt", "--threads", str(a.threads)])
            m = re.search(r"eval: (\d+) images in ([0-9.]+) s \((\d+) images/s", ev.stderr + ev.stdout)
            if not m:
                sys.exit(f"no images/s in eval's output:\n{ev.stderr}")
            runs[model]["inference"].append(float(m.group(3)))
    for model, r in runs.items():
        speeds["models"][model] = {"train_images_per_s": statistics.median(r["train"]),
                                   "inference_images_per_s": statistics.median(r["inference"]),
                                   "train_runs": r["train"], "inference_runs": r["inference"]}
        print(f"{model}: train {r['train']} images/s, inference {r['inference']} images/s", flush=True)
    (results / "speed.json").write_text(json.dumps(speeds, indent=1))


def mean_std(xs):
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")
    return m, s


def table_phase(a):
    out = Path(a.results)
    speed = json.loads((out / "speed.json").read_text()) if (out / "speed.json").exists() else {"models": {}}
    rows = []
    base = None
    print("| model | test accuracy (mean ± std) | seeds | per seed | parameters | multiply-adds / image "
          "| training images/s | inference images/s |")
    print("|---|---|---|---|---|---|---|---|")
    for model in a.models:
        # resnet20-s0.json, not resnet20-se-s0.json
        results = [json.loads(p.read_text()) for p in sorted(out.glob(f"{model}-s*.json"))
                   if re.fullmatch(re.escape(model) + r"-s\d+\.json", p.name)]
        if not results:
            continue
        accs = [100 * r["test_accuracy"] for r in results]
        m, s = mean_std(accs)
        if base is None:
            base = (m, s, len(accs))
        sp = speed["models"].get(model, {})
        fmt = lambda k: f"{sp[k]:,.0f}" if k in sp else "—"
        spread = f"{m:.2f} ± {s:.2f}%" if len(accs) > 1 else f"{m:.2f}%"
        print(f"| {model} | {spread} | {len(accs)} | {', '.join(f'{x:.2f}' for x in accs)} "
              f"| {results[0]['parameters']:,} | {results[0]['multiply_adds_per_image'] / 1e6:.1f} M "
              f"| {fmt('train_images_per_s')} | {fmt('inference_images_per_s')} |")
        rows.append((model, m, s, len(accs)))
    if base and len(rows) > 1:
        print()
        for model, m, s, n in rows[1:]:
            if n < 2 or base[2] < 2:
                print(f"{model} - {rows[0][0]}: {m - base[0]:+.2f} points (seed noise unknown: fewer than 2 seeds)")
                continue
            # Welch's t statistic of the difference to the plain network: |t| > ~2.8 (3 + 3 seeds, 95%)
            # says the difference exceeds what the seeds alone give.
            se = math.sqrt(s ** 2 / n + base[1] ** 2 / base[2])
            t = (m - base[0]) / se if se > 0 else float("inf")
            print(f"{model} - {rows[0][0]}: {m - base[0]:+.2f} points, Welch t = {t:+.2f}")
    if speed.get("cpu"):
        print(f"\nspeed: {speed['cpu']}, {speed['threads']} threads")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["train", "speed", "table"])
    ap.add_argument("--attnkit", default="build/bin/attnkit")
    ap.add_argument("--models", type=lambda s: s.split(","), default=MODELS)
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width", type=float, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed-images", type=int, default=6144)
    ap.add_argument("--repeats", type=int, default=3, help="speed: measurements per model (the median is kept)")
    ap.add_argument("--out", default="runs/compare-attention")
    ap.add_argument("--results", default="weights/compare-attention")
    a = ap.parse_args()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    Path(a.results).mkdir(parents=True, exist_ok=True)
    {"train": train_phase, "speed": speed_phase, "table": table_phase}[a.phase](a)


if __name__ == "__main__":
    main()
