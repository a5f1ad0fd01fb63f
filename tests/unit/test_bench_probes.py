"""bench/bench_e2e.py's profile wraps npbert functions by name (PROBES); a rename in npbert/ would
break the profile section only when someone runs it. This keeps the names honest in CI."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_every_profile_probe_names_an_attribute():
    sys.path.insert(0, str(BENCH))
    try:
        bench_e2e = importlib.import_module("bench_e2e")
    finally:
        sys.path.remove(str(BENCH))
    missing = []
    for owner, attr, _phase in bench_e2e.PROBES:
        mod, _, cls = owner.partition(":")
        obj = importlib.import_module(mod)
        obj = getattr(obj, cls) if cls else obj
        if not callable(getattr(obj, attr, None)):
            missing.append(f"{owner}.{attr}")
    assert not missing, f"bench_e2e.PROBES names what npbert no longer has: {missing}"
