"""Oracles: the native YOLOv8-seg decode against a NumPy reference, and the classical and ONNX
oracles on toy scenes with known instance masks and BadNet patches."""

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clipguard.oracle as oracle_mod
from clipguard import toyworld
from clipguard.attacks import parse_attack
from clipguard.models import ModelLoadError
from clipguard.oracle import Oracle, get_oracle, measure, measure_world, postprocess
from clipguard.oracle.decode import (
    Letterbox,
    assemble_masks,
    decode_mask_logits,
    decode_yolo_seg,
    letterbox_params,
)
from clipguard.toyworld import fashion

# ------------------------------------------------------------------------------------------
# NumPy reference of the decode, written from the layout (float64 throughout)
# ------------------------------------------------------------------------------------------

NEEDS_FASHION = pytest.mark.skipif(not fashion.available(),
                                   reason=f"Fashion-MNIST files absent; install with: {fashion.INSTALL_HINT}")


def ref_iou(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    area = lambda x: max(x[2] - x[0], 0.0) * max(x[3] - x[1], 0.0)  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def ref_taps(n, scale, pad, input_len, proto_len):
    """Bilinear taps (i0, i1, w) on the prototype grid for the n image pixels of an axis."""
    f = ((np.arange(n) + 0.5) * scale + pad) * (proto_len / input_len) - 0.5
    i0 = np.floor(f)
    w = f - i0
    low, high = i0 < 0, i0 >= proto_len - 1
    i0 = np.where(low, 0, np.where(high, proto_len - 1, i0)).astype(np.int64)
    w = np.where(low | high, 0.0, w)
    return i0, np.minimum(i0 + 1, proto_len - 1), w


def ref_mask_probs(coeffs, protos, image_hw, input_hw, lb):
    """The upsampled sigmoid [H,W] of one detection, before threshold and box crop."""
    nm, ph, pw = protos.shape
    probs = 1.0 / (1.0 + np.exp(-(coeffs.astype(np.float64) @ protos.reshape(nm, -1).astype(np.float64))))
    probs = probs.reshape(ph, pw)
    y0, y1, wy = ref_taps(image_hw[0], lb.scale_y, lb.pad_y, input_hw[0], ph)
    x0, x1, wx = ref_taps(image_hw[1], lb.scale_x, lb.pad_x, input_hw[1], pw)
    top = probs[y0][:, x0] * (1 - wx) + probs[y0][:, x1] * wx
    bottom = probs[y1][:, x0] * (1 - wx) + probs[y1][:, x1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


def ref_decode(preds, protos, image_hw, input_hw, lb, score_thr, iou_thr, max_det, max_cand):
    """Per image: list of (anchor, score, label, image box) in order, and the mask probabilities."""
    h, w = image_hw
    nm = protos.shape[1]
    nc = preds.shape[1] - 4 - nm
    result = []
    for b in range(preds.shape[0]):
        p = preds[b].astype(np.float64)
        cls = p[4:4 + nc]
        score, label = cls.max(0), cls.argmax(0)
        cand = np.flatnonzero(score > score_thr)
        cand = cand[np.lexsort((cand, -score[cand]))][:max_cand]
        kept = []
        for a in cand:
            if len(kept) >= max_det:
                break
            cx, cy, bw, bh = p[:4, a]
            box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
            if all(ref_iou(k[1], box) <= iou_thr for k in kept):
                kept.append((a, box))
        dets = []
        for a, box in kept:
            img_box = np.array([
                min(max((box[0] - lb.pad_x) / lb.scale_x, 0), w),
                min(max((box[1] - lb.pad_y) / lb.scale_y, 0), h),
                min(max((box[2] - lb.pad_x) / lb.scale_x, 0), w),
                min(max((box[3] - lb.pad_y) / lb.scale_y, 0), h),
            ])
            probs = ref_mask_probs(p[4 + nc:, a], protos[b], image_hw, input_hw, lb)
            dets.append((a, score[a], label[a], img_box, probs))
        result.append(dets)
    return result


def check_against_reference(dec, ref, image_hw, thr=0.5):
    flat = [d for dets in ref for d in dets]
    assert len(dec) == len(flat), (len(dec), len(flat))
    expected_index = np.concatenate([[b] * len(dets) for b, dets in enumerate(ref)] + [[]]).astype(np.int64)
    np.testing.assert_array_equal(dec.image_index, expected_index)
    assert dec.masks.shape == (len(flat), *image_hw) and dec.masks.dtype == np.bool_
    for i, (a, score, label, box, probs) in enumerate(flat):
        assert dec.anchors[i] == a
        assert dec.labels[i] == label
        np.testing.assert_allclose(dec.scores[i], score, rtol=1e-6)
        np.testing.assert_allclose(dec.boxes[i], box, rtol=1e-5, atol=1e-3)
        ys, xs = np.mgrid[0:image_hw[0], 0:image_hw[1]] + 0.5
        inside = (xs >= box[0]) & (xs < box[2]) & (ys >= box[1]) & (ys < box[3])
        expected = inside & (probs > thr)
        # Float32 vs float64 may disagree only on a knife edge: a value at the threshold or a
        # pixel centre on the box edge.
        edge = (np.abs(probs - thr) < 1e-4) | (np.abs(xs - box[0]) < 1e-3) | (np.abs(xs - box[2]) < 1e-3)
        edge |= (np.abs(ys - box[1]) < 1e-3) | (np.abs(ys - box[3]) < 1e-3)
        wrong = (dec.masks[i] != expected) & ~edge
        assert not wrong.any(), f"detection {i}: {int(wrong.sum())} pixels differ from the reference"


def random_outputs(rng, b, nc, nm, a, ph, pw, stride, spread=1.0):
    s_h, s_w = ph * stride, pw * stride
    preds = np.empty((b, 4 + nc + nm, a), np.float32)
    preds[:, 0] = rng.uniform(-0.2 * s_w, 1.2 * s_w, (b, a))
    preds[:, 1] = rng.uniform(-0.2 * s_h, 1.2 * s_h, (b, a))
    preds[:, 2] = rng.uniform(0.5, spread * s_w, (b, a))
    preds[:, 3] = rng.uniform(0.5, spread * s_h, (b, a))
    preds[:, 4:4 + nc] = rng.random((b, nc, a))
    preds[:, 4 + nc:] = rng.normal(0, 2, (b, nm, a))
    protos = rng.normal(0, 1, (b, nm, ph, pw)).astype(np.float32)
    return preds, protos, (s_h, s_w)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    b=st.integers(1, 3), nc=st.integers(1, 3), nm=st.integers(1, 8), a=st.integers(0, 120),
    ph=st.integers(1, 12), pw=st.integers(1, 12), stride=st.sampled_from([1, 2, 4, 8]),
    h=st.integers(1, 45), w=st.integers(1, 45),
    score_thr=st.sampled_from([0.0, 0.3, 0.8, 1.0]), iou_thr=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
    max_det=st.sampled_from([1, 4, 300]), max_cand=st.sampled_from([5, 30000]),
    seed=st.integers(0, 2**31),
)
def test_decode_matches_numpy_reference(b, nc, nm, a, ph, pw, stride, h, w, score_thr, iou_thr,
                                        max_det, max_cand, seed):
    rng = np.random.default_rng(seed)
    preds, protos, input_hw = random_outputs(rng, b, nc, nm, a, ph, pw, stride)
    lb = letterbox_params((h, w), input_hw)
    dec = decode_yolo_seg(preds, protos, (h, w), input_size=input_hw, score_threshold=score_thr,
                          iou_threshold=iou_thr, max_det=max_det, max_candidates=max_cand,
                          backend="cpu")
    ref = ref_decode(preds, protos, (h, w), input_hw, lb, score_thr, iou_thr, max_det, max_cand)
    check_against_reference(dec, ref, (h, w))


def test_decode_on_backends_matches_reference(backend):
    rng = np.random.default_rng(3)
    preds, protos, input_hw = random_outputs(rng, 2, 1, 32, 8400 // 16, 40, 40, 4, spread=0.5)
    lb = letterbox_params((97, 131), input_hw)
    dec = decode_yolo_seg(preds, protos, (97, 131), score_threshold=0.5, backend=backend)
    ref = ref_decode(preds, protos, (97, 131), input_hw, lb, 0.5, 0.7, 300, 30000)
    assert len(dec) > 20
    check_against_reference(dec, ref, (97, 131))


def test_decode_no_box_above_threshold(backend):
    rng = np.random.default_rng(0)
    preds, protos, _ = random_outputs(rng, 2, 1, 4, 50, 8, 8, 4)
    dec = decode_yolo_seg(preds, protos, (20, 30), score_threshold=1.0, backend=backend)
    assert len(dec) == 0 and dec.masks.shape == (0, 20, 30)
    assert [m.shape for m in dec.per_image(2)] == [(0, 20, 30), (0, 20, 30)]
    # no anchors at all
    dec = decode_yolo_seg(preds[:, :, :0], protos, (20, 30), backend=backend)
    assert len(dec) == 0


def test_decode_all_boxes_overlapping(backend):
    """Identical boxes: NMS keeps the best one; with iou_threshold=1 nothing is suppressed and
    equal scores keep the anchor order."""
    a, nm = 40, 2
    preds = np.zeros((1, 4 + 1 + nm, a), np.float32)
    preds[0, :4] = np.array([16, 16, 20, 20], np.float32)[:, None]
    preds[0, 4] = np.linspace(0.5, 0.9, a)
    preds[0, 4, 7] = 0.95
    protos = np.ones((1, nm, 8, 8), np.float32)
    preds[0, 5:] = 5.0
    dec = decode_yolo_seg(preds, protos, (32, 32), backend=backend)
    assert dec.anchors.tolist() == [7]
    np.testing.assert_allclose(dec.boxes[0], [6, 6, 26, 26])
    assert dec.masks[0].sum() == 400 and dec.masks[0, 6:26, 6:26].all()
    preds[0, 4] = 0.6
    dec = decode_yolo_seg(preds, protos, (32, 32), iou_threshold=1.0, max_det=5, backend=backend)
    assert dec.anchors.tolist() == [0, 1, 2, 3, 4]


def test_decode_boxes_at_borders_are_clipped(backend):
    """Boxes partly outside the letterboxed image are clipped to it; the mask stays inside."""
    nm = 1
    # image 30x60 in a 64x64 input: scale 64/60, pad_y = (64 - 32) // 2 = 16
    preds = np.zeros((1, 4 + 1 + nm, 3), np.float32)
    preds[0, :, 0] = [0, 0, 20, 20, 0.9, 10]  # top-left corner, mostly in the padding
    preds[0, :, 1] = [64, 40, 16, 80, 0.8, 10]  # right border, taller than the input
    preds[0, :, 2] = [32, 8, 8, 8, 0.7, 10]  # entirely in the top padding: empty box
    protos = np.ones((1, nm, 16, 16), np.float32)
    lb = letterbox_params((30, 60), (64, 64))
    assert (lb.pad_x, lb.pad_y) == (0.0, 16.0)
    dec = decode_yolo_seg(preds, protos, (30, 60), backend=backend)
    assert dec.anchors.tolist() == [0, 1, 2]
    np.testing.assert_allclose(dec.boxes[0], [0, 0, 10 / lb.scale_x, 0], atol=1e-5)
    np.testing.assert_allclose(dec.boxes[1], [56 / lb.scale_x, 0, 60, 30], atol=1e-4)
    assert dec.masks[0].sum() == 0 and dec.masks[2].sum() == 0
    m = dec.masks[1]
    cols = np.flatnonzero(m.any(0))
    assert m[:, cols].all() and cols[0] == int(np.ceil(56 / lb.scale_x - 0.5)) and cols[-1] == 59


def test_decode_score_is_the_best_class(backend):
    """Class-agnostic score = the best class score; ties go to the lower class."""
    preds = np.zeros((1, 4 + 3 + 1, 3), np.float32)
    preds[0, :4] = np.array([[8, 8, 40], [8, 40, 8], [6, 6, 6], [6, 6, 6]], np.float32)
    preds[0, 4:7, 0] = [0.1, 0.6, 0.6]  # tie between classes 1 and 2
    preds[0, 4:7, 1] = [0.2, 0.1, 0.9]
    preds[0, 4:7, 2] = [0.7, 0.1, 0.2]
    protos = np.ones((1, 1, 12, 12), np.float32)
    dec = decode_yolo_seg(preds, protos, (48, 48), backend=backend)
    assert dec.anchors.tolist() == [1, 2, 0]
    assert dec.labels.tolist() == [2, 0, 1]
    np.testing.assert_allclose(dec.scores, [0.9, 0.7, 0.6])


def test_decode_mask_follows_prototypes(backend):
    """A prototype positive on the left half, coefficient +1: the mask is the left half of the
    box; coefficient -1: the right half."""
    protos = np.zeros((1, 2, 16, 16), np.float32)
    protos[0, 0, :, :8] = 6.0
    protos[0, 0, :, 8:] = -6.0
    preds = np.zeros((1, 7, 2), np.float32)
    preds[0, :, 0] = [32, 32, 64, 64, 0.9, 1.0, 0.0]
    preds[0, :, 1] = [32, 32, 40, 40, 0.8, -1.0, 0.0]
    dec = decode_yolo_seg(preds, protos, (64, 64), iou_threshold=1.0, backend=backend)
    left = np.zeros((64, 64), bool)
    left[:, :32] = True
    np.testing.assert_array_equal(dec.masks[0], left)
    right = np.zeros((64, 64), bool)
    right[12:52, 32:52] = True
    np.testing.assert_array_equal(dec.masks[1], right)


def test_assemble_masks_validates_inputs():
    protos = np.zeros((2, 3, 4, 4), np.float32)
    coeffs = np.zeros((1, 3), np.float32)
    boxes = np.zeros((1, 4), np.float32)
    ok = dict(input_size=(16, 16))
    assert assemble_masks(coeffs, protos, [1], boxes, (8, 8), **ok).shape == (1, 8, 8)
    with pytest.raises(ValueError, match="coeffs has 2 coefficients"):
        assemble_masks(np.zeros((1, 2), np.float32), protos, [0], boxes, (8, 8), **ok)
    with pytest.raises(ValueError, match="image_index"):
        assemble_masks(coeffs, protos, [2], boxes, (8, 8), **ok)
    with pytest.raises(ValueError, match="boxes must be"):
        assemble_masks(coeffs, protos, [0], np.zeros((2, 4)), (8, 8), **ok)
    with pytest.raises(ValueError, match="protos contains NaN"):
        assemble_masks(coeffs, np.full_like(protos, np.nan), [0], boxes, (8, 8), **ok)
    with pytest.raises(ValueError, match="image_size"):
        assemble_masks(coeffs, protos, [0], boxes, (0, 8), **ok)
    with pytest.raises(TypeError, match="letterbox"):
        assemble_masks(coeffs, protos, [0], boxes, (8, 8), letterbox=(1, 1, 0, 0), **ok)
    with pytest.raises(ValueError, match="letterbox scales"):
        assemble_masks(coeffs, protos, [0], boxes, (8, 8), letterbox=Letterbox(0, 1, 0, 0), **ok)


def test_decode_validates_inputs():
    preds = np.zeros((1, 4 + 1 + 32, 10), np.float32)
    protos = np.zeros((1, 32, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"output0 must be \[B, 4 \+ nc \+ nm, A\] \(3 dims\)"):
        decode_yolo_seg(preds[0], protos, (8, 8))
    with pytest.raises(ValueError, match="transposed"):
        decode_yolo_seg(preds.transpose(0, 2, 1), protos, (8, 8))
    with pytest.raises(ValueError, match="batch"):
        decode_yolo_seg(np.concatenate([preds, preds]), protos, (8, 8))
    with pytest.raises(TypeError, match="output1 must be a float array"):
        decode_yolo_seg(preds, protos.astype(bool), (8, 8))
    with pytest.raises(ValueError, match="output0 contains NaN"):
        decode_yolo_seg(np.full_like(preds, np.inf), protos, (8, 8))
    with pytest.raises(ValueError, match="iou_threshold"):
        decode_yolo_seg(preds, protos, (8, 8), iou_threshold=1.5)
    with pytest.raises(ValueError, match="max_det"):
        decode_yolo_seg(preds, protos, (8, 8), max_det=0)
    with pytest.raises(ValueError, match="backend"):
        decode_yolo_seg(preds, protos, (8, 8), backend="tpu")


def test_native_decode_rechecks_arguments():
    """The binding checks again what the wrapper checked (second level of validation)."""
    from clipguard import _core

    lb = np.array([1, 1, 0, 0], np.float32)
    preds = np.zeros((1, 9, 5), np.float32)
    with pytest.raises(ValueError, match="preds: expected dtype float32"):
        _core.decode.detect(preds.astype(np.float64), 4, 8, 8, lb, 0.5, 0.5, 10, 10)
    with pytest.raises(ValueError, match="expected 4 \\+ num_classes"):
        _core.decode.detect(preds, 5, 8, 8, lb, 0.5, 0.5, 10, 10)
    with pytest.raises(ValueError, match="letterbox scales"):
        _core.decode.detect(preds, 4, 8, 8, np.array([0, 1, 0, 0], np.float32), 0.5, 0.5, 10, 10)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.decode.detect(np.zeros((1, 5, 9), np.float32).transpose(0, 2, 1), 4, 8, 8, lb, 0.5, 0.5, 10, 10)
    with pytest.raises(ValueError, match="out of range"):
        _core.decode.masks(np.zeros((1, 2), np.float32), np.zeros((1, 2, 4, 4), np.float32),
                           np.array([3]), np.zeros((1, 4), np.float32), 16, 16, 8, 8, lb, 0.5)


def test_decode_mask_logits_layout(backend):
    """Plain layout: one instance per logit channel, kept by score, empty masks dropped."""
    logits = np.full((2, 3, 16, 16), -8.0, np.float32)
    logits[0, 0, 2:6, 2:6] = 8.0
    logits[0, 1, 8:16, 0:16] = 8.0
    logits[1, 2, 0:4, 12:16] = 8.0  # channel 0 and 1 of image 1 are empty
    scores = np.array([[0.9, 0.2, 0.9], [0.9, 0.9, 0.9]], np.float32)
    dec = decode_mask_logits(logits, (32, 32), input_size=(64, 64), scores=scores, backend=backend)
    assert dec.image_index.tolist() == [0, 1] and dec.anchors.tolist() == [0, 2]
    expected = np.zeros((32, 32), bool)
    expected[4:12, 4:12] = True  # logit pixels 2..5 of 16 -> image pixels 4..11 of 32
    np.testing.assert_array_equal(dec.masks[0], expected)
    np.testing.assert_array_equal(dec.boxes[0], [4, 4, 12, 12])
    dec = decode_mask_logits(logits, (32, 32), input_size=(64, 64), backend=backend)
    assert dec.anchors.tolist() == [0, 1, 2]


def test_decode_releases_the_gil(monkeypatch):
    monkeypatch.setenv("CLIPGUARD_NUM_THREADS", "1")
    rng = np.random.default_rng(0)
    protos = rng.normal(size=(1, 32, 160, 160)).astype(np.float32)
    coeffs = rng.normal(size=(150, 32)).astype(np.float32)
    boxes = np.tile(np.array([0, 0, 640, 640], np.float32), (150, 1))
    done, call = threading.Event(), {}

    def worker():
        t0 = time.perf_counter()
        assemble_masks(coeffs, protos, np.zeros(150, np.int64), boxes, (640, 640),
                       input_size=(640, 640), backend="cpu")
        call["seconds"] = time.perf_counter() - t0
        done.set()

    ticks = []
    thread = threading.Thread(target=worker)
    thread.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
    thread.join()
    busy = float(np.sum(np.minimum(np.diff(np.array(ticks)), 0.001)))
    # Holding the GIL, the main thread could run only around the call's edges (a couple of switch
    # intervals); released, it runs for whatever share of a core the scheduler gives it, which
    # stays far above that even on a busy machine.
    edges = 4 * sys.getswitchinterval()
    assert call["seconds"] > 10 * edges, "the native call was too short to tell"
    assert busy > max(0.2 * call["seconds"], 5 * edges)


def test_decode_threads_give_serial_results():
    rng = np.random.default_rng(5)
    works = [random_outputs(rng, 2, 1, 8, 300, 16, 16, 4) for _ in range(4)]
    serial = [decode_yolo_seg(p, q, (50, 70), backend="cpu") for p, q, _ in works]
    results = [None] * len(works)

    def run(i):
        p, q, _ = works[i]
        results[i] = decode_yolo_seg(p, q, (50, 70), backend="cpu")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(works))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s, r in zip(serial, results):
        np.testing.assert_array_equal(s.masks, r.masks)
        np.testing.assert_array_equal(s.boxes, r.boxes)


# ------------------------------------------------------------------------------------------
# Oracles
# ------------------------------------------------------------------------------------------

def need(spec):
    """Skip where the oracle's optional dependencies are missing (OpenCV letterboxes for ONNX too;
    the classical oracle needs OpenCV's contrib modules)."""
    cv2 = pytest.importorskip("cv2")
    if spec == "classical" and not hasattr(cv2, "ximgproc"):
        pytest.skip("the classical oracle needs opencv-contrib (cv2.ximgproc)")
    if spec != "classical":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def classical():
    need("classical")
    return get_oracle("classical")


@pytest.fixture(scope="module")
def toy():
    need("toy")
    return get_oracle("toy")


def test_import_is_light(tmp_path):
    code = ("import sys, clipguard.oracle; "
            "print(','.join(m for m in ('cv2', 'onnxruntime', 'onnx', 'torch') if m in sys.modules))")
    # cwd outside the checkout: import the installed package, not the source folder
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == ""


def test_missing_dependency_names_the_extra(monkeypatch):
    need("toy")
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match=r"clipguard\[full\]"):
        get_oracle("classical")
    monkeypatch.delitem(sys.modules, "cv2")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"clipguard\[full\]"):
        get_oracle("toy")


