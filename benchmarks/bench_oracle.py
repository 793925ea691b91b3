"""Oracles: quality on the toy worlds (the figures of docs/oracle.md), and the native YOLOv8-seg
decode against a straightforward NumPy decode of the same layout, in the same run.

    python benchmarks/bench_oracle.py [--scenes 200] [--skip-quality] [--skip-decode]

Quality: held-out scenes (``split="test"``, seed 1000) and the same scenes with the default
BadNet patch (6x6 noise at 48/64 px, 16x16 at 224 px): mean best IoU per object, share of objects
and patches found at IoU >= 0.5, regions per image, milliseconds per image.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import CUDA_HEADER, best_of, cuda_column, cuda_note, machine

from clipguard.oracle import get_oracle, letterbox_params, measure_world
from clipguard.oracle.decode import decode_yolo_seg


def numpy_decode(preds, protos, image_hw, input_hw, score_thr, iou_thr, max_det):
    """The decode of clipguard.oracle.decode, written plainly in NumPy (per-image Python loops,
    one matrix product and one bilinear gather per detection)."""
    h, w = image_hw
    lb = letterbox_params(image_hw, input_hw)
    nm, ph, pw = protos.shape[1:]
    masks, boxes = [], []

    def taps(n, scale, pad, inp, grid):
        f = ((np.arange(n) + 0.5) * scale + pad) * (grid / inp) - 0.5
        i0 = np.floor(f)
        wt = f - i0
        low, high = i0 < 0, i0 >= grid - 1
        i0 = np.where(low, 0, np.where(high, grid - 1, i0)).astype(np.int64)
        return i0, np.minimum(i0 + 1, grid - 1), np.where(low | high, 0.0, wt)

    y0, y1, wy = taps(h, lb.scale_y, lb.pad_y, input_hw[0], ph)
    x0, x1, wx = taps(w, lb.scale_x, lb.pad_x, input_hw[1], pw)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    for b in range(preds.shape[0]):
        p = preds[b]
        score = p[4:preds.shape[1] - nm].max(0)
        cand = np.flatnonzero(score > score_thr)
        cand = cand[np.lexsort((cand, -score[cand]))]
        xyxy = np.stack([p[0] - p[2] / 2, p[1] - p[3] / 2, p[0] + p[2] / 2, p[1] + p[3] / 2], 1)
        kept: list[int] = []
        for a in cand:
            if len(kept) == max_det:
                break
            if kept:
                k = xyxy[kept]
                iw = np.clip(np.minimum(k[:, 2], xyxy[a, 2]) - np.maximum(k[:, 0], xyxy[a, 0]), 0, None)
                ih = np.clip(np.minimum(k[:, 3], xyxy[a, 3]) - np.maximum(k[:, 1], xyxy[a, 1]), 0, None)
                area = lambda z: np.clip(z[..., 2] - z[..., 0], 0, None) * np.clip(z[..., 3] - z[..., 1], 0, None)  # noqa: E731
                inter = iw * ih
                if (inter / np.maximum(area(k) + area(xyxy[a]) - inter, 1e-12) > iou_thr).any():
                    continue
            kept.append(a)
        for a in kept:
            box = np.array([(xyxy[a, 0] - lb.pad_x) / lb.scale_x, (xyxy[a, 1] - lb.pad_y) / lb.scale_y,
                            (xyxy[a, 2] - lb.pad_x) / lb.scale_x, (xyxy[a, 3] - lb.pad_y) / lb.scale_y])
            box = np.clip(box, 0, [w, h, w, h])
            grid = 1 / (1 + np.exp(-(p[preds.shape[1] - nm:, a] @ protos[b].reshape(nm, -1)))).reshape(ph, pw)
            top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x1] * wx
            bottom = grid[y1][:, x0] * (1 - wx) + grid[y1][:, x1] * wx
            prob = top * (1 - wy)[:, None] + bottom * wy[:, None]
            inside = (xs >= box[0]) & (xs < box[2]) & (ys >= box[1]) & (ys < box[3])
            masks.append(inside & (prob > 0.5))
            boxes.append(box)
    return np.array(boxes).reshape(-1, 4), np.array(masks).reshape(-1, h, w)


def fastsam_like_outputs(rng, batch, s, n_objects):
    """Random outputs shaped like FastSAM at input ``s``: ``A = 21 (s/32)^2`` anchors, 32
    prototypes at ``s/4``; ``n_objects`` clusters of confident, overlapping anchors."""
    a = 21 * (s // 32) ** 2
    preds = np.zeros((batch, 37, a), np.float32)
    preds[:, 0:2] = rng.uniform(0, s, (batch, 2, a))
    preds[:, 2:4] = rng.uniform(8, s / 3, (batch, 2, a))
    preds[:, 4] = rng.uniform(0, 0.3, (batch, a))
    preds[:, 5:] = rng.normal(0, 1, (batch, 32, a))
    for b in range(batch):
        centres = rng.uniform(s * 0.1, s * 0.9, (n_objects, 2))
        sizes = rng.uniform(s * 0.05, s * 0.4, (n_objects, 2))
        for c, z in zip(centres, sizes):
            idx = rng.choice(a, 20, replace=False)
            preds[b][0:2, idx] = (c + rng.normal(0, 2, (20, 2))).T
            preds[b][2:4, idx] = (z * rng.uniform(0.9, 1.1, (20, 2))).T
            preds[b, 4, idx] = rng.uniform(0.5, 0.95, 20)
    protos = rng.normal(0, 1, (batch, 32, s // 4, s // 4)).astype(np.float32)
    return preds, protos


def check_decode(dec, boxes, masks):
    """Assert the decode ``dec`` equals ``boxes``, ``masks``; the number of mask pixels that differ."""
    assert len(dec) == len(masks), (len(dec), len(masks))
    np.testing.assert_allclose(dec.boxes, boxes, atol=1e-3, rtol=1e-5)
    differ = int((dec.masks != masks).sum())
    # float32 vs float64: only pixels on a knife edge may differ
    assert differ <= 1e-5 * masks.size, f"{differ} mask pixels differ"
    return differ


def bench_decode(repeat: int) -> None:
    rng = np.random.default_rng(0)
    print(f"\n## Decode (YOLOv8-seg/FastSAM layout); {machine()}")
    print(cuda_note())
    print(f"{'input':>6} {'image':>9} {'batch':>5} {'dets':>5} {'native s':>9} {'numpy s':>8} {'ratio':>6} "
          f"{'pixels differing':>17}{CUDA_HEADER}")
    for s, image_hw, batch, objects in ((640, (480, 640), 2, 40), (1024, (768, 1024), 1, 60)):
        preds, protos = fastsam_like_outputs(rng, batch, s, objects)
        run = lambda backend: decode_yolo_seg(preds, protos, image_hw, score_threshold=0.4,  # noqa: E731
                                              iou_threshold=0.7, backend=backend)
        t_native, dec = best_of(lambda: run("cpu"), repeat)
        t_ref, (boxes, masks) = best_of(lambda: numpy_decode(preds, protos, image_hw, (s, s), 0.4, 0.7, 300), 1)
        differ = check_decode(dec, boxes, masks)
        cuda = cuda_column(lambda: run("cuda"), lambda out: check_decode(out, dec.boxes, dec.masks),
                           t_ref, t_native, repeat)
        print(f"{s:>6} {image_hw[0]:>4}x{image_hw[1]:<4} {batch:>5} {len(dec):>5} {t_native:9.4f} {t_ref:8.3f} "
              f"{t_ref / t_native:6.1f} {differ:>17}{cuda}")


def bench_quality(n: int) -> None:
    print(f"\n## Oracle quality on held-out toy scenes (n={n} per row); {machine()}")
    print("| oracle | world | size | objects | object IoU | objects found | trigger IoU | triggers found | regions/image | ms/image |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = [("classical", "shapes", None, None), ("classical", "fashion", None, None),
            ("toy", "shapes", None, None), ("toy", "fashion", None, None),
            ("classical", "shapes", 224, "badnet:target=circle,size=16"),
            ("classical", "fashion", 224, "badnet:target=t-shirt,size=16"),
            ("toy", "shapes", 224, "badnet:target=circle,size=16")]
    oracles = {}
    for spec, world, size, attack in rows:
        oracle = oracles.setdefault(spec, get_oracle(spec))
        m = n if size is None else max(20, n // 5)
        q = measure_world(oracle, world, m, attack=attack, size=size)
        px = size or {"shapes": 48, "fashion": 64}[world]
        print(f"| {spec} | {world} | {px} | {q.objects} | {q.object_iou:.3f} | {q.object_recall:.1%} | "
              f"{q.trigger_iou:.3f} | {q.trigger_recall:.1%} | {q.regions_per_image:.2f} | {q.ms_per_image:.1f} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args()
    if not args.skip_decode:
        bench_decode(args.repeat)
    if not args.skip_quality:
        bench_quality(args.scenes)


if __name__ == "__main__":
    main()
