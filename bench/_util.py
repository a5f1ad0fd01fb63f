"""Shared bench helpers: thread pinning, machine description, timing (median of repeats), JSON output.

Import this module BEFORE numpy in a bench script and call `set_threads_env(n)` first: BLAS and OpenMP
read their thread counts from the environment when they load.
"""

from __future__ import annotations

import datetime as _dt
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


def time_round_robin(fns: dict, repeats: int = 11, min_sample_s: float = 0.03, pause_s: float = 0.02) -> dict:
    """Median wall time of one call for each of several callables, sampled in rotation.

    On a shared machine another process can take a core for a second or two; sampling every
    kernel in turn spreads such bursts over all of them (fair ratios), and the median over
    `repeats` samples drops them. Each sample times `inner` back-to-back calls (inner chosen so a
    sample lasts >= min_sample_s); `pause_s` between kernels lets the previous library's worker
    threads stop spinning before the next one starts.
    """
    inner = {}
    for name, fn in fns.items():  # warm up and calibrate
        fn()
        t0 = time.perf_counter()
        fn()
        inner[name] = max(1, int(min_sample_s / max(time.perf_counter() - t0, 1e-7)))
    samples: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(pause_s)
            n = inner[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
    out = {}
    for name, s in samples.items():
        s = sorted(s)
        out[name] = {"median_s": s[len(s) // 2], "min_s": s[0], "max_s": s[-1], "inner": inner[name], "repeats": repeats}
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


def time_adaptive(fn, min_repeats: int = 5, min_time_s: float = 3.0, warmup: int = 1, max_repeats: int = 2000) -> dict:
    """Median wall time of single calls of fn(): `warmup` untimed calls, then timed calls until at least
    min_repeats samples AND min_time_s seconds of samples (capped at max_repeats). For end-to-end calls
    that last milliseconds to seconds, where time_call's inner loop is not needed."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    total = 0.0
    while len(samples) < max_repeats and (len(samples) < min_repeats or total < min_time_s):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
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
