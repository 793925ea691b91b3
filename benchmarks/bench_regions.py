"""Region rendering: the native batched kernel against the per-region Python loop a user would
write (OpenCV crop/pad/resize per region, NumPy normalization), in the same run.

    python benchmarks/bench_regions.py [--scenes 256] [--regions 2000] [--size 224]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import CUDA_HEADER, best_of, cuda_column, cuda_note, machine, reference

from clipguard.regions import CLIP_MEAN, CLIP_STD, render


def make_masks(rng, n_regions, n_images, side):
    import cv2

    masks = np.zeros((n_regions, side, side), np.uint8)
    for r in range(n_regions):
        centre = tuple(int(v) for v in rng.integers(side // 8, side - side // 8, 2))
        axes = tuple(int(v) for v in rng.integers(side // 16, side // 3, 2))
        cv2.ellipse(masks[r], centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return masks.astype(bool), rng.integers(0, n_images, n_regions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=256)
    parser.add_argument("--regions", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.scenes, 224, 224, 3), dtype=np.uint8)
    masks, index = make_masks(rng, args.regions, args.scenes, 224)
    print(f"# {args.regions} regions of {args.scenes} scenes 224x224 -> {args.size}x{args.size}; {machine()}")
    print(cuda_note())
    print(f"{'mode':<8} {'native s':>9} {'loop s':>8} {'ratio':>6} {'max |diff| /255':>16}{CUDA_HEADER}")

    def max_diff(a, b):  # in /255 of the image, before normalization
        return float((np.abs(a - b) * np.float32(CLIP_STD)[None, :, None, None] * 255).max())

    for mode in ("crop", "isolate", "occlude"):
        run = lambda backend: render(images, masks, index, mode, args.size, fill="mean", backend=backend)  # noqa: E731
        t_native, fast = best_of(lambda: run("cpu"), args.repeat)
        t_loop, slow = best_of(
            lambda: reference.render(images, masks, index, mode, args.size, CLIP_MEAN, CLIP_STD, "mean"), 1
        )
        diff = max_diff(fast, slow)
        assert diff < 0.01, f"{mode}: native and reference differ by {diff}/255"

        def check(out):
            assert (d := max_diff(out, fast)) < 0.01, f"{mode}: cuda and native cpu differ by {d}/255"

        cuda = cuda_column(lambda: run("cuda"), check, t_loop, t_native, args.repeat)
        print(f"{mode:<8} {t_native:9.3f} {t_loop:8.3f} {t_loop / t_native:6.1f} {diff:16.5f}{cuda}")


if __name__ == "__main__":
    main()
