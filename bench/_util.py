"""Shared bench helpers: thread pinning, machine description, timing (median of repeats), JSON output.

Import this module BEFORE numpy in a bench script and call `set_threads_env(n)` first: BLAS and OpenMP
read their thread counts from the environment when they load.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def set_threads_env(n: int) -> None:
    """Same thread count for every library: BLAS (NumPy), OpenMP (numba omp layer, torch), MKL."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def threads_from_argv(default: int = 2) -> int:
    """Peek at --threads before argparse runs (the environment must be set before numpy loads)."""
    argv = sys.argv[1:]
    for i, tok in enumerate(argv):
        if tok == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if tok.startswith("--threads="):
            return int(tok.split("=", 1)[1])
    return default


def machine_info() -> dict:
    """CPU model, core count, SIMD flags that matter for int8 GEMM, OS, Python and library versions."""
    info: dict = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    fields = dict(re.findall(r"^([^:\n]+):\s*(.*)$", out, flags=re.M))
    flags = set(fields.get("Flags", "").split())
    info["cpu_model"] = fields.get("Model name", platform.processor())
    info["cpus"] = int(fields.get("CPU(s)", os.cpu_count() or 0))
    info["cores_per_socket"] = fields.get("Core(s) per socket")
    info["threads_per_core"] = fields.get("Thread(s) per core")
    info["l2_cache"] = fields.get("L2 cache")
    info["l3_cache"] = fields.get("L3 cache")
    info["flags"] = {
        "avx2": "avx2" in flags,
        "fma": "fma" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
    }
    info["hypervisor"] = fields.get("Hypervisor vendor")
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def versions(*extra: str) -> dict:
    """Versions of numpy/numba/llvmlite and of any importable extra module."""
    out = {}
    for name in ("numpy", "numba", "llvmlite", *extra):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception:  # noqa: BLE001 - a missing peer is recorded, not fatal
            out[name] = None
    return out


