"""Shared helpers of the benchmark scripts: timing, the machine description, the CUDA column, and
the references the tests also use (tests/reference.py)."""

from __future__ import annotations

import functools
import os
import platform
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import reference  # noqa: E402,F401  (re-exported for the benchmarks)

import clipguard  # noqa: E402


def best_of(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    """Fastest wall time of `repeat` runs, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def gpu() -> str:
    """The GPU's name (torch's, where torch sees one) and whether clipguard's CUDA backend is on."""
    name = None
    try:
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name()
    except Exception:  # no torch, or a broken one: fall back to clipguard's own report
        pass
    info = clipguard.build_info()
    if not info["cuda_available"]:
        return f"{name or 'no GPU'} (clipguard CUDA backend off)"
    rt = info["cuda_runtime_version"]
    return f"{name or str(info['cuda_devices']) + ' CUDA device(s)'}, CUDA runtime {rt // 1000}.{rt % 1000 // 10}"


@functools.cache
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} cores ({cpu}), {gpu()}, clipguard {clipguard.__version__}"


#: Header cells of the CUDA column (empty without CUDA): time, speed-up over the reference and
#: over the native CPU path.
CUDA_HEADER = f" {'cuda s':>9} {'x ref':>6} {'x cpu':>6}" if clipguard.HAS_CUDA else ""


def cuda_note() -> str:
    """What the CUDA column measures (two lines), or why it is skipped (one)."""
    if clipguard.HAS_CUDA:
        return ("# cuda: backend='cuda' via the public API (NumPy in and out, so the times include "
                "host<->device transfers), best of the repeats after one warm-up call, asserted equal to "
                "the native CPU result;\n# x ref, x cpu: its speed-up over the reference and over the "
                "native CPU path")
    return f"# CUDA column skipped: {clipguard.build_info()['cuda_reason']}"


def cuda_column(fn: Callable[[], object], check: Callable[[object], object], t_ref: float, t_cpu: float,
                repeat: int) -> str:
    """The CUDA cells of a row (empty without CUDA): ``fn`` (the call with ``backend="cuda"``) is
    run once to warm up, then timed best of ``repeat``; ``check`` asserts its result equals the
    native CPU result."""
    if not clipguard.HAS_CUDA:
        return ""
    fn()
    t, result = best_of(fn, repeat)
    check(result)
    return f" {t:9.4f} {t_ref / t:6.1f} {t_cpu / t:6.1f}"


def vit_b32_checkpoint(path: str | os.PathLike) -> str:
    """A ViT-B/32 open_clip checkpoint with random weights, saved as safetensors at ``path`` (the
    size and architecture of the models users scan; no download). Returns its model spec."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)  # the same random weights each run: the scan's path depends on them
    module = clipguard.models.open_clip_module().create_model("ViT-B-32", pretrained=None)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return f"open_clip:ViT-B-32:{path}"