def test_oracle_interface(classical):
    assert isinstance(classical, Oracle) and classical.spec == "classical"
    assert get_oracle(classical) is classical
    scenes = toyworld.generate("shapes", 3, seed=2, split="test")
    out = classical(scenes.images)
    assert len(out) == 3
    for m in out:
        assert m.dtype == np.bool_ and m.ndim == 3 and m.shape[1:] == (48, 48)
    one = classical(scenes.images[0])  # a single [H,W,3] image
    assert len(one) == 1 and np.array_equal(one[0], out[0])
    assert classical(scenes.images[:0]) == []


def test_classical_finds_objects_and_patches(classical):
    """Thresholds sit well under the measured figures (docs/oracle.md) and far above what a broken
    segmentation gives (one region per image, or the background)."""
    q = measure_world(classical, "shapes", 60, seed=7)
    assert q.object_recall >= 0.95 and q.object_iou >= 0.92, q
    assert q.trigger_recall >= 0.9 and q.trigger_iou >= 0.8, q
    assert q.regions_per_image <= 4, q


@NEEDS_FASHION
def test_classical_finds_fashion_objects_and_patches(classical):
    q = measure_world(classical, "fashion", 40, seed=7)
    assert q.object_recall >= 0.9 and q.object_iou >= 0.8, q
    assert q.trigger_recall >= 0.9, q
    assert q.regions_per_image <= 8, q


