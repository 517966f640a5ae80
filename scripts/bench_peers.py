#!/usr/bin/env python3
"""attnkit beside the CPU inference runtimes people would otherwise use: one network, one CPU, one run.

For each model (ResNet-18/50, with or without CBAM in every block) and batch size, at 224x224 with
1000 classes, this times a forward pass (inference, no autograd) in

  attnkit inference   `attnkit bench`'s "inference" row (the inference path; "inference-none"
                      for the models without attention)
  attnkit eager       `attnkit bench`'s "fused" row (eval-mode modules; "none" without attention)
  PyTorch eager       model.eval() under torch.inference_mode(); bf16 through
                      torch.autocast("cpu", dtype=torch.bfloat16)
  ONNX Runtime        the exported ONNX graph, CPUExecutionProvider, intra-op threads = --threads,
                      inter-op 1, all graph optimisations, sequential execution
  OpenVINO            the same ONNX graph reshaped to the batch, CPU plugin, INFERENCE_NUM_THREADS
                      = --threads, PERFORMANCE_HINT LATENCY, INFERENCE_PRECISION_HINT f32 or bf16

all on the same number of threads, and prints the medians side by side (Markdown), with attnkit
inference's median over OpenVINO's.

  ~/.cache/attnkit/venv/bin/python scripts/bench_peers.py                      # all four models, batch 1 and 8
  ~/.cache/attnkit/venv/bin/python scripts/bench_peers.py --models resnet18 --batch 1 \\
      --iters 3 --warmup 1 --json /tmp/peers.json                              # a quick look

The packages come from scripts/setup.sh (onnxruntime, openvino, onnx, onnxscript in its venv).

The networks. "resnet18"/"resnet50" are torchvision's (v1.5: stride in the 3x3 conv), the same as
attnkit's. "resnet18-cbam"/"resnet50-cbam" are timm's ResNet with timm's CbamModule in every block
(after the last BatchNorm, before the residual add), built with mlp_bias=True because attnkit's CBAM
follows the official code there (timm's default has no MLP biases); reduction 16 and the 7x7 spatial
conv + BatchNorm over the two channel pools are the same in both. That the architectures match is
checked on every run, not assumed: the PyTorch model's state dict goes through
`attnkit import --strict`, which succeeds only when every tensor name and shape matches attnkit's
model one to one (so the parameter counts are equal too); the result is printed beside the
parameter count. (The two differ in the order of the spatial gate's pooled channels, [mean, max] in
timm and [max, mean] in attnkit; that changes neither the work nor the parameter count.)

"Same weights". The PyTorch, ONNX Runtime and OpenVINO peers run one set of weights: the PyTorch
model built after torch.manual_seed(0) (the libraries' default random initialisation; timm's
zero_init_last is turned off so that no branch is all zeros), exported to ONNX once and cached under
--cache (named by a hash of the weights, so a changed model is exported again). Their fp32 logits on
one random input are compared, and the largest difference is printed (a warning above 1e-3 of the
largest logit). attnkit times its own randomly initialised copy of the same architecture inside its
own `bench`: the time of a dense forward pass does not depend on the weight values.

Timing. The Python peers are timed one after another, each as it would run deployed (--interleave
times them in rounds instead, every runtime once per round, so that load drifts hit them alike; but
ONNX Runtime's worker threads keep spinning after each run and slow whatever runs next): one untimed run for the
output check, --warmup untimed runs, then --iters timed runs each, with time.perf_counter; median and
min in ms. Without --iters each gets about a second's worth (5 to 200 runs), as attnkit bench does.
attnkit is timed by `attnkit bench --op resnetNN --attention cbam --pass forward --json` (its own
interleaved rounds, same --threads, --iters and --warmup), once per depth, batch and dtype; the
no-attention rows of that run serve the plain models.

bf16. --precision auto times bf16 only where the CPU has native bf16 (avx512_bf16 or amx_tile).
Asked for anyway on another CPU, PyTorch and attnkit run it in software; OpenVINO's CPU plugin falls
back to f32, which is detected (capability and the compiled model's precision) and shown as n/a;
ONNX Runtime's CPU provider has no bf16 convolutions, so it is n/a in bf16 everywhere.

--json FILE writes every number (and each runtime's raw attnkit rows) as one JSON object, atomically.
Exit status: 0, 1 on a failure while measuring, 2 on bad arguments or a missing attnkit binary or
Python package.
"""
import argparse
import contextlib
import functools
import gc
import hashlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = ("resnet50-cbam", "resnet50", "resnet18-cbam", "resnet18")
PRECISIONS = ("fp32", "bf16")
RUNTIMES = ("attnkit inference", "attnkit eager", "PyTorch eager", "ONNX Runtime", "OpenVINO")
PY_RUNTIMES = RUNTIMES[2:]
ATTNKIT_DTYPE = {"fp32": "float32", "bf16": "bfloat16"}
# attnkit bench's impl rows: (with attention, without attention) for each of our two attnkit rows.
ATTNKIT_IMPLS = {"attnkit inference": ("inference", "inference-none"), "attnkit eager": ("fused", "none")}
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_tile")
IMAGE = 224
CLASSES = 1000
AGREE_REL = 1e-3
ATTNKIT_TIMEOUT_S = 3600


