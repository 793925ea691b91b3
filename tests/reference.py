"""Straightforward NumPy/OpenCV versions of the native kernels: the references the tests and
benchmarks check against (the per-region Python loop a user would write)."""

from __future__ import annotations

import numpy as np


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def render_one(image, mask, mode, size, mean, std, fill):
    """One region view with OpenCV: fill, pad to a centred square, cv2.resize INTER_LINEAR."""
    import cv2

    fill = np.asarray(fill, dtype=np.float32)
    img = image.astype(np.float32)
    if mode == "crop":
        x0, y0, x1, y1 = tight_box(mask)
        if x1 == x0:
            canvas = np.broadcast_to(fill, (size, size, 3)).astype(np.float32)
        else:
            crop = img[y0:y1, x0:x1].copy()
            crop[~mask[y0:y1, x0:x1]] = fill
            h, w = y1 - y0, x1 - x0
            side = max(h, w)
            canvas = np.empty((side, side, 3), np.float32)
            canvas[:] = fill
            top, left = (side - h) // 2, (side - w) // 2
            canvas[top : top + h, left : left + w] = crop
    else:
        canvas = img.copy()
        if mode == "isolate":
            canvas[~mask] = fill
        else:
            canvas[mask] = fill
    if canvas.shape[:2] != (size, size):
        canvas = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_LINEAR)
    out = (canvas / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return out.transpose(2, 0, 1).astype(np.float32)


def render(images, masks, image_index, mode, size, mean, std, fill):
    out = np.empty((len(masks), 3, size, size), np.float32)
    for r, (mask, i) in enumerate(zip(masks, image_index)):
        f = images[i].reshape(-1, 3).mean(0) if isinstance(fill, str) else fill
        out[r] = render_one(images[i], mask.astype(bool), mode, size, mean, std, f)
    return out


def normalize(x):
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def probabilities(emb, text_emb, scale):
    """softmax(scale * cos) over all labels, float64 [rows, C]."""
    z = scale * normalize(emb) @ normalize(text_emb).T
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(1, keepdims=True)


def compare(region_emb, image_emb, image_index, text_emb, scale, k):
    def topk(e):
        p = probabilities(e, text_emb, scale)
        idx = np.argsort(-p, axis=1, kind="stable")[:, :k]
        return idx, np.take_along_axis(p, idx, 1)

    rl, rp = topk(region_emb)
    il, ip = topk(image_emb)
    cos = (normalize(region_emb) * normalize(image_emb)[image_index]).sum(1)
    return rl, rp, il, ip, cos


def label_anomaly(counts, totals):
    counts = np.asarray(counts, np.float64)
    totals = np.asarray(totals, np.float64)
    seen = totals > 0
    rates = counts[seen] / totals[seen]
    if rates.size == 0:
        return np.zeros_like(counts)
    med = np.median(rates)
    spread = 1.4826 * np.median(np.abs(rates - med))
    if spread == 0:
        spread = 1.2533 * np.mean(np.abs(rates - med))
    out = np.zeros_like(counts)
    if spread > 0:
        out[seen] = (rates - med) / spread
    return out


def trigger_scores(occ, iso, image, image_index, candidate, text, scale):
    """Per region: p_image, p_occluded, p_isolated, occluded_top1, isolated_top1, score."""
    rows = np.arange(len(occ))
    label = np.asarray(candidate)[image_index]
    has = label >= 0
    lab = np.maximum(label, 0)
    po_all, pi_all = probabilities(occ, text, scale), probabilities(iso, text, scale)
    p_img = probabilities(image, text, scale)[image_index, lab]
    p_occ, p_iso = po_all[rows, lab], pi_all[rows, lab]
    drop = np.maximum(0, p_img - p_occ) / np.maximum(p_img, 1e-6)
    score = drop * (0.5 + 0.5 * p_iso)
    nan = np.where(has, 1.0, np.nan)
    return (p_img * nan, p_occ * nan, p_iso * nan, np.where(has, po_all.argmax(1), -1),
            np.where(has, pi_all.argmax(1), -1), np.where(has, score, 0.0))