def test_classical_on_large_images(classical):
    """Parameters scale with the image: toy scenes at 224 px with a 16 px patch."""
    scenes = toyworld.generate("shapes", 8, seed=3, size=224, split="test")
    trig = parse_attack("badnet:target=circle,size=16").apply(scenes.images, seed=3)
    q = measure(classical, scenes.images, scenes.masks, trig.images, trig.boxes)
    assert q.object_recall >= 0.9 and q.trigger_recall >= 0.85, q
    assert q.regions_per_image <= 6, q


@NEEDS_FASHION
def test_classical_threads_give_serial_results():
    need("classical")
    images = toyworld.generate("fashion", 6, seed=4, split="test").images
    serial = get_oracle("classical", threads=1)(images)
    threaded = get_oracle("classical", threads=3)(images)
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("spec", ["classical", "toy"])
def test_uniform_images_give_few_masks(spec):
    need(spec)
    oracle = get_oracle(spec)
    images = np.stack([np.full((48, 48, 3), v, np.uint8) for v in (0, 128, 255)]
                      + [np.full((48, 48, 3), (30, 200, 90), np.uint8)])
    out = oracle(images)
    assert [m.shape[1:] for m in out] == [(48, 48)] * 4
    assert sum(m.shape[0] for m in out) <= 2