def log(msg):
    print(f"[bench_peers] {msg}", file=sys.stderr, flush=True)


def fail(msg, code=2):
    print(f"bench_peers: {msg}", file=sys.stderr)
    sys.exit(code)


# ---- arguments --------------------------------------------------------------------------------------

def csv_of(kind, valid=None):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {kind} list")
        if valid is not None:
            bad = [t for t in items if t not in valid]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {kind} {', '.join(bad)}; valid: {', '.join(valid)}")
        return list(dict.fromkeys(items))
    return parse


def positive_ints(text):
    try:
        values = [int(t) for t in csv_of("batch")(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes must be integers, got {text!r}")
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("batch sizes must be at least 1")
    return values


def int_at_least(low):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
        if v < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}")
        return v
    return parse


def precisions_arg(text):
    if text.strip() == "auto":
        return "auto"
    chosen = csv_of("precision", PRECISIONS + ("auto",))(text)
    if "auto" in chosen:
        raise argparse.ArgumentTypeError("auto stands alone")
    return [q for q in PRECISIONS if q in chosen]  # fp32 first, whatever order was typed


def parse_args(argv):
    p = argparse.ArgumentParser(description="attnkit vs PyTorch eager, ONNX Runtime and OpenVINO on one CPU: "
                                            "forward-pass medians of the same ResNets, side by side.")
    p.add_argument("--attnkit", default=str(REPO / "build" / "bin" / "attnkit"),
                   help="the attnkit program (default: build/bin/attnkit of this checkout)")
    p.add_argument("--models", type=csv_of("model", MODELS), default=list(MODELS),
                   help=f"comma-separated, of {', '.join(MODELS)} (default: all)")
    p.add_argument("--batch", type=positive_ints, default=[1, 8], help="comma-separated batch sizes (default: 1,8)")
    p.add_argument("--threads", type=int_at_least(1), default=len(os.sched_getaffinity(0)),
                   help="CPU threads of every runtime (default: the CPUs this process may use)")
    p.add_argument("--precision", type=precisions_arg, default="auto",
                   help="fp32, bf16, fp32,bf16 or auto: fp32, plus bf16 where the CPU has avx512_bf16 or amx_tile "
                        "(default: auto)")
    p.add_argument("--iters", type=int_at_least(1), default=None,
                   help="timed runs per runtime and case (default: about one second's worth, 5 to 200)")
    p.add_argument("--warmup", type=int_at_least(0), default=3, help="untimed runs before timing (default: 3)")
    p.add_argument("--interleave", action="store_true",
                   help="time the Python peers in interleaved rounds instead of one after another (ONNX Runtime's "
                        "spinning worker threads then steal time from the runtime after it)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "attnkit" / "bench_peers"),
                   help="where the exported ONNX files are kept (default: ~/.cache/attnkit/bench_peers)")
    p.add_argument("--json", metavar="FILE", help="also write all results to FILE (JSON, written atomically)")
    return p.parse_args(argv)


# ---- the machine ------------------------------------------------------------------------------------

def cpu_info():
    name, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name == "unknown":
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": name, "cpus": os.cpu_count(), **{flag: flag in flags for flag in CPU_FLAGS}}


def native_bf16(cpu):
    return cpu["avx512_bf16"] or cpu["amx_tile"]


def attnkit_version(binary):
    try:
        p = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        fail(f"cannot run the attnkit program {binary}: {e.strerror}")
    except subprocess.TimeoutExpired:
        fail(f"{binary} --version did not answer within 60 s")
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        fail(f"{binary} --version failed: {last}")
    first = (p.stdout.strip().splitlines() or ["unknown"])[0]
    return first.removeprefix("attnkit ").strip()


# ---- timing -----------------------------------------------------------------------------------------

def auto_iters(seconds_per_run):
    return max(5, min(200, round(1.0 / max(seconds_per_run, 1e-6))))


def time_runners(runners, iters, warmup, sequential):
    """runners: name -> zero-argument callable. Returns (name -> list of seconds, iters, first outputs)."""
    # The output check (and one-time set-up costs). Copied: OpenVINO returns a view of its output buffer.
    first = {}
    for name, fn in runners.items():
        y = fn()
        first[name] = y.copy() if hasattr(y, "copy") else y
    last = {}
    for _ in range(warmup):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            last[name] = time.perf_counter() - t0
    if iters is None:
        if not last:  # no warm-up: time one more run to size the measurement
            for name, fn in runners.items():
                t0 = time.perf_counter()
                fn()
                last[name] = time.perf_counter() - t0
        iters = auto_iters(max(last.values()))
    times = {name: [] for name in runners}
    gc.collect()
    gc.disable()
    try:
        if sequential:
            for name, fn in runners.items():
                for _ in range(iters):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        else:
            for _ in range(iters):
                for name, fn in runners.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return times, iters, first


def summary(seconds, iters, warmup):
    ms = [s * 1e3 for s in seconds]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "iters": iters, "warmup": warmup}


