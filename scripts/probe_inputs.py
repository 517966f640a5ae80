#!/usr/bin/env python3
"""Hostile-input probe of the release `attnkit` program (issue 21: no crash, no hang, no silent
success, no good file lost).

Builds a few hundred damaged, crafted and hostile inputs in a temporary folder, runs the program on
each (one process per case) and sorts every outcome into one of four verdicts:

  ok     the exit code the case expects: 1 for a damaged input, 2 for a usage error, 0 for the
         valid controls that prove the probe can tell (an unmodified checkpoint, image, .pth, IDX
         folder, video); exactly one readable line on stderr (printable, at most 1000 characters;
         a usage error's "Run 'attnkit --help' ..." hint does not count; classify puts a bad
         file's error in its results, and its summary is then the one line); no allocation failure
         in it ("can't allocate", "bad_alloc", "DefaultCPUAllocator": running out of memory is
         never a reason to refuse a file); a peak RSS under 1.5 GiB; and the case's own check
         (the good image beside a bad one was still classified, a failed import left no output
         file and kept a previous one byte for byte, no temporary file was left behind, ...).
  crash  death by a signal, or an exit code >= 128.
  hang   still running after --timeout seconds (the process group is then killed).
  wrong  anything else, e.g. exit 0 on a damaged input ("silent success"), two stderr lines, too
         much memory, a changed or torn previous file, a leftover .NAME.tmp-PID-XXXXXX.

Classes of input (--only CLASS,CLASS):
  checkpoint  the smallest bundled weights/*.attnkit cut at ~45 offsets, 80 seeded bit flips (a
              third anywhere, a third in the pickle, a third in the zip's central directory),
              crafted zips and pickles (memo index 0x28000000, 600,000-deep nesting, 4 GiB
              string, a storage larger than its record, os.system), configs and states that
              pass the checksum but mean nothing (unknown stem, 100000x100000 input, width 1e6,
              stride-0 views, ...), an empty file, a directory, a FIFO, /dev/zero; run by
              `classify --weights FILE`. A bit flip may end in exit 0 only outside every zip
              entry's data (a timestamp, padding) and with the unmodified file's result.
  import      a torchvision resnet18 state dict (seeded random weights) cut and bit-flipped,
              crafted zips/pickles, safetensors with overlapping or shifted offsets, a huge
              header length, dtype x shape != bytes, complex weights; a state dict that matches
              no key; every failed import must leave no --out file (and an existing one, with
              --overwrite, unchanged).
  images      PNG/JPEG cut short, bit flips (JPEG has no checksum, so a flipped JPEG may also
              exit 0: then only the usual checks apply), 0-byte and text files named .png, a
              directory named x.png, FIFOs on the command line, matched by a glob, inside a
              folder and named in --list, unreadable files and folders (as root these run
              under setpriv without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so root's bypass does
              not hide them), headers claiming 100000x100000 or 30000x30000 pixels; each run
              together with one good image, which must still be classified.
  idx         eval (and a few train) runs on IDX folders with cut headers, wrong magic, 0/5/255
              dimensions, sizes whose product overflows, image/label count mismatches, labels
              out of range, gzip bombs inflating to more than 2 GiB, corrupt gzip, FIFOs.
  options     NaN, infinite, negative, huge and contradictory option values, unknown options
              and commands (exit 2 and one line; a command that would accept the value runs on
              tiny inputs, so a silent acceptance ends quickly in exit 0 and is counted).
  video       stream on truncated mp4 (moov at the end and at the front) and avi files (cut
              where frame data or the index is lost: a missing last byte is invisible to any
              decoder), a text file named .mp4, an empty file, a FIFO, /dev/zero, a directory.
  signals     SIGTERM to train, import and stream while they work: death by SIGTERM (143),
              no temporary file left, every checkpoint left behind loads as a zip.
  full-disk   (only with --full-disk; needs root to mount a small tmpfs, skipped with a note
              when mount fails) a good previous output (import's checkpoint, classify's
              --output, eval's --png, stream's --output, a training run's files) on a tmpfs
              filled by a filler file: the command must exit 1, the previous files must be
              byte-identical, and no temporary file may remain.

Every child runs with an address-space limit (RLIMIT_AS) of 8 GiB as a safety net for the
machine; the verdict on memory is the peak RSS (ru_maxrss from wait4, taken by a small launcher
process, since a child forked by the probe itself would inherit the probe's size). Measured on
the CUDA build of LibTorch without a GPU: a normal `attnkit classify` or `eval` peaks at 3.1-3.3
GiB of virtual memory (VmPeak) and runs under a 4 GiB limit, so 8 GiB never stops a normal run.

Run (from the repository root, after building build/bin/attnkit):

  ~/.cache/attnkit/venv/bin/python scripts/probe_inputs.py --json probe.json
  ~/.cache/attnkit/venv/bin/python scripts/probe_inputs.py --only images,idx --keep /tmp/probe
  sudo ~/.cache/attnkit/venv/bin/python scripts/probe_inputs.py --full-disk

It prints the counts per class (tried / ok / crash / hang / wrong) and every case that is not ok
with its command, exit code, first stderr line, peak RSS and seconds. Exit status 0 when every
case is ok, 1 otherwise. Everything is seeded: two runs build the same inputs. The crafted zip,
pickle, safetensors and IDX builders are scripts/fuzz_corpus.py's (the fuzz targets' seeds).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import gzip
import hashlib
import io
import json
import math
import os
import pickletools
import random
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Union

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import fuzz_corpus as fc  # noqa: E402  (zip/pickle/safetensors/IDX builders; no side effects on import)

GIB = 1 << 30
MAX_RSS = 3 * GIB // 2
ADDRESS_SPACE_LIMIT = 8 * GIB
MAX_LINE = 1000
ALLOCATION_FAILURES = ("can't allocate", "bad_alloc", "DefaultCPUAllocator")  # "bad_alloc" covers std::bad_alloc
USAGE_HINT = re.compile(r"^Run 'attnkit\b.*--help")
SEED = 21
CLASSES = ("checkpoint", "import", "images", "idx", "options", "video", "signals", "full-disk")
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
T10K_IMAGES, T10K_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
PREVIOUS_OUTPUT = b"a previous output file that a failed command must leave as it is\n"


# ---- running one program ------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    code: int          # the exit code; 128 + N after death by signal N (as a shell reports it)
    timed_out: bool
    seconds: float
    peak_rss: int      # bytes
    stdout: str
    stderr: str

    def error_lines(self) -> list[str]:
        """The non-empty stderr lines, a usage error's hint to --help aside."""
        return [line for line in self.stderr.splitlines() if line.strip() and not USAGE_HINT.match(line)]

    def first_line(self) -> str:
        lines = self.error_lines()
        return lines[0][:MAX_LINE] if lines else ""

    def json_rows(self) -> dict[str, dict]:
        """classify --format json's rows by path."""
        rows = {}
        for line in self.stdout.splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict) and "path" in row:
                    rows[row["path"]] = row
        return rows


# A small launcher between the probe and the program. Linux starts a child's peak RSS (ru_maxrss)
# at its parent's resident size at fork and keeps it across exec, and the probe is a big process
# (LibTorch is loaded): a program forked by this small one gets a peak RSS of its own. It also sets
# the address-space limit and passes SIGTERM on, then reports the wait status and peak RSS (KiB).
LAUNCHER = r"""
import os, resource, signal, sys
limit, report, command = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
pid = os.fork()
if pid == 0:
    os.close(report)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        os.execvp(command[0], command)
    finally:
        os._exit(127)
signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
_, status, usage = os.wait4(pid, 0)
os.write(report, b"%d %d" % (status, usage.ru_maxrss))
"""


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def wait_launcher(pid: int, timeout: float, term_after: Optional[float]) -> bool:
    """Waits for the launcher; SIGTERM to it (passed on to the program) after term_after seconds,
    the whole process group killed after timeout. True when it timed out."""
    start, termed = time.monotonic(), False
    while os.waitpid(pid, os.WNOHANG)[0] == 0:
        elapsed = time.monotonic() - start
        if term_after is not None and not termed and elapsed >= term_after:
            os.kill(pid, signal.SIGTERM)
            termed = True
        if elapsed >= timeout:
            kill_group(pid)
            os.waitpid(pid, 0)
            return True
        time.sleep(0.02)
    return False


def run_program(command: list[str], cwd: Path, timeout: float, term_after: Optional[float] = None) -> Outcome:
    report_read, report_write = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, os.fdopen(report_read, "rb") as report:
        start = time.monotonic()
        launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(ADDRESS_SPACE_LIMIT), str(report_write), *command]
        proc = subprocess.Popen(launcher, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True, pass_fds=(report_write,))
        os.close(report_write)
        timed_out = wait_launcher(proc.pid, timeout, term_after)
        proc.returncode = 0   # reaped by waitpid above: Popen must not wait for it again
        seconds = time.monotonic() - start
        kill_group(proc.pid)  # anything the program left running
        reported = report.read().split()  # nothing when the launcher was killed (timeout)
        status, peak_kib = map(int, reported) if reported else (signal.SIGKILL, 0)
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Outcome(code=128 - code if code < 0 else code, timed_out=timed_out, seconds=seconds,
                       peak_rss=peak_kib * 1024, stdout=out.read().decode(errors="replace"),
                       stderr=err.read().decode(errors="replace"))


# ---- cases and verdicts -------------------------------------------------------------------------

Check = Callable[[Outcome], Optional[str]]


@dataclasses.dataclass
class Case:
    cls: str
    name: str
    argv: list[str]                      # the program's arguments
    expect: tuple[int, ...] = (1,)       # acceptable exit codes (143: death by SIGTERM)
    one_line: Optional[bool] = None      # stderr must be one readable line (default: unless a valid control)
    check: Optional[Check] = None        # the case's own check: None when fine, else what is wrong
    prepare: Optional[Callable[[], None]] = None
    cleanup: Optional[Callable[[], None]] = None
    term_after: Optional[float] = None   # send SIGTERM this many seconds after the start
    wrap: tuple[str, ...] = ()           # command put in front (setpriv without root's file bypass)
    note: str = ""
    folder: Optional[Path] = None        # the case's own inputs and outputs (removed afterwards)

    def __post_init__(self):
        if self.one_line is None:
            self.one_line = self.expect != (0,)


