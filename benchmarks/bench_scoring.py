"""Region scoring: the fused native ``compare`` against the NumPy a user would write (normalize,
matmul, softmax, argpartition), in the same run.

    python benchmarks/bench_scoring.py [--regions 20000] [--images 1000] [--labels 1000] [--dim 512]
"""

from __future__ import annotations

import argparse
from dataclasses import astuple

import numpy as np
from _common import CUDA_HEADER, best_of, cuda_column, cuda_note, machine

from clipguard.scoring import compare


def check(got, want):
    """Assert ``got`` (a Comparison) equals ``want`` (numpy_compare's tuple or a Comparison's fields);
    the share of top-k labels that agree."""
    agree = float((got.region_labels == want[0]).mean())
    assert agree > 0.999, f"top-k labels agree on only {agree:.4%}"
    np.testing.assert_allclose(got.region_probs, want[1], atol=1e-4)
    np.testing.assert_allclose(got.image_probs, want[3], atol=1e-4)
    np.testing.assert_allclose(got.region_image_cos, want[4], atol=1e-4)
    return agree


def numpy_compare(region, image, index, text, scale, k):
    def normalize(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    t = normalize(text)
    out = []
    for e in (normalize(region), normalize(image)):
        z = scale * (e @ t.T)
        z -= z.max(1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(1, keepdims=True)
        top = np.argpartition(-z, k - 1, axis=1)[:, :k]
        p = np.take_along_axis(z, top, 1)
        order = np.argsort(-p, axis=1, kind="stable")
        out += [np.take_along_axis(top, order, 1), np.take_along_axis(p, order, 1)]
    r, i = normalize(region), normalize(image)
    cos = np.einsum("rd,rd->r", r, i[index])
    return (*out, cos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=20000)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    region = rng.standard_normal((args.regions, args.dim), dtype=np.float32)
    image = rng.standard_normal((args.images, args.dim), dtype=np.float32)
    text = rng.standard_normal((args.labels, args.dim), dtype=np.float32)
    index = rng.integers(0, args.images, args.regions)
    run = lambda backend: compare(region, image, index, text, 100.0, args.k, backend=backend)  # noqa: E731
    t_native, got = best_of(lambda: run("cpu"), args.repeat)
    t_numpy, want = best_of(lambda: numpy_compare(region, image, index, text, 100.0, args.k), args.repeat)
    agree = check(got, want)
    cpu_fields = astuple(got)
    cuda = cuda_column(lambda: run("cuda"), lambda out: check(out, cpu_fields), t_numpy, t_native, args.repeat)
    print(f"# compare R={args.regions} N={args.images} C={args.labels} D={args.dim} k={args.k}; {machine()}")
    print(cuda_note())
    print(f"{'native s':>9} {'numpy s':>8} {'ratio':>6} {'top-k agreement':>16}{CUDA_HEADER}")
    print(f"{t_native:9.3f} {t_numpy:8.3f} {t_numpy / t_native:6.1f} {agree:16.4%}{cuda}")


if __name__ == "__main__":
    main()