# ---- the PyTorch models, their architecture check and their ONNX export --------------------------

def build_model(name):
    import timm
    import torch
    import torchvision
    depth, _, attention = name.partition("-")
    torch.manual_seed(0)
    if attention:
        from timm.layers.cbam import CbamModule
        # attnkit's CBAM has the official code's MLP biases; timm's default has none.
        cbam = functools.partial(CbamModule, mlp_bias=True)
        model = timm.create_model(depth, pretrained=False, num_classes=CLASSES, zero_init_last=False,
                                  block_args=dict(attn_layer=cbam))
    else:
        model = getattr(torchvision.models, depth)(weights=None, num_classes=CLASSES)
    return model.eval()


def weights_fingerprint(model):
    h = hashlib.sha256()
    for key, t in model.state_dict().items():
        h.update(key.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def check_architecture(binary, name, model, cache):
    """Runs `attnkit import --strict` on the model's state dict: ok only if every name and shape matches."""
    import torch
    depth, _, attention = name.partition("-")
    with tempfile.TemporaryDirectory(dir=cache, prefix=".archcheck-") as d:
        sd = os.path.join(d, "state_dict.pt")
        torch.save(model.state_dict(), sd)
        cmd = [binary, "import", sd, "--arch", depth, "--strict", "--out", os.path.join(d, "model.attnkit")]
        if attention:
            cmd += ["--attention", attention]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            return {"ok": False, "detail": f"attnkit import did not run: {e}"}
    text = (p.stderr + p.stdout).strip()
    m = re.search(r"(\d+) tensors loaded; (\d+) missing; (\d+) unexpected", text)
    ok = p.returncode == 0 and m is not None and m.group(2) == "0" and m.group(3) == "0"
    detail = m.group(0) if m else (text.splitlines() or [f"exit status {p.returncode}"])[-1]
    return {"ok": ok, "detail": f"attnkit import --strict: {detail}"}


def export_onnx(model, name, fingerprint, cache):
    """The model as ONNX with a dynamic batch, exported once and cached. Returns (path, notes)."""
    import torch
    path = Path(cache) / f"{name}-{fingerprint}-torch{torch.__version__.split('+')[0]}.onnx"
    if path.exists():
        return path, ["cached"]
    log(f"{name}: exporting to ONNX ({path})")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    chatter = io.StringIO()
    x = torch.randn(2, 3, IMAGE, IMAGE)  # batch 2: a batch of 1 would be specialised away
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(chatter), \
                contextlib.redirect_stderr(chatter):
            warnings.simplefilter("always")
            torch.onnx.export(model, (x,), str(tmp), dynamo=True, external_data=False, verbose=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
        os.replace(tmp, path)
    except Exception as e:
        tail = " | ".join(chatter.getvalue().strip().splitlines()[-3:])
        raise RuntimeError(f"ONNX export of {name} failed: {type(e).__name__}: {e}" + (f" ({tail})" if tail else ""))
    finally:
        tmp.unlink(missing_ok=True)
    notes = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:160]}" for w in caught})
    return path, notes