@dataclasses.dataclass
class Result:
    case: Case
    verdict: str
    reason: str
    outcome: Optional[Outcome]


def all_of(*checks: Optional[Check]) -> Check:
    def check(o: Outcome) -> Optional[str]:
        problems = [p for p in (c(o) for c in checks if c) if p]
        return "; ".join(problems) or None
    return check


def stderr_problems(o: Outcome) -> list[str]:
    lines = o.error_lines()
    if len(lines) != 1:
        return [f"{len(lines)} lines on stderr"]
    if len(lines[0]) > MAX_LINE or not lines[0].isprintable():
        return ["an unreadable stderr line"]
    return []


def judge(case: Case, o: Outcome, timeout: float) -> tuple[str, str]:
    if o.timed_out:
        return "hang", f"still running after {timeout:g} s"
    if o.code >= 128 and o.code not in case.expect:
        name = signal.Signals(o.code - 128).name if o.code - 128 in signal.valid_signals() else "?"
        return "crash", f"exit {o.code} ({name})"
    problems = []
    if o.code not in case.expect:
        silent = " (silent success)" if o.code == 0 else ""
        problems.append(f"exit {o.code}, expected {' or '.join(map(str, case.expect))}{silent}")
    if o.peak_rss > MAX_RSS:
        problems.append(f"peak RSS {mib(o.peak_rss)} MiB")
    problems += [f"allocation failure in stderr ({s})" for s in ALLOCATION_FAILURES if s in o.stderr][:1]
    if case.one_line:
        problems += stderr_problems(o)
    if case.check:
        try:
            problem = case.check(o)
        except Exception as e:  # a check that breaks is the probe's bug: show it, do not hide it
            problem = f"probe check failed: {e!r}"
        if problem:
            problems.append(problem)
    return ("wrong", "; ".join(problems)) if problems else ("ok", "")


def mib(n: int) -> int:
    return round(n / (1 << 20))


# ---- files --------------------------------------------------------------------------------------

class Special(NamedTuple):
    """Something placed at a path that is not a regular file of given bytes."""
    make: Callable[[Path], None]


FIFO = Special(lambda p: os.mkfifo(p))
DIRECTORY = Special(lambda p: p.mkdir())
SELF_LINK = Special(lambda p: p.symlink_to(p.name))
DEV_ZERO = Special(lambda p: p.symlink_to("/dev/zero"))
BROKEN_LINK = Special(lambda p: p.symlink_to("missing"))


def unreadable(data: bytes) -> Special:
    def make(p: Path) -> None:
        p.write_bytes(data)
        p.chmod(0)
    return Special(make)


def unreadable_folder(data: bytes) -> Special:
    def make(p: Path) -> None:
        p.mkdir()
        (p / "inside.png").write_bytes(data)
        p.chmod(0)
    return Special(make)


Content = Union[bytes, Callable[[], bytes], Special, None]


def place(path: Path, content: Content) -> None:
    """Puts `content` at `path`: bytes, bytes made now (lazily: big damaged copies are not kept in
    memory), a Special, or nothing (None)."""
    if content is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)  # left by an earlier run in the same --keep folder
    elif os.path.lexists(path):
        path.unlink()
    if isinstance(content, Special):
        content.make(path)
    else:
        path.write_bytes(content if isinstance(content, bytes) else content())


def place_all(folder: Path, files: dict[str, Content]) -> None:
    for name, content in files.items():
        place(folder / name, content)


def remove_tree(path: Path) -> None:
    """rmtree that also removes folders without permissions (chmod 000 cases run as non-root)."""
    def fix(func, p, _):
        os.chmod(os.path.dirname(p), 0o700)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(p, 0o700)
        func(p)
    if path.exists():
        shutil.rmtree(path, onerror=fix)


def unfinished_files(folder: Path) -> list[str]:
    """Temporary files of atomic writes and videos (.NAME.tmp-PID-XXXXXX, .NAME.partial-PID-video.EXT,
    and the older NAME.tmp-XXXXXX / .NAME.tmpXXXXXX names)."""
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name or ".partial" in p.name)


def no_debris(folder: Path) -> Check:
    def check(_: Outcome) -> Optional[str]:
        left = unfinished_files(folder)
        return f"temporary files left: {', '.join(left)}" if left else None
    return check