def time_call(fn, repeats: int = 7, min_sample_s: float = 0.05, warmup: int = 1) -> dict:
    """Median wall time of one call of fn().

    Each of `repeats` samples times `inner` back-to-back calls (inner chosen so a sample lasts at least
    min_sample_s) and divides; the median over samples resists the noise of a shared machine.
    """
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_sample_s / one))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    samples.sort()
    return {"median_s": samples[len(samples) // 2], "min_s": samples[0], "max_s": samples[-1], "inner": inner, "repeats": repeats}


def _cpu_clock() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine incl. hypervisor steal, CPU seconds of this process)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
    except (OSError, ValueError):
        busy = float("nan")
    t = os.times()
    return busy, t.user + t.system


def time_round_robin(
    fns: dict,
    repeats: int = 11,
    min_sample_s: float = 0.1,
    pause_s: float = 0.15,
    other_cpu_tol_s: float = 0.02,
    max_retries: int = 4,
) -> dict:
    """Median wall time of one call for each of several callables, sampled in rotation.

    Noise control on a shared machine:
    - rotation: the kernels of one shape are sampled in turn, so a burst of load hits all of them;
    - contamination check: around every sample, the CPU time used by OTHER processes (machine busy
      time from /proc/stat, incl. hypervisor steal, minus this process' own CPU time) is measured;
      a sample during which others used more than other_cpu_tol_s is retaken (up to max_retries,
      with a pause), and the count of retakes is reported;
    - median over `repeats` clean samples; each sample times `inner` back-to-back calls (inner
      chosen so a sample lasts >= min_sample_s, well above the 10 ms clock tick of /proc/stat).
    `pause_s` before each sample lets the previous library's worker threads stop spinning
    (OpenBLAS' idle workers busy-wait for about 2^28 cycles, ~0.1 s here; OpenMP and ORT pools
    spin for less).
    """
    inner = {}
    for name, fn in fns.items():  # warm up and calibrate
        fn()
        t0 = time.perf_counter()
        fn()
        inner[name] = max(1, int(min_sample_s / max(time.perf_counter() - t0, 1e-7)))
    samples: dict = {name: [] for name in fns}
    retakes = dict.fromkeys(fns, 0)
    dirty = dict.fromkeys(fns, 0)
    for _ in range(repeats):
        for name, fn in fns.items():
            n = inner[name]
            for attempt in range(max_retries + 1):
                time.sleep(pause_s if attempt == 0 else 3 * pause_s)
                b0, s0 = _cpu_clock()
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                dt = (time.perf_counter() - t0) / n
                b1, s1 = _cpu_clock()
                others = (b1 - b0) - (s1 - s0)
                if not others > other_cpu_tol_s:  # clean (or /proc/stat unreadable: nan)
                    break
                retakes[name] += 1
            else:
                dirty[name] += 1  # kept, but counted: the machine never went quiet
            samples[name].append(dt)
    out = {}
    for name, s in samples.items():
        s = sorted(s)
        out[name] = {
            "median_s": s[len(s) // 2], "min_s": s[0], "max_s": s[-1], "inner": inner[name], "repeats": repeats,
            "retaken_samples": retakes[name], "contaminated_samples_kept": dirty[name],
        }
    return out


def loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def write_json(path: Path, payload: dict) -> Path:
    """payload + command line + date, written pretty-printed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **payload,
    }
    path.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    return path


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)


# ------------------------------------------------------------------ additions for bench_e2e.py


def time_adaptive(fn, min_repeats: int = 5, min_time_s: float = 3.0, warmup: int = 1, max_repeats: int = 2000,
                  other_cpu_tol_s: float = 0.02, other_cpu_tol_frac: float = 0.02, max_retakes: int = 20,
                  retake_pause_s: float = 0.5) -> dict:
    """Median wall time of single calls of fn(): `warmup` untimed calls, then timed calls until at least
    min_repeats clean samples AND min_time_s seconds of clean samples (capped at max_repeats). For
    end-to-end calls that last milliseconds to seconds, where time_call's inner loop is not needed.

    Contamination check as in time_round_robin: a sample during which OTHER processes used more than
    other_cpu_tol_s + other_cpu_tol_frac * sample seconds of CPU (machine busy time from /proc/stat minus
    this process' CPU time) is dropped and retaken after a pause, at most max_retakes times in all; after
    that, contaminated samples are kept and counted."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    total = 0.0
    retaken = kept_dirty = 0
    others_total = 0.0
    while len(samples) < max_repeats and (len(samples) < min_repeats or total < min_time_s):
        b0, c0 = _cpu_clock()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        b1, c1 = _cpu_clock()
        others = (b1 - b0) - (c1 - c0)
        if others > other_cpu_tol_s + other_cpu_tol_frac * dt:  # nan (no /proc/stat) compares False: kept
            if retaken < max_retakes:
                retaken += 1
                time.sleep(retake_pause_s)
                continue
            kept_dirty += 1
        if others == others:
            others_total += max(others, 0.0)
        samples.append(dt)
        total += dt
    s = sorted(samples)
    n = len(s)
    return {
        "median_s": s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2]),
        "min_s": s[0],
        "max_s": s[-1],
        "p25_s": s[n // 4],
        "p75_s": s[(3 * n) // 4 if n > 1 else 0],
        "repeats": n,
        "warmup": warmup,
        "retaken_samples": retaken,
        "contaminated_samples_kept": kept_dirty,
        "other_processes_cpu_s": others_total,
        "other_processes_cpu_per_s": others_total / total if total > 0 else None,  # 1.0 = one other busy CPU
    }


def rss_bytes() -> int | None:
    """Current resident set size of this process (Linux /proc), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """ru_maxrss of this process in bytes (Linux reports KiB, macOS bytes)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def write_text(path: Path, text: str) -> Path:
    """Write a text file (e.g. a Markdown table next to its JSON), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def git_state() -> dict:
    """HEAD and any uncommitted changes under npbert/: the numbers belong to the working tree that ran."""
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=False).stdout.rstrip("\n")
        except OSError:
            return ""

    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", "npbert").splitlines() if ln.strip()]
    h = hashlib.sha256()
    for f in sorted((REPO / "npbert").rglob("*.py")):
        h.update(f.read_bytes())
    return {"head": git("rev-parse", "HEAD"), "npbert_uncommitted": dirty, "npbert_sources_sha256": h.hexdigest()}