@pytest.mark.parametrize("spec", ["classical", "toy"])
@pytest.mark.parametrize("hw", [(37, 53), (2, 2), (71, 29), (300, 200)])
def test_odd_sizes(spec, hw):
    need(spec)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    images[:, hw[0] // 4: hw[0] // 2, hw[1] // 4: hw[1] // 2] = (250, 20, 20)
    out = get_oracle(spec)(images)
    assert len(out) == 2
    for m in out:
        assert m.dtype == np.bool_ and m.shape[1:] == hw


def test_bad_inputs_and_specs(classical, tmp_path):
    with pytest.raises(TypeError, match="uint8"):
        classical(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[N,H,W,3\]"):
        classical(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="at least 2x2"):
        classical(np.zeros((1, 1, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="unknown oracle spec 'fastsam'"):
        get_oracle("fastsam")
    with pytest.raises(ValueError, match="needs a path"):
        get_oracle("onnx:")
    with pytest.raises(TypeError, match="oracle spec"):
        get_oracle(3)
    with pytest.raises(ValueError, match="min_area"):
        get_oracle("classical", min_area=0)
    with pytest.raises(ValueError, match="merge_iou"):
        get_oracle("classical", merge_iou=1.5)
    with pytest.raises(TypeError):
        get_oracle("classical", no_such_option=1)
    need("onnx")
    with pytest.raises(ModelLoadError, match="not found"):
        get_oracle(f"onnx:{tmp_path / 'missing.onnx'}")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(ModelLoadError, match="junk.onnx"):
        get_oracle(f"onnx:{junk}")


def _onnx_model(path, nodes, inputs, outputs, initializers=()):
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    graph = helper.make_graph(nodes, "m", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _mask_logits_model(path, batch="B", with_scores=True):
    """A plain mask-logits model: logits = 20 * (image - 0.5), one instance per colour channel;
    scores = the largest sigmoid of each channel."""
    from onnx import TensorProto, helper, numpy_helper

    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    gain = numpy_helper.from_array(np.array(20.0, np.float32), "gain")
    nodes = [helper.make_node("Sub", ["images", "half"], ["centred"]),
             helper.make_node("Mul", ["centred", "gain"], ["logits"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3, 32, 32])]
    if with_scores:
        nodes += [helper.make_node("Sigmoid", ["logits"], ["probs"]),
                  helper.make_node("ReduceMax", ["probs"], ["scores"], axes=[2, 3], keepdims=0)]
        outputs.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 3]))
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 32, 32])]
    return _onnx_model(path, nodes, inputs, outputs, [half, gain])


