#!/usr/bin/env python3
"""Per-image time of every CAM method: attnkit next to pytorch-grad-cam, same model, image and threads.

For each method (pytorch-grad-cam's names: gradcam, hirescam, gradcam++, xgradcam, layercam, eigencam,
eigengradcam, scorecam, ablationcam) on a torchvision ResNet (default resnet50, 224x224, 1000 classes,
the last stage), one run:

  attnkit           `attnkit visualize IMAGE... --method M --threads T --no-grid --no-overlay`: the
                    program's own per-image time (the "; X ms" of each image line: forward, backward or
                    masked forwards, and the maps), median over --repeats images after one warm-up image
  pytorch-grad-cam  `cam(input_tensor=x, targets=[ClassifierOutputTarget(top-1)])` with
                    torch.set_num_threads(T), time.perf_counter around the call, median over --repeats
                    calls after one warm-up call (its maps are resized to the input and scaled, as the
                    library always does; its Score-CAM / Ablation-CAM batch is --cam-batch, as attnkit's)

Both run the same weights: the torchvision model built after torch.manual_seed(0), saved as a state
dict and converted with `attnkit import --strict` (which fails unless every tensor matches). The image
is a random 224x224 picture written once; attnkit preprocesses it (ImageNet resize and crop) and
pytorch-grad-cam gets a random input of the same shape (the time of these methods does not depend
on the pixel values). Prints a Markdown table (ms per image and attnkit's time over
pytorch-grad-cam's); --json FILE writes the numbers.

  ~/.cache/attnkit/venv/bin/python scripts/bench_cam.py                                  # the comparison
  ~/.cache/attnkit/venv/bin/python scripts/bench_cam.py --model resnet18 --methods gradcam eigencam \\
      --repeats 1                                                                         # a quick check

Do not run it on a busy machine: both sides are timed one after the other, and load drifts hit them
unevenly. Exit status: 0, 1 when a run fails, 2 on bad arguments or a missing attnkit binary.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METHODS = {
    "gradcam": "GradCAM", "hirescam": "HiResCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
    "layercam": "LayerCAM", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
}


def fail(message, status=1):
    print(f"bench_cam: {message}", file=sys.stderr)
    sys.exit(status)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attnkit", default=str(REPO / "build" / "bin" / "attnkit"), help="the attnkit program")
    p.add_argument("--model", default="resnet50", choices=["resnet18", "resnet34", "resnet50", "resnet101"],
                   help="torchvision ResNet (random weights, seed 0)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), help="methods to time")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of both sides")
    p.add_argument("--repeats", type=int, default=3, help="timed images (attnkit) and calls (pytorch-grad-cam)")
    p.add_argument("--cam-batch", type=int, default=32, help="Score-CAM / Ablation-CAM forwards per pass, both sides")
    p.add_argument("--work", default=None, help="folder for the weights, image and outputs (default: a temporary one)")
    p.add_argument("--json", default=None, help="write the numbers here")
    args = p.parse_args()
    if args.threads < 1 or args.repeats < 1 or args.cam_batch < 1:
        fail("--threads, --repeats and --cam-batch must be at least 1", 2)
    if not os.access(args.attnkit, os.X_OK):
        fail(f"attnkit program not found or not executable: {args.attnkit} (build it, or pass --attnkit PATH)", 2)
    return args


def make_model(name):
    import torch
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def prepare(args, work, model):
    """The attnkit checkpoint of `model` and --repeats + 1 copies of one random image (distinct names:
    visualize refuses two inputs with the same output names)."""
    import numpy as np
    import torch
    from PIL import Image

    state = work / f"{args.model}.pt"
    torch.save(model.state_dict(), state)
    weights = work / f"{args.model}.attnkit"
    run = subprocess.run([args.attnkit, "import", str(state), "--arch", args.model, "--strict", "--out", str(weights),
                          "--overwrite"], capture_output=True, text=True)
    if run.returncode != 0:
        fail(f"attnkit import failed: {run.stderr.strip() or run.stdout.strip()}")
    pixels = np.random.RandomState(0).randint(0, 256, (224, 224, 3), dtype=np.uint8)
    images = []
    for i in range(args.repeats + 1):
        path = work / f"image{i}.png"
        Image.fromarray(pixels).save(path)
        images.append(str(path))
    return weights, images


def time_attnkit(args, work, weights, images, method):
    out = work / f"out-{method.replace('+', 'p')}"
    command = [args.attnkit, "visualize", *images, "--weights", str(weights), "--method", method, "--layer", "layer4",
               "--threads", str(args.threads), "--cam-batch", str(args.cam_batch), "--no-grid", "--no-overlay",
               "--device", "cpu", "--out", str(out), "--overwrite"]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        fail(f"attnkit visualize --method {method} failed: {run.stderr.strip()}")
    ms = [float(m) for m in re.findall(r"; ([0-9.]+) ms\n", run.stdout)]
    if len(ms) != len(images):
        fail(f"attnkit visualize --method {method}: expected {len(images)} timings, got {run.stdout!r}")
    return ms[1:]  # the first image warms up


def time_gradcam(args, model, method):
    import torch
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = [ClassifierOutputTarget(int(model(x).argmax()))]
    kwargs = {"batch_size": args.cam_batch} if method == "ablationcam" else {}
    cam = getattr(pytorch_grad_cam, METHODS[method])(model=model, target_layers=[model.layer4[-1]], **kwargs)
    if method == "scorecam":
        cam.batch_size = args.cam_batch
    times = []
    for i in range(args.repeats + 1):
        start = time.perf_counter()
        cam(input_tensor=x, targets=target)
        if i > 0:
            times.append(1000 * (time.perf_counter() - start))
    return times


def main():
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    model = make_model(args.model)
    with tempfile.TemporaryDirectory(prefix="bench_cam_") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        weights, images = prepare(args, work, model)
        rows = []
        for method in args.methods:
            ours = time_attnkit(args, work, weights, images, method)
            theirs = time_gradcam(args, model, method)
            rows.append({"method": method, "attnkit_ms": statistics.median(ours), "gradcam_ms": statistics.median(theirs),
                         "attnkit_runs": ours, "gradcam_runs": theirs})
            print(f"{method}: attnkit {rows[-1]['attnkit_ms']:.1f} ms, pytorch-grad-cam {rows[-1]['gradcam_ms']:.1f} ms",
                  file=sys.stderr, flush=True)
    print(f"\n{args.model}, 224x224, last stage, {args.threads} threads, median of {args.repeats} (ms per image)\n")
    print("| method | attnkit | pytorch-grad-cam | attnkit / grad-cam |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['attnkit_ms']:.1f} | {r['gradcam_ms']:.1f} | {r['attnkit_ms'] / r['gradcam_ms']:.2f} |")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"model": args.model, "threads": args.threads, "repeats": args.repeats, "rows": rows}, f, indent=2)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