def onnx_opset(path):
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)


# ---- the runtimes -----------------------------------------------------------------------------------

def eager_runner(model, x, bf16):
    import torch

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(x)
    return run


def ort_session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_runner(session, x_np):
    feed = {session.get_inputs()[0].name: x_np}
    return lambda: session.run(None, feed)[0]


def openvino_compile(core, path, batch, threads, precision):
    """(compiled model, None) or (None, why OpenVINO cannot run `precision` here)."""
    if precision == "bf16":
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in caps:
            return None, f"OpenVINO's CPU plugin has no BF16 on this CPU (capabilities: {', '.join(caps)})"
    model = core.read_model(str(path))
    model.reshape([batch, 3, IMAGE, IMAGE])
    config = {"INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    compiled = core.compile_model(model, "CPU", config)
    actual = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    want = "bf16" if precision == "bf16" else "f32"
    if want not in actual.lower().replace("float32", "f32").replace("bfloat16", "bf16"):
        return None, f"OpenVINO compiled the {want} request as {actual} (it falls back on this CPU)"
    return compiled, None


def openvino_runner(compiled, x_np):
    request = compiled.create_infer_request()

    def run():
        request.infer({0: x_np}, share_inputs=True)
        return request.get_output_tensor(0).data
    return run


def as_numpy(y):
    import numpy as np
    import torch
    if isinstance(y, torch.Tensor):
        return y.detach().float().numpy()
    return np.asarray(y, dtype=np.float32)


def agreement(reference, other):
    import numpy as np
    ref, out = as_numpy(reference), as_numpy(other)
    diff = float(np.max(np.abs(ref - out)))
    scale = float(np.max(np.abs(ref)))
    return {"max_abs_diff": diff, "rel_diff": diff / scale if scale > 0 else diff, "max_abs_logit": scale}


# ---- attnkit ----------------------------------------------------------------------------------------

def run_attnkit(binary, depth, batch, precision, args):
    cmd = [binary, "bench", "--op", depth, "--attention", "cbam", "--pass", "forward", "--batch", str(batch),
           "--threads", str(args.threads), "--dtype", ATTNKIT_DTYPE[precision], "--device", "cpu", "--json",
           "--warmup", str(args.warmup)]
    if args.iters is not None:
        cmd += ["--iters", str(args.iters)]
    log(f"attnkit: {' '.join(cmd[1:])}")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=ATTNKIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {}, f"attnkit bench ran past {ATTNKIT_TIMEOUT_S} s"
    except OSError as e:
        return {}, f"attnkit bench did not start: {e.strerror}"
    rows = {}
    for line in p.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row.get("impl")] = row
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        return rows, f"attnkit bench failed: {last}"
    return rows, None