@pytest.mark.parametrize("batch,with_scores", [("B", True), (2, True), ("B", False)])
def test_onnx_mask_logits_layout(tmp_path, batch, with_scores):
    need("onnx")
    path = _mask_logits_model(tmp_path / "logits.onnx", batch, with_scores)
    oracle = get_oracle(f"onnx:{path}", score_threshold=0.5, min_area=4)
    assert oracle.layout == "mask-logits" and oracle.input_size == (32, 32)
    images = np.zeros((3, 24, 40, 3), np.uint8)  # letterboxed into 32x32 with padding
    images[:, 4:12, 8:20] = (255, 0, 0)  # red: on in channel 0 only
    images[1, 14:22, 24:36] = (0, 0, 255)  # blue: on in channel 2
    out = oracle(images)
    assert [m.shape[0] for m in out] == [1, 2, 1]
    red = np.zeros((24, 40), bool)
    red[4:12, 8:20] = True
    blue = np.zeros((24, 40), bool)
    blue[14:22, 24:36] = True
    for m in out:
        assert oracle_mod.best_iou(m, red[None])[0] > 0.8
    assert oracle_mod.best_iou(out[1], blue[None])[0] > 0.8


def test_onnx_rejects_wrong_layouts(tmp_path):
    need("onnx")
    from onnx import TensorProto, helper

    path = _onnx_model(tmp_path / "flat.onnx", [helper.make_node("Flatten", ["images"], ["out"])],
                       [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                       [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 192])])
    with pytest.raises(ModelLoadError, match="fit neither layout"):
        get_oracle(f"onnx:{path}")
    path = _onnx_model(tmp_path / "gray.onnx", [helper.make_node("Identity", ["images"], ["out"])],
                       [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 1, 8, 8])],
                       [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 8, 8])])
    with pytest.raises(ModelLoadError, match="1 channels"):
        get_oracle(f"onnx:{path}")
    path = _onnx_model(tmp_path / "dyn.onnx", [helper.make_node("Identity", ["images"], ["out"])],
                       [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, "S", "S"])],
                       [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, "S", "S"])])
    with pytest.raises(ModelLoadError, match="input_size"):
        get_oracle(f"onnx:{path}")
    assert get_oracle(f"onnx:{path}", input_size=(16, 16)).input_size == (16, 16)


