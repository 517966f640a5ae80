#!/usr/bin/env python3
"""Data-parallel `attnkit train` / `attnkit eval` on c10d (Gloo over loopback), 2 processes x 1 thread.

One case per call (CTest runs each, tests/cli_distributed.cmake):

  parity    dist_parity (tests/distributed): K SGD steps on 2 processes == K steps on 1 process with the
            same global batch, in float64 (the algorithm: equal to rounding) and float32 (the tolerance
            below), with an even and an uneven split of the batch; for a network without BatchNorm, and
            for one with BatchNorm under --sync-bn (and not without it).
  sharding  attnkit train under torchrun logs the rows of every step (ATTNKIT_LOG_SAMPLES): per step the
            two slices together are exactly the one-process batch, so each epoch every row is seen once
            (IDX data, a pixel CSV and, with OpenCV, an image folder).
  two_nodes torchrun's multi-machine form (--nnodes 2, c10d rendezvous) as two launches on this machine.
  eval      a run started on 1 process resumes on 2; attnkit eval of its model on 2 processes prints
            exactly the 1-process text and JSON.
  kill      2 processes launched with torchrun's variables; rank 1 is SIGKILLed mid-epoch: rank 0 exits
            non-zero within --dist-timeout with one line, the last checkpoint is intact, and --resume on
            1 process finishes the run.
  kill_sync_bn  the same under --sync-bn: rank 0 meets the dead rank inside BatchNorm's all-reduce
            (in forward or in autograd's backward) and fails the same way.
  hang      the same with rank 1 stopped (SIGSTOP): rank 0 fails within --dist-timeout.
  elastic   torchrun --max-restarts 1; rank 1 is killed after epoch 1; torchrun restarts both and the
            run continues from the last epoch and finishes.

Tolerance of the float32 parity (weights after K=5 SGD steps, lr 0.1, momentum 0.9): the two runs add
the same per-image gradient terms in a different grouping (two half-batch means averaged vs one mean),
so each gradient entry differs by rounding only: a float32 sum of m terms is off by at most ~m*u*sum|t|,
typically sqrt(m)*u*sum|t|, u = 2^-24 = 6e-8. The longest sums here are a conv weight's, over
batch*H*W = 32*12*12 = 4608 terms: ~70*6e-8 = 4e-6 relative to the gradient's magnitude (|g| <~ 1).
Five steps with momentum accumulate lr*(1 + 1.9 + 2.71 + 3.44 + 4.1) ~ 1.3 such errors per weight, plus
their propagation through the network (a few times more for 5 small steps): ~1e-5, the tolerance. The
measured difference is ~3e-8, one float32 ulp of the largest weights (|w| ~ 0.3). float64 must agree to
1e-10 (u = 1.1e-16; measured ~3e-17).

With BatchNorm (--net bn: resnet20-cbam at width 0.25, 19 BatchNorm layers) and --sync-bn, each layer
adds two more reductions of the same length (mean and variance forward, sum dy and sum dy*xhat
backward) and a gain of 1/std (<~10 for these activations) to the error's propagation: ten times the
plain network's bound, 1e-4 (BN_FLOAT32_TOLERANCE; measured 1.6e-7, and 1e-15 in float64). Without
--sync-bn the two runs part by ~0.04, which the case also checks so that it could fail.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ARGS = None
BN_FLOAT32_TOLERANCE = 1e-4


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def run(cmd, env=None, timeout=600, check=True):
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    p = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        fail(f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def torchrun(nproc, *cmd, extra=()):
    # --standalone: a rendezvous on a free port of its own, so that tests may run side by side.
    return [ARGS.torchrun, "--standalone", "--nproc-per-node", str(nproc), *extra, "--no-python", *cmd]


def one_thread_env(**more):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.update(more)
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(out, *more, epochs=2, images=600):
    return [ARGS.attnkit, "train", "--data", ARGS.data, "--model", "resnet20", "--width", "0.25", "--epochs", str(epochs),
            "--batch-size", "64", "--max-images", str(images), "--val-size", "100", "--out", out, "--threads", "1", *more]


# ---- parity -----------------------------------------------------------------------------------------

def parity_diff(work, net, dtype, batch, sync_bn=False):
    """max |w(2 processes) - w(1 process)| over the weights (and buffers) after 5 steps, and max |w|."""
    tag = f"{net}-{dtype}-{batch}" + ("-sync" if sync_bn else "")
    one, two = work / f"one-{tag}.bin", work / f"two-{tag}.bin"
    common = ["--steps", "5", "--batch", str(batch), "--dtype", dtype, "--net", net]
    run([ARGS.parity, *common, "--out", one], env=one_thread_env())
    run(torchrun(2, ARGS.parity, *common, "--sync-bn", "1" if sync_bn else "0", "--out", two), env=one_thread_env())
    w1, w2 = np.fromfile(one, dtype=np.float64), np.fromfile(two, dtype=np.float64)
    if w1.shape != w2.shape or w1.size == 0:
        fail(f"weights differ in size: {w1.shape} vs {w2.shape}")
    diff = float(np.abs(w1 - w2).max())
    print(f"parity {net} {dtype} global batch {batch}{' --sync-bn' if sync_bn else ''}: "
          f"max |w(2 processes) - w(1 process)| = {diff:.3g} (max |w| = {np.abs(w1).max():.3g})")
    return diff


def case_parity(work):
    for dtype, batch, tol in [("float64", 32, 1e-10), ("float32", 32, 1e-5), ("float32", 33, 1e-5)]:
        diff = parity_diff(work, "plain", dtype, batch)
        if not diff <= tol:
            fail(f"{dtype} batch {batch}: weights differ by {diff:g} > {tol:g}")
    # BatchNorm: with --sync-bn every layer sees the global batch's statistics, so 2 processes are the
    # 1-process run again; without it each normalises its half, and the runs part (the test can tell).
    for dtype, batch, tol in [("float64", 32, 1e-10), ("float32", 32, BN_FLOAT32_TOLERANCE),
                              ("float32", 33, BN_FLOAT32_TOLERANCE)]:
        diff = parity_diff(work, "bn", dtype, batch, sync_bn=True)
        if not diff <= tol:
            fail(f"bn {dtype} batch {batch} --sync-bn: weights differ by {diff:g} > {tol:g}")
    diff = parity_diff(work, "bn", "float64", 32, sync_bn=False)
    if not diff > 1e3 * 1e-10:
        fail(f"bn without --sync-bn: 2 processes equal 1 ({diff:g}); the test could not tell them apart")


# ---- sync_bn ----------------------------------------------------------------------------------------

def case_sync_bn(work):
    """attnkit train --sync-bn on 2 processes says so and trains; on 1 process it says there is nothing
    to synchronise. (That the statistics are the global batch's is the parity case's.)"""
    cmd = lambda out: [ARGS.attnkit, "train", "--data", ARGS.data, "--model", "resnet20-cbam", "--width", "0.25",
                       "--epochs", "1", "--batch-size", "32", "--max-images", "256", "--val-size", "64", "--sync-bn",
                       "--out", out, "--threads", "1"]
    two = run(torchrun(2, *cmd(work / "two")), env=one_thread_env())
    if "BatchNorm statistics: synchronised over the global batch (--sync-bn)" not in two.stderr:
        fail("2 processes with --sync-bn: the plan does not say the statistics are synchronised:\n" + two.stderr)
    if not (work / "two" / "best.pt").exists():
        fail("2 processes with --sync-bn: no best.pt")
    one = run(cmd(work / "one"), env=one_thread_env())
    if "--sync-bn: one process, nothing to synchronise" not in one.stderr:
        fail("1 process with --sync-bn: no word about it:\n" + one.stderr)


# ---- sharding ---------------------------------------------------------------------------------------

def read_log(path):
    steps = {}
    for line in Path(path).read_text().split("\n"):
        if line.strip():
            fields = [int(x) for x in line.split()]
            steps[fields[0]] = fields[1:]
    return steps


def pixel_csv(path, n=240, side=8):
    rng = np.random.default_rng(5)
    rows = ["label," + ",".join(f"p{i}" for i in range(side * side))]
    for _ in range(n):
        rows.append(",".join(str(v) for v in [int(rng.integers(0, 10)), *rng.integers(0, 256, side * side)]))
    Path(path).write_text("\n".join(rows) + "\n")


def check_sharding(work, name, data_args, epochs, images, batch):
    log1, log2 = work / f"{name}-one", work / f"{name}-two"
    for f in work.glob(f"{name}-*.rank*"):
        f.unlink()
    cmd = lambda out: [ARGS.attnkit, "train", *data_args, "--model", "resnet20", "--width", "0.25", "--epochs",
                       str(epochs), "--batch-size", str(batch), "--max-images", str(images), "--val-size", "0",
                       "--out", out, "--threads", "1", "--quiet"]
    run(cmd(work / f"{name}-run1"), env=one_thread_env(ATTNKIT_LOG_SAMPLES=str(log1)))
    run(torchrun(2, *cmd(work / f"{name}-run2")), env=one_thread_env(ATTNKIT_LOG_SAMPLES=str(log2)))
    one = read_log(f"{log1}.rank0")
    r0, r1 = read_log(f"{log2}.rank0"), read_log(f"{log2}.rank1")
    if not (one.keys() == r0.keys() == r1.keys()) or not one:
        fail(f"{name}: the processes logged different steps: {sorted(one)} / {sorted(r0)} / {sorted(r1)}")
    steps_per_epoch = len(one) // epochs
    for step in sorted(one):
        if r0[step] + r1[step] != one[step]:
            fail(f"{name}: step {step}: rank 0 {r0[step]} + rank 1 {r1[step]} is not the one-process batch {one[step]}")
        if abs(len(r0[step]) - len(r1[step])) > 1:
            fail(f"{name}: step {step}: slices of {len(r0[step])} and {len(r1[step])} images")
    for e in range(epochs):
        seen = [i for s in range(e * steps_per_epoch, (e + 1) * steps_per_epoch) for i in r0[s] + r1[s]]
        if len(seen) != len(set(seen)) or len(seen) != steps_per_epoch * batch:
            fail(f"{name}: epoch {e + 1}: {len(seen)} rows, {len(set(seen))} distinct")
    print(f"sharding {name}: {len(one)} steps over {epochs} epochs, each global batch of {batch} = rank 0's slice + "
          f"rank 1's, no row twice in an epoch ({steps_per_epoch * batch} of {images} rows per epoch; the rest is the "
          f"dropped last batch, as with one process)")


def case_sharding(work):
    check_sharding(work, "idx", ["--data", ARGS.data], epochs=2, images=300, batch=64)
    csv = work / "pixels.csv"
    pixel_csv(csv)
    check_sharding(work, "csv", ["--data", csv, "--format", "pixel-csv", "--classes", "0,1,2,3,4,5,6,7,8,9"], epochs=2,
                   images=240, batch=50)
    version = run([ARGS.attnkit, "--version"]).stdout
    if "OpenCV" in version:  # an image folder: 2 classes of the bundled sample images, 40 files
        samples = sorted((Path(__file__).resolve().parents[2] / "weights" / "samples").glob("*.png"))
        for k, cls in enumerate(["left", "right"]):
            (work / "folder" / cls).mkdir(parents=True)
            for i in range(20):
                (work / "folder" / cls / f"{i:02d}.png").write_bytes(samples[(i + k) % len(samples)].read_bytes())
        check_sharding(work, "folder", ["--data", work / "folder"], epochs=2, images=40, batch=8)


# ---- eval -------------------------------------------------------------------------------------------

def case_eval(work):
    # The model: epoch 1 on 1 process, epoch 2 resumed on 2 (a state moves between world sizes).
    run(train_cmd(work / "model", "--quiet", "--stop-after", "1", epochs=2, images=400), env=one_thread_env())
    res = run(torchrun(2, *train_cmd(work / "model", "--resume", epochs=2, images=400)), env=one_thread_env())
    if f"resuming {work / 'model'} after epoch 1/2" not in res.stderr or "epoch 2/2" not in res.stderr:
        fail("a 1-process state did not resume on 2 processes:\n" + res.stderr)
    weights = work / "model" / "last.pt"
    for extra in [[], ["--json"]]:
        cmd = [ARGS.attnkit, "eval", "--weights", weights, "--data", ARGS.data, "--batch-size", "300", *extra]
        one = run(cmd + ["--threads", "1"], env=one_thread_env())
        two = run(torchrun(2, *cmd), env=one_thread_env())
        if one.stdout != two.stdout or not one.stdout:
            fail(f"eval {' '.join(extra)}: 2 processes printed\n{two.stdout}\n1 process printed\n{one.stdout}")
        if "data-parallel: gloo, 2 processes" not in two.stderr:
            fail("eval under torchrun did not run data-parallel:\n" + two.stderr)
    print("eval: 2 processes print exactly the 1-process text and JSON")


# ---- faults -----------------------------------------------------------------------------------------

def launch_two(out, epochs, images, timeout_s, *more):
    """The two ranks with the variables torchrun sets, rank 0 hosting the store (no agent)."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = one_thread_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                             MASTER_PORT=str(port))
        cmd = [str(c) for c in train_cmd(out, "--dist-timeout", str(timeout_s), *more, epochs=epochs, images=images)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def wait_for_epochs(out, n, procs, limit=300):
    metrics = Path(out) / "metrics.jsonl"
    t0 = time.time()
    while time.time() - t0 < limit:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        if any(p.poll() is not None for p in procs):
            fail("a process ended early:\n" + "\n".join(p.communicate()[1] for p in procs))
        time.sleep(0.05)
    fail(f"no {n} epoch(s) in {limit} s")


def check_survivor(p, started, timeout_s, what):
    try:
        _, err = p.communicate(timeout=timeout_s + 60)
    except subprocess.TimeoutExpired:
        p.kill()
        fail(f"{what}: rank 0 still running {timeout_s + 60} s later")
    took = time.time() - started
    errors = [l for l in err.splitlines() if l.startswith("attnkit:")]
    print(f"{what}: rank 0 exited {p.returncode} after {took:.1f} s: {errors}")
    if p.returncode == 0:
        fail(f"{what}: rank 0 exited 0")
    if len(errors) != 1 or "rank 0 of 2: the process group failed" not in errors[0]:
        fail(f"{what}: expected one 'attnkit: rank 0 of 2: the process group failed' line, stderr:\n{err}")
    if took > timeout_s + 30:
        fail(f"{what}: rank 0 took {took:.0f} s, --dist-timeout is {timeout_s} s")
    return err


def check_intact_and_resume(out, epochs_done, epochs):
    out = Path(out)
    leftovers = [f.name for f in out.iterdir() if f.name not in
                 ("train_state.pt", "last.pt", "best.pt", "metrics.jsonl")]
    if leftovers:
        fail(f"unexpected files (half-written?) in {out}: {leftovers}")
    lines = out.joinpath("metrics.jsonl").read_text().splitlines()
    if len(lines) != epochs_done:
        fail(f"metrics.jsonl has {len(lines)} epochs, expected {epochs_done}")
    ev = run([ARGS.attnkit, "eval", "--weights", out / "last.pt", "--data", ARGS.data, "--threads", "1", "--json"],
             env=one_thread_env())
    json.loads(ev.stdout)
    res = run(train_cmd(out, "--resume", epochs=epochs, images=1500), env=one_thread_env())
    if f"resuming {out} after epoch {epochs_done}/{epochs}" not in res.stderr:
        fail("--resume on 1 process did not continue from the last epoch:\n" + res.stderr)
    if len(out.joinpath("metrics.jsonl").read_text().splitlines()) != epochs:
        fail("the resumed run did not finish")
    print(f"last checkpoint intact (epoch {epochs_done}); --resume on 1 process finished epochs {epochs_done + 1}..{epochs}")


def case_kill(work, *more, what="kill"):
    out, timeout_s, epochs = work / what, 20, 3
    procs = launch_two(out, epochs, 1500, timeout_s, *more)
    wait_for_epochs(out, 1, procs)
    time.sleep(0.3)  # into epoch 2
    procs[1].send_signal(signal.SIGKILL)
    started = time.time()
    procs[1].wait()
    err = check_survivor(procs[0], started, timeout_s, what)
    check_intact_and_resume(out, len((out / "metrics.jsonl").read_text().splitlines()), epochs)
    return err


def case_kill_sync_bn(work):
    # With --sync-bn every BatchNorm all-reduces in forward and again in backward (inside autograd's
    # engine), so most of a step's collectives are BatchNorm's: wherever the survivor meets the dead
    # rank, it must fail the same way (one line, non-zero, checkpoint intact).
    err = case_kill(work, "--sync-bn", what="kill_sync_bn")
    if "BatchNorm statistics: synchronised over the global batch" not in err:
        fail("kill_sync_bn: rank 0's plan does not say its BatchNorm statistics were synchronised:\n" + err)


def case_hang(work):
    out, timeout_s, epochs = work / "hung", 10, 3
    procs = launch_two(out, epochs, 1500, timeout_s)
    wait_for_epochs(out, 1, procs)
    time.sleep(0.3)
    procs[1].send_signal(signal.SIGSTOP)
    started = time.time()
    try:
        check_survivor(procs[0], started, timeout_s, "hang")
    finally:
        procs[1].kill()
        procs[1].wait()
    check_intact_and_resume(out, len((out / "metrics.jsonl").read_text().splitlines()), epochs)


def descendants_with_env(root_pid, key, value):
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            environ = (d / "environ").read_bytes().split(b"\0")
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if f"{key}={value}".encode() in environ and b"TORCHELASTIC_RESTART_COUNT=0" in environ:
            # a child of torchrun's agent (its parent, or the parent's parent)
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == root_pid or ppid in children(root_pid):
                found.append(int(d.name))
    return found


def children(pid):
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError):
                pass
    return out