def attnkit_results(rows, error, model, impl_key):
    """Our attnkit row `impl_key` for `model`, from one attnkit bench run's rows."""
    attention = "-" in model
    impl = ATTNKIT_IMPLS[impl_key][0 if attention else 1]
    row = rows.get(impl)
    if row is None:
        if error:
            return {"na": error}
        have = ", ".join(sorted(k for k in rows if k != "copy")) or "none"
        return {"na": f"this attnkit's bench has no \"{impl}\" row (it prints: {have})"}
    return {"median_ms": row["median_ms"], "min_ms": row["min_ms"], "attnkit_impl": impl,
            "threads": row.get("threads"), "dtype": row.get("dtype")}


# ---- report -----------------------------------------------------------------------------------------

def fmt_ms(cell):
    if cell is None or "na" in cell:
        return "n/a"
    return f"{cell['median_ms']:.2f}"


def print_report(ctx, results, notes_na, out=sys.stdout):
    cpu = ctx["cpu"]
    flags = ", ".join(f"{f} {'yes' if cpu[f] else 'no'}" for f in CPU_FLAGS)
    print(f"CPU: {cpu['model']} ({flags}); {ctx['threads']} threads for every runtime", file=out)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in ctx["versions"].items()), file=out)
    iters = ctx["iters"] if ctx["iters"] is not None else "about 1 s of"
    print(f"timing: {ctx['warmup']} warm-up + {iters} timed runs per runtime and case; median ms of one forward "
          f"pass at {IMAGE}x{IMAGE} ({'sequential' if ctx['sequential'] else 'interleaved rounds'} for the Python "
          f"peers, attnkit bench's own rounds for attnkit)", file=out)

    print("\n| model | parameters | same architecture as attnkit's |\n|---|---:|---|", file=out)
    for m in ctx["models"]:
        info = ctx["model_info"][m]
        arch = info["arch_check"]
        print(f"| {m} | {info['parameters']:,} | {'yes' if arch['ok'] else '**NO**'}: {arch['detail']} |", file=out)

    if ctx["agreement"]:
        print("\nOutputs on one input, against PyTorch eager fp32 (max abs diff / relative to the largest logit):",
              file=out)
        print("\n| model | batch | runtime | precision | max abs diff | relative |\n|---|---:|---|---|---:|---:|",
              file=out)
        for a in ctx["agreement"]:
            flag = " **!**" if a["warn"] else ""
            print(f"| {a['model']} | {a['batch']} | {a['runtime']} | {a['precision']} | {a['max_abs_diff']:.3g} | "
                  f"{a['rel_diff']:.3g}{flag} |", file=out)

    cols = [(m, b) for m in ctx["models"] for b in ctx["batches"]]
    for precision in ctx["precisions"]:
        print(f"\n### {precision}: median ms (lower is better)\n", file=out)
        print("| runtime | " + " | ".join(f"{m} b={b}" for m, b in cols) + " |", file=out)
        print("|---|" + "---:|" * len(cols), file=out)
        for rt in RUNTIMES:
            cells = [fmt_ms(results.get((precision, rt, m, b))) for m, b in cols]
            print(f"| {rt} | " + " | ".join(cells) + " |", file=out)
        for rt in ("attnkit inference", "attnkit eager"):
            cells = []
            for m, b in cols:
                ak, ov = results.get((precision, rt, m, b)), results.get((precision, "OpenVINO", m, b))
                ok = ak and ov and "na" not in ak and "na" not in ov
                cells.append(f"{ak['median_ms'] / ov['median_ms']:.2f}" if ok else "n/a")
            print(f"| {rt} x OpenVINO | " + " | ".join(cells) + " |", file=out)
        reasons = notes_na.get(precision, {})
        if reasons:
            print("\nn/a:", file=out)
            for reason, where in reasons.items():
                print(f"- {', '.join(sorted(where))}: {reason}", file=out)
    if "bf16" in ctx["precisions"] and not native_bf16(cpu):
        print("\nThis CPU has no native bf16 (avx512_bf16, amx_tile): PyTorch's and attnkit's bf16 times are "
              "software conversions, not what a bf16 CPU does.", file=out)
    if ctx["export_notes"]:
        print("\nONNX export notes:", file=out)
        for m, notes in ctx["export_notes"].items():
            for n in notes:
                print(f"- {m}: {n}", file=out)
    print("\nx OpenVINO: that row's median / OpenVINO's median for the same column (below 1: faster than "
          "OpenVINO).", file=out)


