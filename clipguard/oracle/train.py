"""Train the toy segmentation oracle and export it to ONNX in the YOLOv8-seg layout.

    python -m clipguard.oracle.train --out clipguard/oracle/models/toy_seg.onnx

A small anchor-free instance-segmentation network (YOLOv8-seg / YOLACT style, 0.34M
parameters) learns class-agnostic instances on both toy worlds: shapes at 48 px and 64 px,
fashion at 64 px, half of the scenes carrying a BadNet-style patch (noise, checkerboard or
solid; 4-10 px; anywhere), which is an instance of its own (objects lose the pixels it covers);
5% of the scenes are a bare background texture or one flat colour (no objects).
The noise patterns of ``pattern_seed`` 0 (the default BadNet trigger) are left out of training,
so the measured trigger recall is on a pattern the network never saw.

Model: input ``images [B,3,64,64]`` (letterboxed RGB in [0, 1]); anchors at stride 4 (a 16x16
grid, ``A = 256``); ``output0 [B, 4 + 1 + 32, 256]`` (box cx, cy, w, h in input pixels, objectness,
32 mask coefficients); ``output1 [B, 32, 32, 32]`` prototypes at stride 2 (finer than YOLOv8's
stride 4, since the toy images are small). Training: an anchor is positive for the instance whose
mask holds its centre (or, for an instance holding no centre, the anchor nearest its centroid);
the objectness target is the IoU of the predicted box (quality-aware, so NMS keeps the best box);
GIoU box loss; per-instance BCE mask loss inside the box (plus a margin). Deterministic in
``--seed`` on one thread.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .base import require

__all__ = ["INPUT_SIZE", "build_dataset", "export", "main", "train"]

INPUT_SIZE = 64
STRIDE = 4
PROTO_STRIDE = 2
NUM_MASKS = 32
GRID = INPUT_SIZE // STRIDE
MAX_INSTANCES = 4  # 3 objects and a patch
EMPTY_SHARE = 0.05  # scenes replaced by a bare background or a flat colour


# ------------------------------------------------------------------------------------------
# Data: letterboxed scenes, instance masks at prototype resolution, anchor assignment
# ------------------------------------------------------------------------------------------


def _random_patches(rng: np.random.Generator, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stamp a BadNet-style patch on every image: (images, boxes [N,4])."""
    from ..attacks import BadNet

    out = images.copy()
    n, h, w = images.shape[:3]
    scale = h / 48.0
    boxes = np.zeros((n, 4), np.int64)
    for i in range(n):
        s = int(round(rng.integers(4, 11) * scale))
        kind = rng.choice(["noise", "noise", "checkerboard", "solid"])
        if kind == "noise":
            pattern = BadNet(target="x", size=s, pattern="noise", pattern_seed=int(rng.integers(1, 10**6)))
        elif kind == "checkerboard":
            pattern = BadNet(target="x", size=s, pattern="checkerboard")
        else:
            color = "#{:02x}{:02x}{:02x}".format(*rng.integers(0, 256, 3))
            pattern = BadNet(target="x", size=s, pattern="solid", color=color)
        x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        out[i, y0:y0 + s, x0:x0 + s] = pattern.pattern_image()
        boxes[i] = (x0, y0, x0 + s, y0 + s)
    return out, boxes


def _letterbox_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """bool [k,H,W] -> float32 [k,size,size] coverage on the letterboxed input grid (area
    interpolation), padding 0."""
    import cv2

    from .decode import letterbox_params

    k, h, w = masks.shape
    lb = letterbox_params((h, w), (INPUT_SIZE, INPUT_SIZE))
    nh, nw = int(round(h * lb.scale_y)), int(round(w * lb.scale_x))
    top, left = int(lb.pad_y), int(lb.pad_x)
    full = np.zeros((k, INPUT_SIZE, INPUT_SIZE), np.float32)
    for j in range(k):
        full[j, top:top + nh, left:left + nw] = cv2.resize(masks[j].astype(np.float32), (nw, nh),
                                                           interpolation=cv2.INTER_LINEAR)
    if size == INPUT_SIZE:
        return full
    return np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_AREA) for m in full]) if k else \
        np.zeros((0, size, size), np.float32)