def test_postprocess_drops_small_and_merges_duplicates():
    masks = np.zeros((5, 20, 20), bool)
    masks[0, 2:12, 2:12] = True  # 100 px
    masks[1, 2:12, 2:11] = True  # IoU 0.9 with mask 0: merged into it
    masks[2, 15:17, 15:17] = True  # 4 px: too small
    masks[3, 0:20, 0:20] = True  # 400 px: too large
    masks[4, 12:20, 0:6] = True  # kept
    out = postprocess(masks, min_area=5, max_area=300, merge_iou=0.8, max_regions=None)
    assert len(out) == 2
    np.testing.assert_array_equal(out[0], masks[0] | masks[1])
    np.testing.assert_array_equal(out[1], masks[4])
    out = postprocess(masks[[1, 0]], min_area=5, max_area=300, merge_iou=0.95, max_regions=None)
    assert len(out) == 2  # IoU 0.9 is not above 0.95
    out = postprocess(masks, min_area=5, max_area=300, merge_iou=0.8, max_regions=1)
    assert len(out) == 1


def test_toy_onnx_oracle_finds_objects_and_patches(toy):
    assert toy.spec == "toy" and toy.layout == "yolo-seg"
    assert oracle_mod.TOY_MODEL.stat().st_size < 2_000_000
    q = measure_world(toy, "shapes", 60, seed=7)
    assert q.object_recall >= 0.95 and q.object_iou >= 0.9, q
    assert q.trigger_recall >= 0.9 and q.trigger_iou >= 0.7, q
    assert q.regions_per_image <= 4, q