def snapshot(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def compare_snapshots(before: dict[str, str], after: dict[str, str], allow_new: bool) -> Optional[str]:
    changed = [n for n in before if n in after and after[n] != before[n]]
    missing = [n for n in before if n not in after]
    new = [n for n in after if n not in before and (not allow_new or ".tmp" in n or ".partial" in n)]
    problems = [f"{what}: {', '.join(names)}" for what, names in
                (("changed", changed), ("lost", missing), ("new", new)) if names]
    return "; ".join(problems) or None


def zip_is_intact(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


def torn_files(folder: Path) -> list[str]:
    """Outputs of train/import/stream in `folder` that are not complete files."""
    torn = []
    for p in sorted(folder.rglob("*")):
        if p.suffix in (".pt", ".attnkit") and not zip_is_intact(p):
            torn.append(p.name)
        elif p.suffix == ".png" and not p.read_bytes().endswith(b"IEND\xaeB`\x82"):
            torn.append(p.name)
        elif p.suffix == ".jsonl" and not all(json_line(line) for line in p.read_text().splitlines()):
            torn.append(p.name)
    return torn


def json_line(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


# ---- damage shared by the classes ---------------------------------------------------------------

def cut_points(size: int, small: tuple[int, ...], fractions: int, tail: tuple[int, ...]) -> list[int]:
    """Offsets to cut a file at: fixed small ones, evenly spaced ones, and a few from the end."""
    points = set(small) | {size * i // fractions for i in range(1, fractions)} | {size - t for t in tail}
    return sorted(p for p in points if 0 < p < size)


def flip(data: bytes, pos: int, bit: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 1 << bit
    return bytes(b)


def cut(data: bytes, n: int) -> bytes:
    return data[:n]


class ZipEntry(NamedTuple):
    name: str
    header: int  # offset of its local header
    start: int   # its data: [start, end)
    end: int


def zip_entries(data: bytes) -> list[ZipEntry]:
    entries = []
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            n, e = struct.unpack_from("<HH", data, info.header_offset + 26)
            start = info.header_offset + 30 + n + e
            entries.append(ZipEntry(info.filename, info.header_offset, start, start + info.compress_size))
    return entries


def where_in_zip(entries: list[ZipEntry], pos: int) -> str:
    for e in entries:
        if e.header <= pos < e.start:
            return f"local header of {e.name}"
        if e.start <= pos < e.end:
            return f"data of {e.name}"
    return "central directory or end records"


def flip_positions(data: bytes, count: int, rng: random.Random) -> list[tuple[int, int]]:
    """(byte, bit) pairs: a third anywhere, a third in the pickle (entry data.pkl with its local
    header), a third in the central directory and end records."""
    pickle = next(e for e in zip_entries(data) if e.name.endswith("data.pkl"))
    ranges = [(0, len(data)), (pickle.header, pickle.end), (fc.central_directory_offset(data), len(data))]
    return [(rng.randrange(*ranges[i % 3]), rng.randrange(8)) for i in range(count)]


def flip_check(where: str, same_result: Callable[[Outcome], bool]) -> Check:
    """A bit flip may pass only where it changes nothing that is read (a zip timestamp, padding):
    outside every entry's data, and with the unmodified file's result."""
    def check(o: Outcome) -> Optional[str]:
        if o.code != 0:
            return None
        if where.startswith("data of"):
            return f"exit 0 with a bit flipped in the {where}"
        return None if same_result(o) else f"exit 0 with a bit flipped in the {where}, and a different result"
    return check


class Damage(NamedTuple):
    make: Callable[[], bytes]
    where: str


def damaged_copies(data: bytes, cuts: list[int], flips: list[tuple[int, int]]) -> dict[str, Damage]:
    """Every cut ("cut-N") and bit flip ("flip-BYTE-BIT") of `data`, made when needed."""
    entries = zip_entries(data)
    out = {f"cut-{n}": Damage(functools.partial(cut, data, n), f"cut at {n} of {len(data)}") for n in cuts}
    for pos, bit in flips:
        out[f"flip-{pos}-{bit}"] = Damage(functools.partial(flip, data, pos, bit), where_in_zip(entries, pos))
    return out


def patch_end_records(data: bytes, field: str, value: int) -> bytes:
    """Sets the entry count or central-directory offset in both the end record and the zip64 one."""
    b = bytearray(data)
    eocd, z64 = data.rfind(b"PK\x05\x06"), data.rfind(b"PK\x06\x06")
    small = {"entries": (10, "<H", 0xFFFF), "cd_offset": (16, "<I", 0xFFFFFFFF)}[field]
    struct.pack_into(small[1], b, eocd + small[0], min(value, small[2]))
    if z64 >= 0:
        struct.pack_into("<Q", b, z64 + {"entries": 32, "cd_offset": 48}[field], value)
    return bytes(b)


def patch_central(data: bytes, suffix: str, offset: int, fmt: str, value: int) -> bytes:
    """Sets one field of the central-directory entry whose name ends in `suffix`."""
    b, pos = bytearray(data), fc.central_directory_offset(data)
    while data[pos:pos + 4] == b"PK\x01\x02":
        n, e, c = struct.unpack_from("<HHH", data, pos + 28)
        if data[pos + 46:pos + 46 + n].decode().endswith(suffix):
            struct.pack_into(fmt, b, pos + offset, value)
            return bytes(b)
        pos += 46 + n + e + c
    raise ValueError(f"no central-directory entry ends in {suffix}")


def zip_crafts(data: bytes) -> dict[str, Callable[[], bytes]]:
    """Crafted zip structures around the same entries."""
    p = functools.partial
    return {
        "zip-central-entry-ffff": p(fc.hostile_central_directory, data),
        "zip-local-header-then-zeros": p(fc.local_header_then_zeros, data),
        "zip-central-directory-past-end": p(patch_end_records, data, "cd_offset", len(data) + (1 << 20)),
        "zip-entry-count-65535": p(patch_end_records, data, "entries", 0xFFFF),
        "zip-entry-count-2^40": p(patch_end_records, data, "entries", 1 << 40),
        "zip-pickle-size-4gib": p(patch_central, data, "data.pkl", 24, "<I", 0xFFFFFFF0),
        "zip-pickle-compressed-size-4gib": p(patch_central, data, "data.pkl", 20, "<I", 0xFFFFFFF0),
        "zip-pickle-deflate-claimed": p(patch_central, data, "data.pkl", 10, "<H", 8),
        "zip-pickle-encrypted-flag": p(patch_central, data, "data.pkl", 8, "<H", 1),
        "zip-pickle-header-past-end": p(patch_central, data, "data.pkl", 42, "<I", 0xFFFFFF00),
        "zip-end-record-only": lambda: data[data.rfind(b"PK\x05\x06"):],
    }


def pickle_ops(pkl: bytes) -> list[tuple[str, object, int]]:
    return [(op.name, arg, pos) for op, arg, pos in pickletools.genops(pkl)]


def patch_after(pkl: bytes, marker: str, skip: int, new: bytes) -> bytes:
    """Replaces the op `skip` ops after the first op whose argument is `marker` (memo writes not
    counted), e.g. the element count after a storage's 'cpu'."""
    ops = pickle_ops(pkl)
    ends = [pos for _, _, pos in ops[1:]] + [len(pkl)]
    start = next(i for i, (_, arg, _) in enumerate(ops) if arg == marker)
    real = [i for i in range(start + 1, len(ops)) if "PUT" not in ops[i][0] and ops[i][0] != "MEMOIZE"]
    i = real[skip - 1]
    return pkl[:ops[i][2]] + new + pkl[ends[i]:]


def patch_first(pkl: bytes, names: tuple[str, ...], new: bytes) -> bytes:
    ops = pickle_ops(pkl)
    ends = [pos for _, _, pos in ops[1:]] + [len(pkl)]
    i = next(i for i, (name, _, _) in enumerate(ops) if name in names)
    return pkl[:ops[i][2]] + new + pkl[ends[i]:]


def unicode_op(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def os_system_pickle(marker: Path) -> bytes:
    """A pickle that would run `touch MARKER` if it were ever executed."""
    return b"\x80\x02cos\nsystem\n" + unicode_op(f"touch {marker}") + b"\x85R."


def replace_with(data: bytes) -> Callable[[bytes], bytes]:
    return lambda _: data


def pickle_crafts(marker: Path) -> dict[str, Callable[[bytes], bytes]]:
    """Transforms of the data.pkl entry into hostile pickles."""
    p = functools.partial
    return {
        "pickle-memo-get-0x28000000": p(patch_first, names=("BINGET", "LONG_BINGET"), new=b"j" + struct.pack("<I", 0x28000000)),
        "pickle-memo-put-0x28000000": p(patch_first, names=("BINPUT", "LONG_BINPUT"), new=b"r" + struct.pack("<I", 0x28000000)),
        "pickle-storage-2^20-elements": p(patch_after, marker="cpu", skip=1, new=b"J" + struct.pack("<i", 1 << 20)),
        "pickle-storage-2^62-elements": p(patch_after, marker="cpu", skip=1, new=b"\x8a\x08" + (1 << 62).to_bytes(8, "little")),
        "pickle-storage-negative-elements": p(patch_after, marker="cpu", skip=1, new=b"J" + struct.pack("<i", -4)),
        "pickle-storage-record-missing": p(patch_after, marker="storage", skip=2, new=unicode_op("999999")),
        "pickle-nested-600000": replace_with(fc.deep_nesting(600_000)),
        "pickle-string-4gib": replace_with(fc.huge_string_length()),
        "pickle-bytes8-2^62": replace_with(b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"x."),
        "pickle-long4-2gib": replace_with(b"\x80\x02\x8b" + struct.pack("<i", 0x7FFFFFFF) + b"."),
        "pickle-os-system": replace_with(os_system_pickle(marker)),
        "pickle-empty": replace_with(b""),
        "pickle-cut-in-half": lambda pkl: pkl[:len(pkl) // 2],
        "pickle-no-stop": lambda pkl: pkl[:-1],
        "pickle-an-int": replace_with(b"\x80\x02K\x01."),
    }


def marker_absent(marker: Path) -> Check:
    return lambda _: f"the pickle's os.system ran ({marker} exists)" if marker.exists() else None


class TensorView:
    """Pickles as torch._utils._rebuild_tensor_v2 over `base`'s storage with any offset, size and
    stride (stride-0 views, views past their storage)."""

    def __init__(self, base: torch.Tensor, offset: int, size: tuple, stride: tuple):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.storage = base.storage()
        self.offset, self.size, self.stride = offset, size, stride

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False,
                                                 collections.OrderedDict())


def tensor_views() -> dict[str, TensorView]:
    base = torch.zeros(4)
    return {"view-stride-0-4gib": TensorView(base, 0, (1 << 28, 4), (0, 1)),
            "view-offset-past-storage": TensorView(base, 1 << 40, (4,), (1,)),
            "view-size-2^62": TensorView(base, 0, (1 << 62,), (1,)),
            "view-negative-size": TensorView(base, 0, (-4,), (1,)),
            "view-negative-stride": TensorView(base, 3, (4,), (-1,))}


def json_rows_check(good: Path, bad: Optional[Path]) -> Check:
    """classify --format json: `good` classified, and `bad` (when given) reported as an error."""
    def check(o: Outcome) -> Optional[str]:
        rows = o.json_rows()
        if "top" not in rows.get(str(good), {}):
            return "the good image was not classified"
        if bad is not None and o.code != 0 and "error" not in rows.get(str(bad), {}):
            return "no error row for the bad input"
        return None
    return check


# ---- the probe: paths, shared fixtures, reference runs ------------------------------------------

class Probe:
    def __init__(self, args):
        self.attnkit = Path(args.attnkit).resolve()
        self.keep = bool(args.keep)
        self.root = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="attnkit-probe-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.timeout = args.timeout
        self.is_root = os.geteuid() == 0
        self.notes: list[str] = []

    def run(self, argv: list[str], wrap: tuple[str, ...] = (), term_after: Optional[float] = None) -> Outcome:
        return run_program([*wrap, str(self.attnkit), *argv], self.root, self.timeout, term_after)

    def reference(self, argv: list[str], what: str) -> Outcome:
        """A run the probe needs as a baseline; a failure is noted (its control case fails too)."""
        o = self.run(argv)
        if o.code != 0:
            self.notes.append(f"reference run for {what} failed (exit {o.code}): {o.first_line()}")
        return o

    def case_dir(self, cls: str, name: str) -> Path:
        d = self.root / cls / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def shared(self, name: str) -> Path:
        d = self.root / "shared"
        d.mkdir(exist_ok=True)
        return d / name

    def without_root_bypass(self) -> tuple[str, ...]:
        """As root, run without the capabilities that read any file regardless of permissions."""
        return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--") if self.is_root else ()

    @functools.cached_property
    def weights(self) -> Path:
        """The smallest bundled checkpoint (a resnet20), copied."""
        smallest = min((REPO / "weights").glob("*.attnkit"), key=lambda p: p.stat().st_size)
        return Path(shutil.copy(smallest, self.shared(smallest.name)))

    @functools.cached_property
    def sample(self) -> Path:
        return Path(shutil.copy(REPO / "weights/samples/0000-ankle-boot.png", self.shared("sample.png")))

    @functools.cached_property
    def good(self) -> Path:
        return Path(shutil.copy(REPO / "weights/samples/0001-pullover.png", self.shared("good.png")))

    @functools.cached_property
    def idx_files(self) -> dict[str, bytes]:
        """A tiny MNIST-style folder's files: 64 test and 128 training images of Fashion-MNIST."""
        def first(name: str, n: int) -> bytes:
            data = gzip.decompress((FASHION_MNIST / f"{name}.gz").read_bytes())
            header = 4 + 4 * data[3]
            item = math.prod(struct.unpack(f">{data[3]}I", data[4:header])[1:])
            return data[:4] + struct.pack(">I", n) + data[8:header] + data[header:header + n * item]
        return {T10K_IMAGES: first(T10K_IMAGES, 64), T10K_LABELS: first(T10K_LABELS, 64),
                TRAIN_IMAGES: first(TRAIN_IMAGES, 128), TRAIN_LABELS: first(TRAIN_LABELS, 128)}

    @functools.cached_property
    def tiny_idx(self) -> Path:
        folder = self.shared("idx")
        place_all(folder, self.idx_files)
        return folder

    @functools.cached_property
    def state_dict(self) -> dict[str, torch.Tensor]:
        import torchvision
        torch.manual_seed(SEED)
        return torchvision.models.resnet18().state_dict()

    @functools.cached_property
    def pth(self) -> bytes:
        return fc.save_bytes(self.state_dict)

    @functools.cached_property
    def pth_path(self) -> Path:
        path = self.shared("model.pth")
        path.write_bytes(self.pth)
        return path

    @functools.cached_property
    def imported(self) -> Path:
        """attnkit import of the unmodified .pth (the reference for bit flips that exit 0)."""
        out = self.shared("reference.attnkit")
        self.reference(import_argv(self.pth_path, out), "import")
        return out

    @functools.cached_property
    def imported_state(self) -> dict[str, torch.Tensor]:
        return load_state(self.imported)

    def video(self, kind: str, frames: int = 16) -> Path:
        """A short synthetic clip made by ffmpeg: mp4 (moov at the end), mp4-faststart or avi."""
        path = self.shared(f"clip-{frames}-{kind}.{'avi' if kind == 'avi' else 'mp4'}")
        if not shutil.which("ffmpeg"):
            raise SystemExit("probe_inputs: ffmpeg is needed to make the test videos (Debian package ffmpeg)")
        if not path.exists():
            codec = ["-c:v", "mjpeg", "-q:v", "5"] if kind == "avi" else ["-c:v", "mpeg4", "-pix_fmt", "yuv420p"]
            start = ["-movflags", "+faststart"] if kind == "mp4-faststart" else []
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=8",
                            "-frames:v", str(frames), *codec, *start, str(path)], check=True)
        return path


def load_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["state"]


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


# ---- argument lists -----------------------------------------------------------------------------

def classify_argv(weights: Path, *inputs) -> list[str]:
    return ["classify", "--weights", str(weights), "--device", "cpu", "--format", "json", *map(str, inputs)]


def import_argv(src: Path, out: Path, *extra: str) -> list[str]:
    return ["import", str(src), "--arch", "resnet18", "--out", str(out), *extra]


def eval_argv(weights: Path, data: Path, *extra: str) -> list[str]:
    return ["eval", "--weights", str(weights), "--data", str(data), "--device", "cpu", *extra]


TRAIN_QUICK = {"--epochs": "1", "--max-images": "32", "--val-size": "0", "--batch-size": "32", "--model": "resnet20",
               "--width": "0.25", "--device": "cpu", "--quiet": None}


def options_argv(options: dict[str, Optional[str]]) -> list[str]:
    """--name value pairs; None marks a flag, and a name without dashes a positional value."""
    argv = []
    for name, value in options.items():
        if not name.startswith("-"):
            argv.append(value)
        else:
            argv += [name] if value is None else [name, value]
    return argv


def train_argv(data: Path, out: Path, **changes: Optional[str]) -> list[str]:
    options = {**TRAIN_QUICK, "--data": str(data), "--out": str(out)}
    options.update({"--" + k.replace("_", "-"): v for k, v in changes.items()})
    return ["train", *options_argv(options)]


def stream_argv(weights: Path, source: Path, *extra: str) -> list[str]:
    return ["stream", "--source", str(source), "--no-display", "--weights", str(weights), "--device", "cpu", *extra]


# ---- class 1: checkpoints -----------------------------------------------------------------------

DELETE = object()  # an edit's value that removes the key


def set_path(tree: dict, path: tuple, value) -> None:
    """tree[path[0]]...[path[-1]] = value; DELETE removes the key."""
    for key in path[:-1]:
        tree = tree[key]
    if value is DELETE:
        del tree[path[-1]]
    else:
        tree[path[-1]] = value


PRE = ("config", "preprocessing")
MODEL = ("config", "model")
CHECKPOINT_EDITS = {  # name: {path: value}; the checksum is recomputed unless the edit sets it
    "config-stem-unknown": {MODEL + ("stem",): "weird"},
    "config-family-unknown": {MODEL + ("family",): "vit"},
    "config-shortcut-unknown": {MODEL + ("shortcut",): "Z"},
    "config-name-contradicts-fields": {MODEL + ("name",): "resnet50-cbam"},
    "config-depth-21": {MODEL + ("depth",): 21},
    "config-depth-6000002": {MODEL + ("depth",): 6_000_002},
    "config-width-1e6": {MODEL + ("width",): 1e6},
    "config-width-0": {MODEL + ("width",): 0},
    "config-width-nan": {MODEL + ("width",): float("nan")},
    "config-classes-0": {MODEL + ("num_classes",): 0},
    "config-classes-negative": {MODEL + ("num_classes",): -1},
    "config-classes-2^40": {MODEL + ("num_classes",): 1 << 40},
    "config-in-channels-0": {MODEL + ("in_channels",): 0},
    "config-in-channels-2^30": {MODEL + ("in_channels",): 1 << 30},
    "config-attention-unknown": {MODEL + ("attention",): ["nope"] * 3},
    "config-attention-5-stages": {MODEL + ("attention",): [""] * 5},
    "config-input-100000x100000": {PRE + ("input_height",): 100_000, PRE + ("input_width",): 100_000,
                                   PRE + ("resize_size",): 100_000},
    "config-input-0": {PRE + ("input_height",): 0},
    "config-input-negative": {PRE + ("input_height",): -28},
    "config-resize-size-2^40": {PRE + ("resize",): "shorter_side", PRE + ("resize_size",): 1 << 40, PRE + ("crop",): "center"},
    "config-mean-empty": {PRE + ("mean",): []},
    "config-std-zero": {PRE + ("std",): [0.0]},
    "config-color-unknown": {PRE + ("color_order",): "CMYK"},
    "config-pixel-scale-infinite": {PRE + ("pixel_scale",): float("inf")},
    "config-class-names-short": {("config", "class_names"): ["only one"]},
    "config-not-json": {("config",): "{"},
    "config-json-array": {("config",): "[]"},
    "format-unknown": {("format",): "nope"},
    "version-2": {("version",): 2},
    "checksum-wrong": {("checksum",): "0" * 16},
    "checksum-missing": {("checksum",): DELETE},
    "state-key-missing": {("state", "fc.bias"): DELETE},
    "state-key-extra": {("state", "extra.weight"): torch.zeros(3)},
    "state-shape-changed": {("state", "fc.bias"): torch.zeros(11)},
}


def edited_checkpoint(ck: dict, changes: dict) -> bytes:
    top = {**ck, "config": json.loads(ck["config"]), "state": dict(ck["state"])}
    for path, value in changes.items():
        set_path(top, path, value)
    if isinstance(top["config"], dict):
        top["config"] = json.dumps(top["config"], indent=1)
    if ("checksum",) not in changes:
        top["checksum"] = fc.checkpoint_checksum(top["config"], top["state"])
    return fc.save_bytes(top)


CaseMaker = Callable[..., Case]  # (name, content, expect=(1,), check=None, note="") -> Case


def damage_cases(data: bytes, cuts: list[int], flips: list[tuple[int, int]], make_case: CaseMaker,
                 same_result: Callable[[str], Callable[[Outcome], bool]]) -> list[Case]:
    """A case per cut (exit 1) and per bit flip (exit 1, or 0 where flip_check allows it);
    same_result(case name) tells whether that case's run gave the unmodified file's result."""
    cases = []
    for name, damage in damaged_copies(data, cuts, flips).items():
        if name.startswith("flip"):
            check = flip_check(damage.where, same_result(name))
            cases.append(make_case(name, damage.make, expect=(0, 1), check=check, note=damage.where))
        else:
            cases.append(make_case(name, damage.make, note=damage.where))
    return cases


def crafted_containers(data: bytes, marker: Path) -> dict[str, Callable[[], bytes]]:
    """The zip crafts and the hostile pickles put into the same archive."""
    crafts = zip_crafts(data)
    crafts.update({name: functools.partial(fc.rewrite_zip_entry, data, "data.pkl", change)
                   for name, change in pickle_crafts(marker).items()})
    return crafts


def checkpoint_contents(p: Probe, ck: dict) -> dict[str, tuple[Content, tuple[int, ...]]]:
    """name → (file content, acceptable exit codes) of the other crafted checkpoints."""
    contents: dict[str, tuple[Content, tuple[int, ...]]] = {
        "empty": (b"", (1,)), "not-a-zip": (b"not a checkpoint\n" * 64, (1,)),
        "png-named-attnkit": (p.sample.read_bytes(), (1,)), "directory": (DIRECTORY, (1, 2)),
        "fifo": (FIFO, (1, 2)), "symlink-loop": (SELF_LINK, (1, 2)), "dev-zero": (DEV_ZERO, (1, 2))}
    contents.update({name: (functools.partial(edited_checkpoint, ck, edit), (1,)) for name, edit in CHECKPOINT_EDITS.items()})
    contents.update({f"state-{name}": (functools.partial(edited_checkpoint, ck, {("state", "fc.bias"): view, ("checksum",): "0" * 16}), (1,))
                     for name, view in tensor_views().items()})
    return contents


def checkpoint_cases(p: Probe) -> list[Case]:
    data = p.weights.read_bytes()
    reference = p.reference(classify_argv(p.weights, p.sample), "the unmodified checkpoint").stdout
    marker = p.shared("checkpoint-pickle-ran")
    ck = torch.load(p.weights, weights_only=False)
    classified = json_rows_check(p.sample, None)

    def case(name: str, content: Content, expect=(1,), check=None, note="") -> Case:
        folder = p.case_dir("checkpoint", name)
        path = folder / "x.attnkit"
        return Case("checkpoint", name, classify_argv(path, p.sample), expect=expect, check=all_of(check, marker_absent(marker)),
                    prepare=functools.partial(place, path, content), note=note, folder=folder)

    cases = [Case("checkpoint", "valid-bundled", classify_argv(p.weights, p.sample), expect=(0,), check=classified),
             case("valid-resaved-by-python", functools.partial(edited_checkpoint, ck, {}), (0,), classified),
             case("valid-rezipped-by-python", functools.partial(fc.rewrite_zip_entry, data, "data.pkl", lambda b: b), (0,), classified)]
    cuts = cut_points(len(data), (1, 2, 4, 8, 22, 29, 30, 31, 64, 512, 4096), 24, (1, 2, 22, 46, 56, 100, 1000))
    same_as_reference = lambda o: o.stdout == reference  # noqa: E731
    cases += damage_cases(data, cuts, flip_positions(data, 80, random.Random(SEED)), case, lambda _: same_as_reference)
    cases += [case(name, make) for name, make in crafted_containers(data, marker).items()]
    cases += [case(name, content, expect) for name, (content, expect) in checkpoint_contents(p, ck).items()]
    return cases


# ---- class 2: import ----------------------------------------------------------------------------

def edit_safetensors(data: bytes, edit: Callable[[dict, bytes], bytes]) -> bytes:
    """The file with its JSON header changed by edit(header, blob), which returns the new blob."""
    n = struct.unpack_from("<Q", data)[0]
    header, blob = json.loads(data[8:8 + n]), data[8 + n:]
    blob = edit(header, blob)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + blob


def edit_entry(name: str, **changes) -> Callable[[dict, bytes], bytes]:
    """An edit for edit_safetensors: header[name][key] = value for each change (a callable value is
    given the header; DELETE removes the key)."""
    def edit(header: dict, blob: bytes) -> bytes:
        for key, value in changes.items():
            if value is DELETE:
                del header[name][key]
            else:
                header[name][key] = value(header) if callable(value) else value
        return blob
    return edit


def shift_all(header: dict, blob: bytes) -> bytes:
    """Every tensor's offsets 4 bytes later (each reads 4 bytes of its neighbour)."""
    for name, entry in header.items():
        if name != "__metadata__":
            entry["data_offsets"] = [o + 4 for o in entry["data_offsets"]]
    return blob + bytes(4)


def with_header_length(data: bytes, length: int) -> bytes:
    return struct.pack("<Q", length) + data[8:]


def garbled_header(data: bytes) -> bytes:
    n = struct.unpack_from("<Q", data)[0]
    return data[:8] + b"\xff" * n + data[8 + n:]


def safetensors_crafts(data: bytes) -> dict[str, Callable[[], bytes]]:
    p = functools.partial

    def edit(change: Callable[[dict, bytes], bytes]) -> Callable[[], bytes]:
        return p(edit_safetensors, data, change)
    return {
        "st-overlapping-offsets": edit(edit_entry("bn1.running_var", data_offsets=lambda h: h["bn1.running_mean"]["data_offsets"])),
        "st-shifted-offsets": edit(shift_all),
        "st-offsets-reversed": edit(edit_entry("fc.bias", data_offsets=lambda h: h["fc.bias"]["data_offsets"][::-1])),
        "st-offsets-past-end": edit(edit_entry("fc.bias", data_offsets=[0, 1 << 40])),
        "st-offsets-strings": edit(edit_entry("fc.bias", data_offsets=["0", "4000"])),
        "st-shape-999-for-1000": edit(edit_entry("fc.bias", shape=[999])),
        "st-shape-negative": edit(edit_entry("fc.bias", shape=[-1000])),
        "st-shape-overflow": edit(edit_entry("fc.bias", shape=[1 << 62, 1 << 62, 4])),
        "st-complex64-1000": edit(edit_entry("fc.bias", dtype="C64")),               # 8000 bytes wanted, 4000 there
        "st-complex64-500": edit(edit_entry("fc.bias", dtype="C64", shape=[500])),   # sizes agree: complex weights
        "st-dtype-unknown": edit(edit_entry("fc.bias", dtype="Q4")),
        "st-dtype-missing": edit(edit_entry("fc.bias", dtype=DELETE)),
        "st-header-length-2^64-1": p(with_header_length, data, (1 << 64) - 1),
        "st-header-length-past-end": p(with_header_length, data, len(data)),
        "st-header-length-0": p(with_header_length, data, 0),
        "st-header-not-json": p(garbled_header, data),
        "st-header-json-array": lambda: struct.pack("<Q", 2) + b"[]",
        "st-cut-in-half": p(cut, data, len(data) // 2),
        "st-empty": lambda: b"",
    }


def semantic_state_dicts(sd: dict[str, torch.Tensor]) -> dict[str, Callable[[], bytes]]:
    """Well-formed files whose meaning is wrong for --arch resnet18."""
    def saved(change: Callable[[dict], object]) -> Callable[[], bytes]:
        return lambda: fc.save_bytes(change(dict(sd)))
    return {
        "sd-matches-no-key": saved(lambda d: {"foo." + k: v for k, v in d.items()}),
        "sd-only-the-head": saved(lambda d: {k: v for k, v in d.items() if k.startswith("fc.")}),
        "sd-unexpected-key": saved(lambda d: {**d, "layer9.0.conv1.weight": torch.zeros(3)}),
        "sd-wrong-shape": saved(lambda d: {**d, "conv1.weight": torch.zeros(64, 3, 5, 5)}),
        "sd-complex-weights": saved(lambda d: {**d, "fc.weight": d["fc.weight"].to(torch.complex64)}),
        "sd-a-list": saved(lambda d: [1, 2, 3]),
        "sd-a-tensor": saved(lambda d: torch.zeros(3)),
        **{f"sd-{name}": saved(lambda d, v=view: {**d, "fc.bias": v}) for name, view in tensor_views().items()},
    }


def failed_import_left_nothing(out: Path, pre_existing: bool) -> Check:
    """After a failure: no --out file, or the previous one unchanged."""
    def check(o: Outcome) -> Optional[str]:
        if o.code == 0:
            return None
        if pre_existing and out.read_bytes() != PREVIOUS_OUTPUT:
            return "the previous --out file was changed"
        if not pre_existing and out.exists():
            return "a failed import left its --out file"
        return None
    return check


def import_cases(p: Probe) -> list[Case]:
    data, sd = p.pth, p.state_dict
    marker = p.shared("import-pickle-ran")
    reference = p.imported_state
    count = 0

    def out_of(name: str) -> Path:
        return p.root / "import" / name / "out.attnkit"

    def imported_as_reference(name: str) -> Check:
        return lambda o: None if o.code or same_state(load_state(out_of(name)), reference) else "the imported weights differ from the file's"

    def case(name: str, content: Content, expect=(1,), check=None, note="", filename="model.pth") -> Case:
        nonlocal count
        count += 1
        pre_existing = count % 5 == 0  # every fifth one over an existing --out, with --overwrite
        folder = p.case_dir("import", name)
        src, out = folder / filename, out_of(name)

        def prepare() -> None:
            place(src, content)
            if pre_existing:
                out.write_bytes(PREVIOUS_OUTPUT)
        return Case("import", name, import_argv(src, out, *(["--overwrite"] if pre_existing else [])), expect=expect,
                    check=all_of(check, failed_import_left_nothing(out, pre_existing), no_debris(folder), marker_absent(marker)),
                    prepare=prepare, note=note, folder=folder)

    safetensors = fc.safetensors_bytes(sd, metadata={"format": "pt"})
    valid = {"valid-pth": (data, "model.pth"), "valid-safetensors": (safetensors, "model.safetensors"),
             "valid-training-checkpoint": (lambda: fc.save_bytes({"epoch": 3, "state_dict": sd}), "model.pth")}
    cases = [case(name, content, (0,), imported_as_reference(name), filename=filename) for name, (content, filename) in valid.items()]
    cuts = cut_points(len(data), (1, 30, 64, 4096), 12, (1, 22, 56, 98, 4096))
    cases += damage_cases(data, cuts, flip_positions(data, 40, random.Random(SEED)), case,
                          lambda name: lambda o: imported_as_reference(name)(o) is None)
    cases += [case(name, make) for name, make in crafted_containers(data, marker).items()]
    cases += [case(name, make) for name, make in semantic_state_dicts(sd).items()]
    cases += [case(name, make, filename="model.safetensors") for name, make in safetensors_crafts(safetensors).items()]
    return cases


# ---- class 3: images ----------------------------------------------------------------------------

def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int, color_type: int = 2) -> bytes:
    """A PNG whose header claims width x height pixels, with a few rows of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(bytes(4096)))
            + png_chunk(b"IEND", b""))


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[:sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9:]


def bmp_claiming(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + info + bytes(64)


def pnm_claiming(width: int, height: int) -> bytes:
    return f"P6\n{width} {height}\n255\n".encode() + bytes(64)


def png_critical_ranges(png: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the IHDR and IDAT chunks (with their CRCs), where a flip must be caught."""
    ranges, pos = [], 8
    while pos + 8 <= len(png):
        length, kind = struct.unpack_from(">I4s", png, pos)
        if kind in (b"IHDR", b"IDAT"):
            ranges.append((pos, pos + 12 + length))
        pos += 12 + length
    return ranges


def test_pictures() -> tuple[bytes, bytes]:
    """A 96x96 RGB gradient as PNG and as JPEG (torchvision's encoders)."""
    import torchvision
    y, x = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    img = torch.stack([x * 2, y * 2, (x + y)]).to(torch.uint8)
    return (torchvision.io.encode_png(img).numpy().tobytes(), torchvision.io.encode_jpeg(img, quality=90).numpy().tobytes())


class ImageCase(NamedTuple):
    files: dict[str, Content]        # placed in the case's folder
    inputs: tuple[str, ...]          # classify's arguments before the good image; names are in the folder
    expect: tuple[int, ...] = (1,)
    bad: Optional[str] = None        # the input that must get an error row
    good_classified: bool = True     # the good image must still be classified
    guarded: bool = False            # run without root's permission bypass


def bad_file(name: str, content: Content, expect=(1,)) -> ImageCase:
    return ImageCase({name: content}, (name,), expect, bad=name)


def image_contents(png: bytes, jpeg: bytes, rng: random.Random) -> dict[str, ImageCase]:
    out: dict[str, ImageCase] = {}
    idat = png_critical_ranges(png)[-1]
    for n in sorted({8, 16, 33, 40, *(idat[0] + (idat[1] - idat[0]) * i // 5 for i in range(1, 5))}):
        out[f"png-cut-{n}"] = bad_file("x.png", png[:n])
    sos = jpeg.index(b"\xff\xda")
    for n in sorted({2, 20, 100, sos, *(sos + (len(jpeg) - sos) * i // 6 for i in range(1, 6))}):
        out[f"jpeg-cut-{n}"] = bad_file("x.jpg", jpeg[:n])
    for _ in range(10):
        a, b = rng.choice(png_critical_ranges(png))
        pos, bit = rng.randrange(a, b), rng.randrange(8)
        out[f"png-flip-{pos}-{bit}"] = bad_file("x.png", flip(png, pos, bit))
    for _ in range(16):  # JPEG has no checksum: a flip in the entropy-coded data may go unnoticed
        pos, bit = rng.randrange(2, len(jpeg) - 2), rng.randrange(8)
        out[f"jpeg-flip-{pos}-{bit}"] = bad_file("x.jpg", flip(jpeg, pos, bit), (0, 1))
    out.update({
        "empty-png": bad_file("x.png", b""), "text-named-png": bad_file("x.png", b"hello, not a picture\n" * 20),
        "directory-named-png": bad_file("x.png", DIRECTORY), "fifo-named-png": bad_file("x.png", FIFO),
        "symlink-loop-png": bad_file("x.png", SELF_LINK), "broken-symlink-png": bad_file("x.png", BROKEN_LINK),
        "dev-zero-named": bad_file("x.png", DEV_ZERO), "newline-in-name": bad_file("x\ny.png", b"text\n"),
        "png-claims-100000x100000": bad_file("x.png", png_claiming(100_000, 100_000)),
        "png-claims-30000x30000-rgb": bad_file("x.png", png_claiming(30_000, 30_000)),
        "png-claims-1x1000000000": bad_file("x.png", png_claiming(1, 1_000_000_000, 0)),
        "jpeg-claims-65000x65000": bad_file("x.jpg", jpeg_claiming(jpeg, 65_000, 65_000)),
        "jpeg-claims-30000x30000": bad_file("x.jpg", jpeg_claiming(jpeg, 30_000, 30_000)),
        "bmp-claims-30000x30000": bad_file("x.bmp", bmp_claiming(30_000, 30_000)),
        "ppm-claims-30000x30000": bad_file("x.ppm", pnm_claiming(30_000, 30_000)),
        "unreadable-file": bad_file("x.png", unreadable(png))._replace(guarded=True),
        "unreadable-folder": bad_file("locked", unreadable_folder(png))._replace(guarded=True),
        # FIFOs not named on the command line: matched by a glob, inside a folder, listed in --list
        "fifo-matched-by-glob": ImageCase({"a.png": FIFO}, ("*.png",), bad="a.png"),
        "fifo-in-folder": ImageCase({"a.png": FIFO, "b.png": png}, (".",), (0, 1)),
        "fifo-in-list-file": ImageCase({"a.png": FIFO, "list.txt": b"a.png\n"}, ("--list", "list.txt"), bad="a.png"),
        "list-file-is-fifo": ImageCase({"list.txt": FIFO}, ("--list", "list.txt"), (1, 2), good_classified=False),
    })
    return out


def image_cases(p: Probe) -> list[Case]:
    png, jpeg = test_pictures()

    def case(name: str, spec: ImageCase) -> Case:
        folder = p.case_dir("images", name)
        inputs = [a if a.startswith("--") else str(folder / a) for a in spec.inputs]
        check = json_rows_check(p.good, folder / spec.bad if spec.bad else None) if spec.good_classified else None
        return Case("images", name, classify_argv(p.weights, *inputs, p.good), expect=spec.expect, check=check,
                    prepare=functools.partial(place_all, folder, spec.files), folder=folder,
                    wrap=p.without_root_bypass() if spec.guarded else ())

    valid = {"valid-two-images": ImageCase({"x.png": p.sample.read_bytes()}, ("x.png",), (0,)),
             "valid-png": ImageCase({"x.png": png}, ("x.png",), (0,)), "valid-jpeg": ImageCase({"x.jpg": jpeg}, ("x.jpg",), (0,))}
    specs = {**valid, **image_contents(png, jpeg, random.Random(SEED))}
    return [case(name, spec) for name, spec in specs.items()]


# ---- class 4: IDX data --------------------------------------------------------------------------

def idx_header(type_code: int, *sizes: int) -> bytes:
    return bytes([0, 0, type_code, len(sizes)]) + b"".join(struct.pack(">I", s) for s in sizes)


BOMB_SIZE = 2 * GIB + (64 << 20)  # bytes a gzip bomb inflates to


def gzip_bomb(header: bytes, zeros: int) -> bytes:
    """gzip of `header` followed by `zeros` zero bytes, compressed in 16 MiB steps."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk, parts = bytes(16 << 20), [z.compress(header)]
    parts += [z.compress(chunk) for _ in range(zeros // len(chunk))]
    return b"".join(parts) + z.flush()


def with_byte(data: bytes, pos: int, value: int) -> bytes:
    return data[:pos] + bytes([value]) + data[pos + 1:]


def idx_damage(files: dict[str, bytes]) -> dict[str, dict[str, Content]]:
    """name → {file name: new content (None: absent)} of the damaged t10k (eval) files."""
    img, lbl = files[T10K_IMAGES], files[T10K_LABELS]
    labels = torch.frombuffer(bytearray(lbl[8:]), dtype=torch.uint8)
    images = torch.frombuffer(bytearray(img[16:]), dtype=torch.uint8).reshape(64, 28, 28)
    zipped = fc.gz(img)

    def images_as(content: Content, gz: bool = False) -> dict[str, Content]:
        return {T10K_IMAGES: None, T10K_IMAGES + ".gz": content} if gz else {T10K_IMAGES: content}
    damage = {f"images-cut-{n}": images_as(img[:n]) for n in (0, 1, 2, 3, 4, 7, 8, 15, 16, len(img) // 2, len(img) - 1)}
    damage.update({f"labels-cut-{n}": {T10K_LABELS: lbl[:n]} for n in (0, 4, 7, len(lbl) - 1)})
    damage.update({
        "images-too-long": images_as(img + b"\0"),
        "magic-first-byte": images_as(with_byte(img, 0, 1)), "magic-second-byte": images_as(with_byte(img, 1, 8)),
        "type-0x0a": images_as(with_byte(img, 2, 0x0A)), "type-0xff": images_as(with_byte(img, 2, 0xFF)),
        "dims-0": images_as(with_byte(img, 3, 0)), "dims-255": images_as(with_byte(img, 3, 255)),
        "dims-5": images_as(idx_header(8, 64, 1, 1, 28, 28) + img[16:]),
        "images-float32": images_as(fc.idx_bytes(images.float())),
        "images-1d": images_as(fc.idx_bytes(images.flatten())),
        "labels-2d": {T10K_LABELS: fc.idx_bytes(labels.reshape(64, 1))},
        "labels-63-for-64-images": {T10K_LABELS: fc.idx_bytes(labels[:63])},
        "label-10-of-10-classes": {T10K_LABELS: fc.idx_bytes(torch.where(labels == 3, 10, labels).to(torch.uint8))},
        "label-255": {T10K_LABELS: fc.idx_bytes(torch.full((64,), 255, dtype=torch.uint8))},
        "empty-set": {T10K_IMAGES: idx_header(8, 0, 28, 28), T10K_LABELS: idx_header(8, 0)},
        "count-wraps-to-0": images_as(idx_header(8, 65536, 65536, 65536, 65536)),
        "zero-size-huge-others": images_as(idx_header(8, 0, 0x01010000, 0xFE000000, 0x10000)),
        "claims-1e6-images-holds-1": images_as(idx_header(8, 1_000_000, 28, 28) + bytes(784)),
        "claims-2^64-bytes": images_as(idx_header(8, 0xFFFFFFFF, 0xFFFFFFFF, 28)),
        "gzip-bomb-header-1-byte": images_as(lambda: gzip_bomb(idx_header(8, 1, 1, 1), BOMB_SIZE), gz=True),
        "gzip-bomb-header-64-images": images_as(lambda: gzip_bomb(img[:16], BOMB_SIZE), gz=True),
        "gzip-cut-in-half": images_as(zipped[:len(zipped) // 2], gz=True),
        "gzip-crc-flipped": images_as(flip(zipped, len(zipped) - 8, 0), gz=True),
        "gzip-header-only": images_as(zipped[:10], gz=True),
        "gzip-garbage": images_as(b"\x1f\x8b" + random.Random(SEED).randbytes(4000), gz=True),
        "images-directory": images_as(DIRECTORY), "images-fifo": images_as(FIFO), "images-dev-zero": images_as(DEV_ZERO),
        "labels-missing": {T10K_LABELS: None},
    })
    return damage


def train_damage(files: dict[str, bytes]) -> dict[str, dict[str, Content]]:
    """The same kinds of damage to the training files, for a few train runs."""
    img, lbl = files[TRAIN_IMAGES], files[TRAIN_LABELS]
    return {
        "train-images-cut-in-half": {TRAIN_IMAGES: img[:len(img) // 2]},
        "train-labels-127-for-128": {TRAIN_LABELS: idx_header(8, 127) + lbl[8:-1]},
        "train-label-200": {TRAIN_LABELS: lbl[:8] + bytes([200]) * 128},
        "train-empty-set": {TRAIN_IMAGES: idx_header(8, 0, 28, 28), TRAIN_LABELS: idx_header(8, 0)},
        "train-gzip-bomb": {TRAIN_IMAGES: None, TRAIN_IMAGES + ".gz": lambda: gzip_bomb(img[:16], BOMB_SIZE)},
        "train-images-fifo": {TRAIN_IMAGES: FIFO},
    }


def idx_cases(p: Probe) -> list[Case]:
    def case(name: str, changes: dict[str, Content], train: bool, expect=(1,)) -> Case:
        folder = p.case_dir("idx", name)
        data = folder / "data"
        argv = train_argv(data, folder / "run") if train else eval_argv(p.weights, data)
        return Case("idx", name, argv, expect=expect, prepare=functools.partial(place_all, data, {**p.idx_files, **changes}),
                    folder=folder)

    gz = {T10K_IMAGES: None, T10K_LABELS: None, T10K_IMAGES + ".gz": fc.gz(p.idx_files[T10K_IMAGES]),
          T10K_LABELS + ".gz": fc.gz(p.idx_files[T10K_LABELS])}
    cases = [case("valid-eval", {}, False, (0,)), case("valid-eval-gzip", gz, False, (0,)), case("valid-train", {}, True, (0,))]
    cases += [case(name, changes, False) for name, changes in idx_damage(p.idx_files).items()]
    cases += [case(name, changes, True) for name, changes in train_damage(p.idx_files).items()]
    cases.append(Case("idx", "data-is-a-file", eval_argv(p.weights, p.weights), expect=(1, 2)))
    return cases


# ---- class 5: options ---------------------------------------------------------------------------

def option_bases(p: Probe, run: Path) -> dict[str, dict[str, Optional[str]]]:
    """Per command, options that make a run quick, so that a bad value accepted by mistake ends in
    a fast exit 0 (counted as wrong) instead of hours of training."""
    return {
        "train": {**TRAIN_QUICK, "--data": str(p.tiny_idx), "--out": str(run / "train")},
        "eval": {"--weights": str(p.weights), "--data": str(p.tiny_idx), "--device": "cpu"},
        "classify": {"--weights": str(p.weights), "--device": "cpu", "PATH": str(p.sample)},
        "bench": {"--op": "se", "--shape": "1,8,8,8", "--warmup": "0", "--iters": "1", "--device": "cpu"},
        "blocks": {"--channels": "8", "--size": "8", "--iters": "1"},
        "stream": {"--source": str(p.video("avi")), "--no-display": None, "--weights": str(p.weights), "--device": "cpu",
                   "--max-frames": "2"},
        "visualize": {"--weights": str(p.weights), "--device": "cpu", "--out": str(run / "vis"), "IMAGE": str(p.sample)},
        "import": {"FILE": str(p.pth_path), "--arch": "resnet18", "--out": str(run / "o.attnkit")},
    }


OPTION_CASES = [  # (command, the options under test); each must be refused with exit 2 and one line
    ("train", ["--label-smoothing", "nan"]), ("train", ["--label-smoothing", "inf"]), ("train", ["--label-smoothing", "-0.1"]),
    ("train", ["--label-smoothing", "1.5"]), ("train", ["--milestones=-5"]), ("train", ["--milestones", "0"]),
    ("train", ["--milestones", "nan"]), ("train", ["--schedule", "cosine", "--milestones", "1"]),
    ("train", ["--milestones", "1,x"]), ("train", ["--lr", "0"]), ("train", ["--lr=-1"]), ("train", ["--lr", "nan"]),
    ("train", ["--lr", "inf"]), ("train", ["--lr", "1e400"]), ("train", ["--epochs", "0"]), ("train", ["--epochs=-1"]),
    ("train", ["--epochs", "1e10"]), ("train", ["--batch-size", "0"]), ("train", ["--batch-size", "99999999999999999999"]),
    ("train", ["--width", "0"]), ("train", ["--width", "nan"]), ("train", ["--width", "1e9"]), ("train", ["--momentum", "nan"]),
    ("train", ["--weight-decay=-1"]), ("train", ["--warmup-epochs", "nan"]), ("train", ["--min-lr", "nan"]),
    ("train", ["--lr-gamma", "2"]), ("train", ["--erasing", "1.5"]), ("train", ["--crop-padding=-1"]), ("train", ["--seed", "abc"]),
    ("train", ["--val-size=-1"]), ("train", ["--max-images=-1"]), ("train", ["--stop-after", "nan"]), ("train", ["--threads=-1"]),
    ("train", ["--prefetch", "65"]), ("train", ["--image-size=-1"]), ("train", ["--channels", "2"]), ("train", ["--amp", "fp8"]),
    ("train", ["--optimizer", "adam"]), ("train", ["--weights-dtype", "int8"]), ("train", ["--format", "xml"]),
    ("train", ["--frobnicate"]), ("train", ["--epochs"]),
    ("eval", ["--batch-size", "0"]), ("eval", ["--threads=-1"]), ("eval", ["--split", "validation"]),
    ("eval", ["--precision", "fp8"]), ("eval", ["--format", "xml"]), ("eval", ["--weights", "/nonexistent.attnkit"]),
    ("eval", ["extra-positional"]),
    ("classify", ["--top-k", "0"]), ("classify", ["--top-k=-1"]), ("classify", ["--top-k", "nan"]),
    ("classify", ["--top-k", "99999999999999999999"]), ("classify", ["--batch-size", "0"]), ("classify", ["--batch-size", "5000"]),
    ("classify", ["--threads", "2000"]), ("classify", ["--format", "xml"]), ("classify", ["--format", "\udcff"]),
    ("classify", ["--precision", "int8"]), ("classify", ["--device", "tpu"]), ("classify", ["--frobnicate"]),
    ("classify", ["--top-k"]),
    ("bench", ["--iters=-1"]), ("bench", ["--iters", "0"]), ("bench", ["--iters", "nan"]), ("bench", ["--warmup=-1"]),
    ("bench", ["--batch", "0"]), ("bench", ["--shape", "1,2,3"]), ("bench", ["--shape", "0,0,0,0"]),
    ("bench", ["--shape=-1,8,8,8"]), ("bench", ["--op", "foo"]), ("bench", ["--threads", "0"]), ("bench", ["--dtype", "int8"]),
    ("blocks", ["--channels", "0"]), ("blocks", ["--channels=-1"]), ("blocks", ["--size", "0"]), ("blocks", ["--iters=-1"]),
    ("stream", ["--smooth", "1"]), ("stream", ["--smooth", "nan"]), ("stream", ["--alpha", "2"]), ("stream", ["--fps=-1"]),
    ("stream", ["--batch=-1"]), ("stream", ["--max-frames=-1"]), ("stream", ["--method", "foo"]),
    ("visualize", ["--alpha", "nan"]), ("visualize", ["--method", "foo"]), ("visualize", ["--colormap", "foo"]),
    ("visualize", ["--threads=-1"]),
]

OPTION_CASES_EXIT_1_OR_2 = [  # values only the library can judge (model names, shapes): exit 1 or 2
    ("train", ["--model", "resnet21"]), ("train", ["--model", "resnet50-[,,,self"]), ("train", ["--model", ""]),
    ("bench", ["--shape", "100000,100000,100000,100000"]), ("blocks", ["--channels", "1000000", "--size", "100000"]),
    ("import", ["--arch", "resnet999"]), ("import", ["--classes", "/nonexistent.txt"]), ("import", ["--layout", "nope"]),
    ("visualize", ["--query", "2,2"]), ("visualize", ["--layer", "layer99"]), ("stream", ["--layer", "layer99"]),
]

NO_BASE_CASES = [["frobnicate"], ["--frobnicate"], ["-x"], ["visualize"], ["import"], ["stream"], ["eval", "--weights"]]
# A command that needs arguments and got none prints its help (exit 2): the project's CLI style,
# so there the help is what must appear, not one line.
HELP_CASES = [["classify"]]


def prints_help(outcome: Outcome) -> Optional[str]:
    return None if "Usage:" in outcome.stdout + outcome.stderr else "no help printed"


def with_options(base: dict[str, Optional[str]], tokens: list[str]) -> list[str]:
    """The base options, less those the tokens set, then the tokens."""
    named = {t.split("=", 1)[0] for t in tokens if t.startswith("--")}
    return options_argv({k: v for k, v in base.items() if k not in named}) + tokens


def option_cases(p: Probe) -> list[Case]:
    def case(command: str, tokens: list[str], expect: tuple[int, ...]) -> Case:
        name = printable(f"{command} {' '.join(tokens)}".strip())
        folder = p.case_dir("options", re.sub(r"[^\w.=,+-]+", "_", name))
        return Case("options", name, [command, *with_options(option_bases(p, folder)[command], tokens)], expect=expect, folder=folder)

    cases = [case("blocks", [], (0,)), case("classify", ["--top-k", "3"], (0,))]  # valid controls
    cases += [case(command, tokens, (2,)) for command, tokens in OPTION_CASES]
    cases += [case(command, tokens, (1, 2)) for command, tokens in OPTION_CASES_EXIT_1_OR_2]
    cases += [Case("options", " ".join(argv), argv, expect=(2,)) for argv in NO_BASE_CASES]
    cases += [Case("options", " ".join(argv), argv, expect=(2,), one_line=False, check=prints_help) for argv in HELP_CASES]
    return cases


# ---- class 6: video -----------------------------------------------------------------------------

def video_contents(p: Probe) -> dict[str, tuple[str, Content]]:
    """name → (file name, content) of the damaged videos."""
    out: dict[str, tuple[str, Content]] = {}
    for kind, fractions, small in (("mp4", 4, (8, 40)), ("mp4-faststart", 5, ()), ("avi", 5, (100,))):
        data = p.video(kind).read_bytes()
        for n in cut_points(len(data), small, fractions, ()):  # no cut of the last byte: it holds no frame data
            out[f"{kind}-cut-{n}"] = (p.video(kind).name, data[:n])
    out.update({"text-named-mp4": ("x.mp4", b"this is not a video\n" * 50), "empty-mp4": ("x.mp4", b""),
                "fifo-named-mp4": ("x.mp4", FIFO), "dev-zero-named-mp4": ("x.mp4", DEV_ZERO),
                "directory-named-mp4": ("x.mp4", DIRECTORY)})
    return out


def video_cases(p: Probe) -> list[Case]:
    def case(name: str, filename: str, content: Content, expect=(1,), output: bool = False) -> Case:
        folder = p.case_dir("video", name)
        source = folder / filename
        extra = ["--output", str(folder / "o.avi")] if output else []
        return Case("video", name, stream_argv(p.weights, source, *extra), expect=expect,
                    prepare=functools.partial(place, source, content), check=no_debris(folder), folder=folder)

    cases = [case(f"valid-{kind}", p.video(kind).name, p.video(kind).read_bytes(), (0,)) for kind in ("mp4", "mp4-faststart", "avi")]
    cases.append(case("valid-with-output", "clip.avi", p.video("avi").read_bytes(), (0,), output=True))
    cases += [case(name, filename, content) for name, (filename, content) in video_contents(p).items()]
    avi = p.video("avi").read_bytes()
    cases.append(case("avi-cut-with-output", "clip.avi", avi[:len(avi) * 2 // 3], output=True))
    folder = p.case_dir("video", "output-folder-missing")
    cases.append(Case("video", "output-folder-missing", stream_argv(p.weights, p.video("avi"), "--output", str(folder / "no/such/o.avi")),
                      folder=folder))
    return cases


# ---- class 7: signals ---------------------------------------------------------------------------

def complete_outputs(folder: Path) -> Check:
    def check(_: Outcome) -> Optional[str]:
        torn = torn_files(folder)
        return f"torn files: {', '.join(torn)}" if torn else None
    return check


def signal_cases(p: Probe) -> list[Case]:
    """SIGTERM while training, importing and streaming: 143 (import and stream may finish first:
    0), nothing torn, nothing left over."""
    long_clip = p.video("avi", frames=2000)
    plans = [("train", (2.5, 3.5, 4.5, 6.0, 8.0, 10.0), (143,),
              lambda folder: train_argv(p.tiny_idx, folder / "run", epochs="1000", max_images="128")),
             ("import", (0.8, 1.6, 2.4, 3.2), (0, 143), lambda folder: import_argv(p.pth_path, folder / "out.attnkit")),
             ("stream", (2.0, 4.0, 6.0), (0, 143), lambda folder: stream_argv(p.weights, long_clip, "--output", str(folder / "o.avi")))]
    cases = []
    for command, delays, expect, argv in plans:
        for delay in delays:
            name = f"{command}-term-{delay:g}s"
            folder = p.case_dir("signals", name)
            cases.append(Case("signals", name, argv(folder), expect=expect, one_line=False, term_after=delay,
                              check=all_of(no_debris(folder), complete_outputs(folder)), folder=folder))
    return cases


# ---- class 8: full disk -------------------------------------------------------------------------

def mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True,
                   capture_output=True, text=True)


def unmount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], capture_output=True)


def fill_disk(folder: Path, leave: int) -> None:
    """Writes a filler file until the file system is full, then frees `leave` bytes of it."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for block in (bytes(1 << 20), bytes(4096), bytes(1)):
            with contextlib.suppress(OSError):
                while f.write(block) == len(block):
                    pass
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))


def tmpfs_works(p: Probe) -> bool:
    folder = p.shared("mount-test")
    try:
        mount_tmpfs(folder, "1m")
    except (subprocess.CalledProcessError, OSError) as e:
        p.notes.append(f"full-disk: skipped, cannot mount a tmpfs: {getattr(e, 'stderr', '') or e}".strip())
        return False
    unmount(folder)
    folder.rmdir()
    return True


@dataclasses.dataclass
class DiskCase:
    name: str
    size: str                            # of the tmpfs
    leave: int                           # bytes left free after filling
    argv: Callable[[Path], list[str]]    # the command, given the mounted folder
    previous: Callable[[Path], None]     # writes the good previous output(s) into the folder
    allow_new: bool = False              # complete new files are fine (a command writing several files)


def copy_into(source: Path, name: str) -> Callable[[Path], None]:
    return lambda disk: shutil.copy(source, disk / name)


def write_into(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda disk: (disk / name).write_bytes(data)


def disk_cases_table(p: Probe) -> list[DiskCase]:
    def train_argv_on(disk: Path, **changes: Optional[str]) -> list[str]:
        return train_argv(p.tiny_idx, disk / "run", epochs="3", max_images="64", **changes)

    def first_epoch(disk: Path) -> None:
        o = p.run(train_argv_on(disk, stop_after="1"))
        if o.code != 0:
            raise RuntimeError(f"the first epoch before the full disk failed: {o.first_line()}")
    return [
        DiskCase("import-out", "64m", 1 << 20, lambda d: import_argv(p.pth_path, d / "out.attnkit", "--overwrite"),
                 copy_into(p.imported, "out.attnkit")),
        DiskCase("classify-output", "1m", 0, lambda d: classify_argv(p.weights, p.good) + ["--output", str(d / "r.json"), "--overwrite"],
                 write_into("r.json", PREVIOUS_OUTPUT)),
        DiskCase("eval-png", "1m", 4096, lambda d: eval_argv(p.weights, p.tiny_idx, "--png", str(d / "confusion.png")),
                 copy_into(p.sample, "confusion.png")),
        DiskCase("stream-output-mp4", "4m", 8192, lambda d: stream_argv(p.weights, p.video("avi"), "--output", str(d / "o.mp4")),
                 copy_into(p.video("mp4"), "o.mp4")),
        DiskCase("stream-output-avi", "4m", 8192, lambda d: stream_argv(p.weights, p.video("avi"), "--output", str(d / "o.avi")),
                 copy_into(p.video("avi"), "o.avi")),
        DiskCase("train-resume", "64m", 65536, lambda d: train_argv_on(d, resume=None), first_epoch),
        DiskCase("visualize-out", "1m", 8192, lambda d: ["visualize", str(p.good), "--weights", str(p.weights), "--device", "cpu",
                                                         "--out", str(d / "vis")], lambda d: None, allow_new=True),
    ]


def full_disk_case(p: Probe, spec: DiskCase) -> Case:
    """The previous outputs must come out byte-identical, and no temporary file may stay."""
    folder = p.case_dir("full-disk", spec.name)
    disk = folder / "disk"
    before: dict[str, str] = {}

    def prepare() -> None:
        mount_tmpfs(disk, spec.size)
        spec.previous(disk)
        fill_disk(disk, spec.leave)
        before.update(snapshot(disk, skip=("filler",)))

    def check(_: Outcome) -> Optional[str]:
        return compare_snapshots(before, snapshot(disk, skip=("filler",)), spec.allow_new)

    return Case("full-disk", spec.name, spec.argv(disk), expect=(1,), one_line=False, prepare=prepare, check=check,
                cleanup=functools.partial(unmount, disk), folder=folder)


def full_disk_cases(p: Probe) -> list[Case]:
    if not tmpfs_works(p):
        return []
    return [full_disk_case(p, spec) for spec in disk_cases_table(p)]


BUILDERS: dict[str, Callable[[Probe], list[Case]]] = {
    "checkpoint": checkpoint_cases, "import": import_cases, "images": image_cases, "idx": idx_cases,
    "options": option_cases, "video": video_cases, "signals": signal_cases, "full-disk": full_disk_cases}


# ---- running everything and the report ----------------------------------------------------------

def run_case(p: Probe, case: Case) -> Result:
    o = None
    try:
        if case.prepare:
            case.prepare()
        o = p.run(case.argv, case.wrap, case.term_after)
        verdict, reason = judge(case, o, p.timeout)
    except Exception as e:  # the probe's own failure: reported, never counted as ok
        verdict, reason = "wrong", f"probe error: {e!r}"
    finally:
        if case.cleanup:
            case.cleanup()
        if case.folder and not p.keep:
            remove_tree(case.folder)
    return Result(case, verdict, reason, o)


def run_all(p: Probe, cases: list[Case], jobs: int) -> list[Result]:
    results: list[Optional[Result]] = [None] * len(cases)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_case, p, c): i for i, c in enumerate(cases)}
        for done, future in enumerate(as_completed(futures), 1):
            r = results[futures[future]] = future.result()
            if r.verdict != "ok" or done % 50 == 0:
                print(f"[{done}/{len(cases)}] {r.case.cls}/{r.case.name}: {r.verdict} {r.reason}", file=sys.stderr, flush=True)
    return results


def printable(text: str) -> str:
    """`text` with undecodable bytes (surrogate escapes) written as \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def command_text(p: Probe, case: Case) -> str:
    return printable(shlex.join([*case.wrap, str(p.attnkit), *case.argv]))


def print_report(p: Probe, results: list[Result], seconds: float) -> None:
    verdicts = ("ok", "crash", "hang", "wrong")
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in results:
        counts[r.case.cls][r.verdict] += 1
        counts["total"][r.verdict] += 1
    print(f"\n{'class':<12}{'tried':>7}" + "".join(f"{v:>7}" for v in verdicts))
    for cls in [c for c in CLASSES if c in counts] + ["total"]:
        print(f"{cls:<12}{sum(counts[cls].values()):>7}" + "".join(f"{counts[cls][v]:>7}" for v in verdicts))
    print(f"({seconds:.0f} s; inputs in {p.root}{'' if p.keep else ', removed'})")
    for r in (r for r in results if r.verdict != "ok"):
        o = r.outcome
        print(f"\n[{r.verdict}] {r.case.cls}/{r.case.name}: {r.reason}" + (f" [{r.case.note}]" if r.case.note else ""))
        print(f"  $ {command_text(p, r.case)}")
        if o:
            rss = "peak RSS unknown (killed)" if o.timed_out else f"{mib(o.peak_rss)} MiB peak RSS"
            print(f"  exit {o.code}, {rss}, {o.seconds:.1f} s; stderr: {o.first_line()!r}")
    for note in p.notes:
        print(f"note: {note}")


def write_json(path: Path, p: Probe, results: list[Result]) -> None:
    rows = [{"class": r.case.cls, "name": r.case.name, "verdict": r.verdict, "reason": r.reason, "note": r.case.note,
             "command": command_text(p, r.case), "expect": list(r.case.expect),
             **({"exit": r.outcome.code, "timed_out": r.outcome.timed_out, "seconds": round(r.outcome.seconds, 3),
                 "peak_rss_mib": None if r.outcome.timed_out else mib(r.outcome.peak_rss),
                 "stderr": r.outcome.stderr[-4000:]} if r.outcome else {})}
            for r in results]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"cases": rows, "notes": p.notes}, indent=1) + "\n")
    os.replace(tmp, path)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attnkit", default=str(REPO / "build/bin/attnkit"), help="the program (default: build/bin/attnkit)")
    ap.add_argument("--timeout", type=float, default=60, help="seconds per case before it is killed and counted as a hang")
    ap.add_argument("--only", help=f"comma-separated classes: {', '.join(CLASSES)}")
    ap.add_argument("--jobs", type=int, default=1, help="cases run at the same time")
    ap.add_argument("--keep", metavar="DIR", help="build the inputs in DIR and keep them")
    ap.add_argument("--full-disk", action="store_true", help="also run the full-disk cases (root: mounts tmpfs)")
    ap.add_argument("--json", type=Path, help="write the per-case results here")
    args = ap.parse_args(argv)
    asked = args.only.split(",") if args.only else [c for c in CLASSES if c != "full-disk" or args.full_disk]
    unknown = set(asked) - set(CLASSES)
    if unknown:
        ap.error(f"unknown class(es): {', '.join(sorted(unknown))}; classes: {', '.join(CLASSES)}")
    if "full-disk" in asked and not args.full_disk:
        ap.error("the full-disk class runs only with --full-disk (as root: it mounts a tmpfs)")
    args.classes = asked
    if args.jobs < 1 or args.timeout <= 0:
        ap.error("--jobs and --timeout must be positive")
    return args


def program_files(attnkit: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of the program and of the libraries beside it (build/lib), to tell whether it
    was rebuilt while the probe ran."""
    files = [attnkit, *sorted((attnkit.parent.parent / "lib").glob("*.so*"))]
    return {str(f): (f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()}


def main(argv=None) -> int:
    args = parse_args(argv)
    if not os.access(args.attnkit, os.X_OK):
        print(f"probe_inputs: no program at {args.attnkit} (build it first, or pass --attnkit)", file=sys.stderr)
        return 2
    p = Probe(args)
    program = program_files(p.attnkit)
    start = time.monotonic()
    try:
        cases = []
        for cls in args.classes:
            print(f"building the {cls} cases ...", file=sys.stderr, flush=True)
            cases += BUILDERS[cls](p)
        print(f"running {len(cases)} cases with {args.jobs} job(s), {args.timeout:g} s each at most", file=sys.stderr, flush=True)
        results = run_all(p, cases, args.jobs)
    finally:
        if not p.keep:
            remove_tree(p.root)
    if program_files(p.attnkit) != program:
        p.notes.append(f"{p.attnkit} or its libraries changed while the probe ran (rebuilt?): the results mix two "
                       "builds; run it again on a quiet build folder")
    print_report(p, results, time.monotonic() - start)
    if args.json:
        write_json(args.json, p, results)
    return 0 if all(r.verdict == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