def build_dataset(n_per_part: int, seed: int) -> dict[str, np.ndarray]:
    """Training tensors from three parts (shapes 48 px, shapes 64 px, fashion 64 px) of
    ``n_per_part`` scenes each, half with patches."""
    from .. import toyworld
    from ..toyworld.scenes import make_backgrounds
    from .onnx_oracle import letterbox_images

    rng = np.random.default_rng(seed)
    parts = [("shapes", 48), ("shapes", 64), ("fashion", 64)]
    xs, targets = [], []
    for p, (world, size) in enumerate(parts):
        scenes = toyworld.generate(world, n_per_part, seed=seed * 10 + p, size=size)
        images = scenes.images.copy()
        object_masks = list(scenes.masks)
        # Scenes without objects (a background texture, or one flat colour) teach "nothing here".
        empty = np.flatnonzero(rng.random(len(images)) < EMPTY_SHARE)
        backgrounds, _, _ = make_backgrounds(rng, len(empty), size)
        flat = rng.random(len(empty)) < 0.5
        backgrounds[flat] = rng.integers(0, 256, (int(flat.sum()), 3, 1, 1), dtype=np.uint8)
        images[empty] = backgrounds.transpose(0, 2, 3, 1)
        for i in empty:
            object_masks[i] = np.zeros((0, size, size), bool)
        patched = rng.random(len(images)) < 0.5
        idx = np.flatnonzero(patched)
        stamped, boxes = _random_patches(rng, images[idx])
        images[idx] = stamped
        patch_box = {int(i): b for i, b in zip(idx, boxes)}
        x, _ = letterbox_images(images, (INPUT_SIZE, INPUT_SIZE))
        xs.append((x * 255).round().astype(np.uint8))
        for i in range(len(images)):  # type: ignore[assignment]  # i is an int here, a numpy index above
            masks = object_masks[i].copy()
            if i in patch_box:
                x0, y0, x1, y1 = patch_box[i]  # type: ignore[index]
                masks[:, y0:y1, x0:x1] = False
                pm = np.zeros((1, size, size), bool)
                pm[0, y0:y1, x0:x1] = True
                masks = np.concatenate([masks, pm])
            masks = masks[masks.sum((1, 2)) >= 4]
            targets.append(masks)
    x = np.concatenate(xs)
    n = len(targets)
    fine = np.zeros((n, MAX_INSTANCES, INPUT_SIZE // PROTO_STRIDE, INPUT_SIZE // PROTO_STRIDE), np.float16)
    boxes = np.zeros((n, MAX_INSTANCES, 4), np.float32)
    assign = np.full((n, GRID * GRID), -1, np.int8)
    centres = (np.arange(GRID) * STRIDE + STRIDE / 2 - 0.5).astype(np.int64)  # pixel at the centre
    for i, masks in enumerate(targets):  # type: ignore[assignment]
        cover = _letterbox_masks(masks, INPUT_SIZE)  # [k,64,64]
        fine[i, :len(masks)] = _letterbox_masks(masks, INPUT_SIZE // PROTO_STRIDE)
        on = cover > 0.5
        for j in range(len(masks)):
            ys, xs_ = np.nonzero(on[j])
            if ys.size == 0:
                ys, xs_ = np.nonzero(cover[j] > 0)
            boxes[i, j] = (xs_.min(), ys.min(), xs_.max() + 1, ys.max() + 1)
            hit = on[j][centres[:, None], centres[None, :]].reshape(-1)
            if not hit.any():  # tiny instance: the anchor nearest its centroid
                cy, cx = ys.mean(), xs_.mean()
                hit = np.zeros(GRID * GRID, bool)
                hit[int(min(GRID - 1, cy // STRIDE)) * GRID + int(min(GRID - 1, cx // STRIDE))] = True
            assign[i, hit & (assign[i] < 0)] = j
    return {"x": x, "masks": fine, "boxes": boxes, "assign": assign}


# ------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------


def _make_model(torch: Any) -> Any:
    nn = torch.nn
    F = torch.nn.functional

    def conv(cin: int, cout: int, k: int = 3, s: int = 1) -> Any:
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())

    class ToySegNet(nn.Module):  # type: ignore[name-defined]
        """Tiny FPN backbone, one stride-4 head (box distances, objectness, coefficients) and a
        stride-2 prototype branch. ``forward`` gives the YOLOv8-seg export layout."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = conv(3, 16, 3, 2)  # /2
            self.s4 = nn.Sequential(conv(16, 32, 3, 2), conv(32, 32))  # /4
            self.s8 = nn.Sequential(conv(32, 64, 3, 2), conv(64, 64))  # /8
            self.s16 = nn.Sequential(conv(64, 96, 3, 2), conv(96, 96))  # /16
            self.lat8 = nn.Sequential(conv(96 + 64, 64, 1), conv(64, 64))
            # The stride-2 stem, folded into channels (pixel unshuffle), gives the stride-4 head
            # the sub-cell detail that small instances (a 6 px patch) need for tight boxes.
            self.lat4 = nn.Sequential(conv(64 + 32 + 4 * 16, 48, 1), conv(48, 48))
            self.head = nn.Sequential(conv(48, 48), conv(48, 48))
            self.pred = nn.Conv2d(48, 4 + 1 + NUM_MASKS, 1)
            self.proto = nn.Sequential(conv(48 + 16, 32, 1), conv(32, 32), nn.Conv2d(32, NUM_MASKS, 1))
            ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
            centres = torch.stack([xs, ys]).reshape(2, -1).float() * STRIDE + STRIDE / 2
            self.register_buffer("centres", centres, persistent=False)  # [2, A] (x, y)
            with torch.no_grad():
                self.pred.bias[4].fill_(-4.0)  # objectness starts near 0: most anchors are background

        def raw(self, x: Any) -> tuple[Any, Any, Any, Any]:
            """(distances [B,4,A] input px (l, t, r, b), objectness logits [B,A],
            coefficients [B,nm,A], prototypes [B,nm,32,32])."""
            c2 = self.stem(x)
            c4 = self.s4(c2)
            c8 = self.s8(c4)
            c16 = self.s16(c8)
            p8 = self.lat8(torch.cat([F.interpolate(c16, scale_factor=2.0, mode="nearest"), c8], 1))
            p4 = self.lat4(torch.cat([F.interpolate(p8, scale_factor=2.0, mode="nearest"), c4,
                                      F.pixel_unshuffle(c2, 2)], 1))
            out = self.pred(self.head(p4)).flatten(2)
            dist = F.softplus(out[:, :4]) * (2.0 * STRIDE)
            protos = self.proto(torch.cat([F.interpolate(p4, scale_factor=2.0, mode="nearest"), c2], 1))
            return dist, out[:, 4], out[:, 5:], protos

        def boxes(self, dist: Any) -> Any:
            """xyxy [B,4,A] from distances."""
            c = self.centres
            return torch.stack([c[0] - dist[:, 0], c[1] - dist[:, 1], c[0] + dist[:, 2], c[1] + dist[:, 3]], 1)

        def forward(self, x: Any) -> tuple[Any, Any]:
            dist, obj, coef, protos = self.raw(x)
            b = self.boxes(dist)
            cxcywh = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                                  b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
            return torch.cat([cxcywh, torch.sigmoid(obj)[:, None], coef], 1), protos

    return ToySegNet()


def _giou(torch: Any, a: Any, b: Any) -> tuple[Any, Any]:
    """(IoU, GIoU) of matching xyxy boxes [P,4]."""
    area = lambda z: (z[:, 2] - z[:, 0]).clamp(min=0) * (z[:, 3] - z[:, 1]).clamp(min=0)  # noqa: E731
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    union = area(a) + area(b) - inter
    iou = inter / union.clamp(min=1e-6)
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(1)
    return iou, iou - (hull - union) / hull.clamp(min=1e-6)


def _loss(torch: Any, model: Any, batch: dict[str, Any], max_mask_pos: int = 384) -> tuple[Any, dict[str, float]]:
    F = torch.nn.functional
    x = batch["x"].float() / 255.0
    assign = batch["assign"].long()  # [B,A]
    dist, obj, coef, protos = model.raw(x)
    pos = assign >= 0
    bi, ai = torch.nonzero(pos, as_tuple=True)
    inst = assign[bi, ai]
    gt_box = batch["boxes"][bi, inst]  # [P,4]
    pred_box = model.boxes(dist)[bi, :, ai]  # [P,4]
    iou, giou = _giou(torch, pred_box, gt_box)
    n_pos = max(int(bi.numel()), 1)
    # Every instance weighs the same, however many anchors it covers: a 6 px patch has a handful
    # of positives, a large object dozens.
    key = bi * MAX_INSTANCES + inst
    _, group, counts = torch.unique(key, return_inverse=True, return_counts=True)
    w = 1.0 / counts[group].float()
    n_inst = max(int(counts.numel()), 1)
    box_loss = ((1.0 - giou) * w).sum() / n_inst
    target = torch.zeros_like(obj)
    target[bi, ai] = iou.detach().clamp(min=0.0)
    obj_loss = F.binary_cross_entropy_with_logits(obj, target, reduction="sum") / n_pos
    # Mask loss on positives sampled evenly over instances: BCE inside the instance's box (plus a
    # margin).
    if bi.numel() > max_mask_pos:
        keep = torch.multinomial(w, max_mask_pos, replacement=False)
        bi, ai, inst, gt_box = bi[keep], ai[keep], inst[keep], gt_box[keep]
    logits = torch.einsum("pk,pkhw->phw", coef[bi, :, ai], protos[bi])
    tgt = batch["masks"][bi, inst].float()
    s = INPUT_SIZE // PROTO_STRIDE
    grid = (torch.arange(s, dtype=torch.float32) + 0.5) * PROTO_STRIDE
    margin = 2.0 * PROTO_STRIDE
    inx = (grid[None] >= gt_box[:, 0:1] - margin) & (grid[None] < gt_box[:, 2:3] + margin)
    iny = (grid[None] >= gt_box[:, 1:2] - margin) & (grid[None] < gt_box[:, 3:4] + margin)
    weight = (iny[:, :, None] & inx[:, None, :]).float()
    bce = F.binary_cross_entropy_with_logits(logits, tgt, reduction="none")
    mask_loss = ((bce * weight).sum((1, 2)) / weight.sum((1, 2)).clamp(min=1.0)).mean()
    total = 2.0 * box_loss + obj_loss + 2.0 * mask_loss
    return total, {"box": box_loss.item(), "obj": obj_loss.item(), "mask": mask_loss.item(),
                   "iou": iou.mean().item() if iou.numel() else 0.0}


def train(*, n_per_part: int = 6000, steps: int = 1500, batch_size: int = 48, lr: float = 4e-3,
          seed: int = 0, threads: int = 1, log_every: int = 100) -> Any:
    """Build the data set and train; returns the trained model (eval mode)."""
    torch = require("torch", "training the toy segmentation oracle")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    data = build_dataset(n_per_part, seed)
    print(f"data: {len(data['x'])} scenes in {time.perf_counter() - t0:.1f} s", flush=True)
    tensors = {k: torch.from_numpy(v) for k, v in data.items()}
    n = tensors["x"].shape[0]
    model = _make_model(torch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.perf_counter()
    order = torch.randperm(n, generator=gen)
    pos = 0
    for step in range(1, steps + 1):
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        batch = {k: v[idx] for k, v in tensors.items()}
        if torch.rand(1, generator=gen).item() < 0.5:  # horizontal flip of the whole batch
            batch = _flip(torch, batch)
        loss, parts = _loss(torch, model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            rate = step / (time.perf_counter() - t0)
            print(f"step {step}/{steps} loss {loss.item():.3f} " +
                  " ".join(f"{k} {v:.3f}" for k, v in parts.items()) + f" ({rate:.2f} steps/s)", flush=True)
    model.eval()
    return model


def _flip(torch: Any, batch: dict[str, Any]) -> dict[str, Any]:
    out = dict(batch)
    out["x"] = batch["x"].flip(3)
    out["masks"] = batch["masks"].flip(3)
    b = batch["boxes"]
    out["boxes"] = torch.stack([INPUT_SIZE - b[..., 2], b[..., 1], INPUT_SIZE - b[..., 0], b[..., 3]], -1)
    out["assign"] = batch["assign"].reshape(-1, GRID, GRID).flip(2).reshape(-1, GRID * GRID)
    return out


def export(model: Any, path: str | Path, metadata: dict[str, Any]) -> Path:
    """ONNX export (legacy exporter, opset 17), dynamic batch, with ``metadata`` under
    ``clipguard.oracle``."""
    torch = require("torch", "exporting the toy segmentation oracle")
    onnx = require("onnx", "exporting the toy segmentation oracle")
    from .onnx_oracle import METADATA_KEY

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is chosen on purpose
        torch.onnx.export(model, (dummy,), str(path), input_names=["images"],
                          output_names=["output0", "output1"], opset_version=17, dynamo=False,
                          dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"},
                                        "output1": {0: "batch"}})
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)
    proto.producer_name = "clipguard"
    onnx.save(proto, str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clipguard.oracle.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="where to write the .onnx file")
    ap.add_argument("--scenes", type=int, default=6000, help="scenes per part (3 parts)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the default keeps it to one core)")
    ap.add_argument("--score-threshold", type=float, default=0.2)
    ap.add_argument("--iou-threshold", type=float, default=0.5)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    model = train(n_per_part=args.scenes, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                  seed=args.seed, threads=args.threads)
    meta = {"layout": "yolo-seg", "score_threshold": args.score_threshold,
            "iou_threshold": args.iou_threshold, "mask_threshold": 0.5,
            "recipe": {"scenes_per_part": args.scenes, "steps": args.steps, "batch_size": args.batch_size,
                       "lr": args.lr, "seed": args.seed},
            "train_seconds": round(time.perf_counter() - t0, 1)}
    path = export(model, args.out, meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