@NEEDS_FASHION
def test_toy_onnx_oracle_on_fashion(toy):
    q = measure_world(toy, "fashion", 40, seed=7)
    assert q.object_recall >= 0.9 and q.object_iou >= 0.82, q
    assert q.trigger_recall >= 0.85, q


def test_onnx_yolo_seg_anchors_first_export(tmp_path):
    """An export giving output0 as [B, A, C] (anchors first) is transposed; the mask is the
    prototype cropped to the box, mapped back through the letterbox."""
    need("onnx")
    from onnx import TensorProto, helper, numpy_helper

    a = 8
    o0 = np.zeros((1, a, 6), np.float32)  # C = 4 box + 1 score + 1 coefficient
    o0[0, 3] = [16, 16, 16, 8, 0.9, 1.0]  # input box (8, 12, 24, 20)
    protos = np.full((1, 1, 8, 8), 5.0, np.float32)
    consts = [numpy_helper.from_array(o0, "o0"), numpy_helper.from_array(protos, "p0"),
              numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    nodes = [helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
             helper.make_node("Add", ["o0", "nothing"], ["output0"]),
             helper.make_node("Add", ["p0", "nothing"], ["output1"])]
    path = _onnx_model(tmp_path / "yolo.onnx", nodes,
                       [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
                       [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, a, 6]),
                        helper.make_tensor_value_info("output1", TensorProto.FLOAT, [1, 1, 8, 8])],
                       consts)
    oracle = get_oracle(f"onnx:{path}")
    assert oracle.layout == "yolo-seg" and oracle.input_size == (32, 32)
    (masks,) = oracle(np.zeros((1, 16, 32, 3), np.uint8))  # letterbox: scale 1, pad_y 8
    expected = np.zeros((16, 32), bool)
    expected[4:12, 8:24] = True
    assert masks.shape == (1, 16, 32)
    np.testing.assert_array_equal(masks[0], expected)