def write_json(path, payload):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- main -------------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    binary = args.attnkit
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        fail(f"attnkit program not found or not executable: {binary} (build it, or pass --attnkit PATH)")
    if args.json:
        jdir = Path(args.json).parent
        if not jdir.is_dir():
            fail(f"--json: folder {jdir} does not exist")
    ak_version = attnkit_version(binary)
    cpu = cpu_info()
    precisions = args.precision if args.precision != "auto" else ["fp32"] + (["bf16"] if native_bf16(cpu) else [])

    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
        import openvino as ov
        import timm
        import torch
        import torchvision
        import onnxscript  # noqa: F401  (torch.onnx.export's dynamo exporter needs it)
    except ImportError as e:
        fail(f"missing Python package ({e.name}): run scripts/setup.sh, and this script with "
             f"~/.cache/attnkit/venv/bin/python")
    torch.set_num_threads(args.threads)
    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    core = ov.Core()

    ctx = {
        "cpu": cpu, "threads": args.threads, "precisions": precisions, "models": args.models,
        "batches": args.batch, "iters": args.iters, "warmup": args.warmup, "sequential": not args.interleave,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
                     "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "openvino": ov.__version__.split("-")[0], "attnkit": ak_version},
        "model_info": {}, "agreement": [], "export_notes": {},
    }
    results = {}   # (precision, runtime, model, batch) -> {"median_ms", "min_ms", ...} or {"na": reason}
    attnkit_runs = {}  # (depth, batch, precision) -> (rows, error)
    failures = 0

    def put(precision, runtime, model, batch, cell):
        results[(precision, runtime, model, batch)] = cell

    # attnkit first, in its own process, before any ONNX Runtime or OpenVINO session exists: their
    # worker threads (spinning after each run) would otherwise share the cores with it.
    for name in args.models:
        for batch in args.batch:
            for precision in precisions:
                key = (name.partition("-")[0], batch, precision)
                if key not in attnkit_runs:
                    attnkit_runs[key] = run_attnkit(binary, key[0], batch, precision, args)
                    if attnkit_runs[key][1]:
                        log(f"ERROR: {attnkit_runs[key][1]}")
                        failures += 1

    for name in args.models:
        log(f"{name}: building the PyTorch model")
        model = build_model(name)
        fingerprint = weights_fingerprint(model)
        arch = check_architecture(binary, name, model, cache)
        if not arch["ok"]:
            log(f"WARNING: {name}: the PyTorch model and attnkit's differ: {arch['detail']}")
        ctx["model_info"][name] = {"parameters": sum(p.numel() for p in model.parameters()),
                                   "weights_sha256_12": fingerprint, "arch_check": arch}
        try:
            onnx_path, export_notes = export_onnx(model, name, fingerprint, cache)
            if export_notes != ["cached"]:
                ctx["export_notes"][name] = export_notes
            ctx["model_info"][name].update(onnx=str(onnx_path), onnx_opset=onnx_opset(onnx_path))
            session = ort_session(onnx_path, args.threads)
        except Exception as e:  # noqa: BLE001 — reported, the other runtimes still run
            log(f"ERROR: {name}: {e}")
            onnx_path, session, failures = None, None, failures + 1
            onnx_error = str(e).splitlines()[0][:200]

        for batch in args.batch:
            gen = torch.Generator().manual_seed(1)
            x = torch.randn(batch, 3, IMAGE, IMAGE, generator=gen)
            x_np = x.numpy()
            runners, keys = {}, {}
            for precision in precisions:
                bf16 = precision == "bf16"
                runners[f"PyTorch eager {precision}"] = eager_runner(model, x, bf16)
                keys[f"PyTorch eager {precision}"] = (precision, "PyTorch eager")
                if session is None:
                    put(precision, "ONNX Runtime", name, batch, {"na": f"no ONNX model: {onnx_error}"})
                    put(precision, "OpenVINO", name, batch, {"na": f"no ONNX model: {onnx_error}"})
                    continue
                if bf16:
                    put(precision, "ONNX Runtime", name, batch,
                        {"na": "ONNX Runtime's CPU provider has no bf16 convolutions"})
                else:
                    runners["ONNX Runtime fp32"] = ort_runner(session, x_np)
                    keys["ONNX Runtime fp32"] = (precision, "ONNX Runtime")
                try:
                    compiled, why = openvino_compile(core, onnx_path, batch, args.threads, precision)
                except Exception as e:  # noqa: BLE001
                    compiled, why = None, f"OpenVINO failed: {str(e).splitlines()[0][:200]}"
                    failures += 1
                if compiled is None:
                    put(precision, "OpenVINO", name, batch, {"na": why})
                else:
                    runners[f"OpenVINO {precision}"] = openvino_runner(compiled, x_np)
                    keys[f"OpenVINO {precision}"] = (precision, "OpenVINO")

            log(f"{name} b={batch}: timing {', '.join(runners)}")
            times, iters, first = time_runners(runners, args.iters, args.warmup, not args.interleave)
            reference = first.get("PyTorch eager fp32")
            if reference is None:
                reference = eager_runner(model, x, False)()
            for label, (precision, runtime) in keys.items():
                put(precision, runtime, name, batch, summary(times[label], iters, args.warmup))
                if runtime != "PyTorch eager" or precision != "fp32":
                    a = agreement(reference, first[label])
                    warn = precision == "fp32" and a["rel_diff"] > AGREE_REL
                    ctx["agreement"].append({"model": name, "batch": batch, "runtime": runtime, "precision": precision,
                                             **a, "warn": warn})
                    if warn:
                        log(f"WARNING: {name} b={batch}: {runtime} fp32 differs from PyTorch by {a['max_abs_diff']:.3g} "
                            f"({a['rel_diff']:.3g} of the largest logit)")
            del runners, first

            depth = name.partition("-")[0]
            for precision in precisions:
                key = (depth, batch, precision)
                if key not in attnkit_runs:
                    attnkit_runs[key] = run_attnkit(binary, depth, batch, precision, args)
                    if attnkit_runs[key][1]:
                        log(f"ERROR: {attnkit_runs[key][1]}")
                        failures += 1
                rows, error = attnkit_runs[key]
                for rt in ATTNKIT_IMPLS:
                    put(precision, rt, name, batch, attnkit_results(rows, error, name, rt))
        del model, session
        gc.collect()

    # The n/a notes: precision -> reason -> where ("runtime (model b=B)", or the runtime alone when the
    # reason holds for all its columns).
    notes_na = {}
    for (precision, runtime, m, b), cell in results.items():
        if "na" in cell:
            notes_na.setdefault(precision, {}).setdefault(cell["na"], set()).add(f"{runtime} ({m} b={b})")
    for precision, reasons in notes_na.items():
        for reason, where in reasons.items():
            runtimes = {w.split(" (")[0] for w in where}
            if len(where) == len(runtimes) * len(args.models) * len(args.batch):
                reasons[reason] = runtimes  # applies to every column: name the runtime only

    print_report(ctx, results, notes_na)
    if args.json:
        payload = {
            "command": [sys.executable, *sys.argv], **{k: v for k, v in ctx.items()},
            "results": [{"precision": p, "runtime": r, "model": m, "batch": b, **cell}
                        for (p, r, m, b), cell in results.items()],
            "attnkit_rows": [{"depth": d, "batch": b, "precision": p, "error": err, "rows": list(rows.values())}
                             for (d, b, p), (rows, err) in attnkit_runs.items()],
        }
        write_json(args.json, payload)
        log(f"wrote {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench_peers: interrupted", file=sys.stderr)
        sys.exit(130)
