"""Fuzz every native entry point of ``clipguard._core`` with random, mostly hostile arguments.

    python tests/fuzz_native.py --calls 100000 [--seed 0]

Each call gets arguments built from a valid template and then mutated: wrong dtypes, wrong ranks,
non-contiguous and zero-stride views, empty and huge (broadcast, no memory) sizes, NaN/Inf,
indices out of range, non-arrays, huge or negative scalars. A call may succeed or raise
ValueError, TypeError or clipguard.ClipguardError; anything else (another exception, a crash, a
hang) is a failure. The test suite runs a few thousand calls (tests/test_fuzz.py); the full run
is recorded in docs/security.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

import numpy as np

from clipguard import ClipguardError, _core

ALLOWED = (ValueError, TypeError, ClipguardError)


def _mutate_array(a: np.ndarray, rng: np.random.Generator) -> Any:
    r = rng.integers(0, 16)
    if r == 0:
        return a.astype([np.float64, np.int8, np.int32, np.bool_, np.complex64, np.uint16][int(rng.integers(0, 6))])
    if r == 1:
        return a.reshape(-1) if a.ndim > 1 else a.reshape(1, *a.shape)
    if r == 2 and a.ndim >= 1 and a.shape[0] > 1:
        return a[::2]  # non-contiguous
    if r == 3 and a.ndim >= 2:
        return np.swapaxes(a, 0, 1)
    if r == 4:
        return a[:0]  # empty
    if r == 5 and a.size:
        b = a.astype(np.float32) if a.dtype.kind == "f" else a.copy()
        if b.dtype.kind == "f":
            b.reshape(-1)[rng.integers(0, b.size, max(1, b.size // 7))] = [np.nan, np.inf, -np.inf][int(rng.integers(0, 3))]
        else:
            b.reshape(-1)[rng.integers(0, b.size)] = np.iinfo(b.dtype).max if b.dtype.kind in "iu" else 1
        return b
    if r == 6 and a.ndim >= 1:  # a huge logical size without the memory (zero strides)
        shape = list(a.shape)
        shape[0] = [1 << 20, 1 << 31, 1 << 40][int(rng.integers(0, 3))]
        try:
            return np.broadcast_to(a[:1] if a.shape[0] else np.zeros((1, *a.shape[1:]), a.dtype), shape)
        except ValueError:
            return a
    if r == 7:
        return [None, "x", 3, [1, 2], object()][int(rng.integers(0, 5))]
    if r == 8 and a.dtype == np.int64 and a.size:
        return a - int(rng.integers(1, 1 << 20))  # negative / out-of-range indices
    if r == 9 and a.dtype in (np.int64, np.int32) and a.size:
        return a + int(rng.integers(1, 1 << 20))
    if r == 10:
        return np.asfortranarray(a)
    if r == 11 and a.ndim >= 1:
        return np.concatenate([a, a]) if a.size else a
    return a


def _scalar(v: Any, rng: np.random.Generator) -> Any:
    r = rng.integers(0, 10)
    if r == 0:
        return -abs(v) - 1 if isinstance(v, int) else float("nan")
    if r == 1:
        return [1 << 31, 1 << 40, 1 << 62][int(rng.integers(0, 3))] if isinstance(v, int) else float("inf")
    if r == 2:
        return 0
    if r == 3:
        return None
    return v


def _args_for(name: str, rng: np.random.Generator) -> tuple[Callable, list[Any]]:
    n, h, w = int(rng.integers(1, 4)) if rng.random() < 0.9 else 0, int(rng.integers(1, 40)), int(rng.integers(1, 40))
    r, d, c = int(rng.integers(0, 6)), int(rng.integers(1, 9)), int(rng.integers(1, 6))
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    masks = (rng.random((r, h, w)) > 0.5).astype(np.uint8)
    index = rng.integers(0, max(n, 1), r).astype(np.int64) if n else np.zeros(0, np.int64)
    r = len(index)
    masks = masks[:r]
    emb = lambda k: rng.standard_normal((k, d)).astype(np.float32)  # noqa: E731
    if name == "image_means":
        return _core.regions.image_means, [images]
    if name == "mask_boxes":
        return _core.regions.mask_boxes, [masks]
    if name == "render":
        xs, ys = np.sort(rng.integers(0, w + 1, (r, 2)), 1), np.sort(rng.integers(0, h + 1, (r, 2)), 1)
        boxes = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1).astype(np.int32)
        fill = rng.integers(0, 256, (r, 3)).astype(np.float32)
        args = [images, masks if rng.random() < 0.7 else None, boxes, index, fill, int(rng.integers(0, 3)),
                int(rng.integers(1, 33)), np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)]
        return _core.regions.render, args
    if name == "compare":
        return _core.scoring.compare, [emb(r), emb(n), index, emb(c), 30.0, int(rng.integers(1, c + 1))]
    if name == "trigger_scores":
        cand = rng.integers(0, c, n).astype(np.int64)
        return _core.scoring.trigger_scores, [emb(r), emb(r), emb(n), index, cand, emb(c), 30.0]
    if name == "label_anomaly":
        totals = rng.integers(0, 50, c).astype(np.int64)
        return _core.scoring.label_anomaly, [np.floor(totals * rng.random(c)), totals.astype(np.float64)]
    if name == "detect":
        k = int(rng.integers(0, 4))
        preds = rng.random((int(rng.integers(1, 3)), 4 + 1 + k, int(rng.integers(0, 50)))).astype(np.float32) * 64
        lb = np.array([1.0, 1.0, 0.0, 0.0], np.float32)
        return _core.decode.detect, [preds, k, 64, 64, lb, 0.25, 0.5, 20, 100]
    if name == "masks":
        k, m = int(rng.integers(1, 5)), int(rng.integers(0, 4))
        coeffs = rng.standard_normal((m, k)).astype(np.float32)
        protos = rng.standard_normal((1, k, 16, 16)).astype(np.float32)
        boxes = np.tile(np.array([[0, 0, 32, 32]], np.float32), (m, 1))
        return _core.decode.masks, [coeffs, protos, np.zeros(m, np.int64), boxes, 64, 64, 64, 64,
                                    np.array([1.0, 1.0, 0.0, 0.0], np.float32), 0.5]
    raise KeyError(name)


ENTRY_POINTS = ("image_means", "mask_boxes", "render", "compare", "trigger_scores", "label_anomaly", "detect", "masks")


def fuzz(calls: int, seed: int = 0) -> dict[str, Any]:
    """Run ``calls`` fuzzed calls; returns counts per entry point and outcome. Raises
    AssertionError with the reproducing seed on the first disallowed exception."""
    stats: dict[str, dict[str, int]] = {e: {"ok": 0, "rejected": 0} for e in ENTRY_POINTS}
    for i in range(calls):
        rng = np.random.default_rng([seed, i])
        name = ENTRY_POINTS[i % len(ENTRY_POINTS)]
        fn, args = _args_for(name, rng)
        if rng.random() < 0.85:
            j = int(rng.integers(0, len(args)))
            args[j] = _mutate_array(args[j], rng) if isinstance(args[j], np.ndarray) else _scalar(args[j], rng)
        try:
            fn(*args)
            stats[name]["ok"] += 1
        except ALLOWED:
            stats[name]["rejected"] += 1
        except BaseException as exc:  # noqa: BLE001 -- the point: nothing else may escape
            raise AssertionError(f"{name} (seed [{seed}, {i}]) raised {type(exc).__name__}: {exc}") from exc
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    stats = fuzz(args.calls, args.seed)
    for name, s in stats.items():
        print(f"{name:15} ok {s['ok']:7}  rejected {s['rejected']:7}")
    print(f"{args.calls} calls, 0 crashes, 0 disallowed exceptions, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