def case_elastic(work):
    out, epochs = work / "elastic", 3
    cmd = torchrun(2, *train_cmd(out, epochs=epochs, images=1500), extra=["--max-restarts", "1"])
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    p = subprocess.Popen([str(c) for c in cmd], env=one_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    wait_for_epochs(out, 1, [p])
    time.sleep(0.3)
    victims = descendants_with_env(p.pid, "RANK", "1")
    if len(victims) != 1:
        p.kill()
        fail(f"cannot find rank 1 of the first attempt among torchrun's workers: {victims}")
    os.kill(victims[0], signal.SIGKILL)
    try:
        _, err = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        p.kill()
        fail("torchrun did not finish")
    if p.returncode != 0:
        fail(f"torchrun --max-restarts 1 exited {p.returncode}:\n{err}")
    resumed = [l for l in err.splitlines() if l.startswith(f"resuming {out} after epoch")]
    if not resumed:
        fail("the restarted workers did not resume:\n" + err)
    if len((out / "metrics.jsonl").read_text().splitlines()) != epochs:
        fail("the restarted run did not finish all epochs")
    print(f"elastic: rank 1 killed, torchrun restarted the workers, '{resumed[0]}', all {epochs} epochs done")


def case_two_nodes(work):
    """The README's multi-machine command, both "machines" being this one: two torchrun agents meet at a
    c10d rendezvous endpoint and start one worker each."""
    port, out = free_port(), work / "run"
    procs = []
    for node in (0, 1):
        cmd = [ARGS.torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
               f"127.0.0.1:{port}", "--rdzv-id", "attnkit-test", "--no-python",
               *train_cmd(out, epochs=1, images=400)]
        print("+ " + " ".join(str(c) for c in cmd), flush=True)
        procs.append(subprocess.Popen([str(c) for c in cmd], env=one_thread_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=300))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            fail("the two agents did not finish")
    if any(p.returncode != 0 for p in procs):
        fail("a node failed:\n" + "\n".join(o[1] for o in outputs))
    err = "".join(o[1] for o in outputs)
    if "data-parallel: gloo, 2 processes" not in err or "epoch 1/1" not in err:
        fail("no 2-process run:\n" + err)
    if len((out / "metrics.jsonl").read_text().splitlines()) != 1:
        fail("no epoch written")
    print("two nodes: two torchrun agents (--nnodes 2, c10d rendezvous) ran one 2-process training")


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=["parity", "sync_bn", "sharding", "eval", "kill", "kill_sync_bn", "hang", "elastic", "two_nodes"])
    ap.add_argument("--attnkit", required=True)
    ap.add_argument("--parity", help="the dist_parity program")
    ap.add_argument("--torchrun", required=True)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--work", required=True)
    ARGS = ap.parse_args()
    work = Path(ARGS.work) / ARGS.case
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    globals()["case_" + ARGS.case](work)
    print(f"distributed {ARGS.case}: ok")


if __name__ == "__main__":
    main()
