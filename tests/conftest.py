"""Shared fixtures and hypothesis profiles.

Profiles (HYPOTHESIS_PROFILE=ci|dev|thorough, default ci): every profile has deadline=None because
the first call of a numba kernel compiles for seconds; `ci` keeps example counts bounded so the
suite stays well inside CI's time on a 2-core machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=25, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
SHARED = REPO.parent / "shared"
TASK_MODELS = SHARED / "models" / "minilm-l6-glue"
MINILM = REPO / "weights" / "all-MiniLM-L6-v2"
TASKS = ("SST-2", "CoLA", "MRPC", "STS-B", "RTE")


def pytest_configure(config):
    config.addinivalue_line("markers", "peers: needs torch/transformers")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    if not (MINILM / "model.safetensors").is_file():
        pytest.skip("all-MiniLM-L6-v2 not fetched: run `python weights/fetch.py`")
    return MINILM


@pytest.fixture(scope="session")
def task_models_dir() -> Path:
    if not TASK_MODELS.is_dir():
        pytest.skip(f"{TASK_MODELS} not present (the task checkpoints live in ../shared)")
    return TASK_MODELS


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present")
    return SHARED
