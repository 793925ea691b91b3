"""Shared helpers of the benchmark scripts: timing, the machine description, and the references
the tests also use (tests/reference.py)."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import reference  # noqa: E402,F401  (re-exported for the benchmarks)


def best_of(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    """Fastest wall time of `repeat` runs, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def machine() -> str:
    import clipguard

    cpu = platform.processor() or platform.machine()
    gpu = "no GPU" if not clipguard.HAS_CUDA else "CUDA GPU"
    return f"{os.cpu_count()} cores ({cpu}), {gpu}, clipguard {clipguard.__version__}"
