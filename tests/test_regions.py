import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clipguard
from clipguard import _core
from clipguard.regions import CLIP_MEAN, CLIP_STD, boxes, image_means, render

cv2 = pytest.importorskip("cv2")

# Tolerance on the 0..255 scale, converted to the normalized output.
STD = np.asarray(CLIP_STD, np.float32)[None, :, None, None]


def pixel_diff(a, b):
    return float((np.abs(a - b) * STD * 255).max()) if a.size else 0.0


def random_masks(rng, r, h, w, density=0.7):
    masks = np.zeros((r, h, w), bool)
    for i in range(r):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
        masks[i, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < density
    return masks


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 3), h=st.integers(1, 41), w=st.integers(1, 41), r=st.integers(0, 6),
    size=st.sampled_from([1, 7, 16, 33]), mode=st.sampled_from(["crop", "isolate", "occlude"]),
    fill=st.sampled_from([0, (255, 10, 128), "mean"]), seed=st.integers(0, 2**31),
)
def test_render_matches_opencv_reference(n, h, w, r, size, mode, fill, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    masks = random_masks(rng, r, h, w)
    index = rng.integers(0, n, r)
    out = render(images, masks, index, mode, size, fill=fill)
    assert out.shape == (r, 3, size, size) and out.dtype == np.float32
    expected = ref.render(images, masks, index, mode, size, CLIP_MEAN, CLIP_STD, fill)
    assert pixel_diff(out, expected) < 0.01


@pytest.mark.parametrize("mode", ["crop", "isolate", "occlude"])
def test_render_on_backends_matches_reference(backend, mode):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 61, 47, 3), dtype=np.uint8)
    masks = random_masks(rng, 12, 61, 47)
    index = rng.integers(0, 4, 12)
    out = render(images, masks, index, mode, 50, fill="mean", backend=backend)
    expected = ref.render(images, masks, index, mode, 50, CLIP_MEAN, CLIP_STD, "mean")
    assert pixel_diff(out, expected) < 0.01


def test_render_agrees_with_uint8_cv2_resize():
    """The issue's contract: within 2/255 of cv2.resize(uint8, INTER_LINEAR) before normalization."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (1, 90, 70, 3), dtype=np.uint8)
    full = np.ones((1, 90, 70), bool)
    for size in (32, 64, 224):
        out = render(image, full, [0], "isolate", size, mean=(0, 0, 0), std=(1, 1, 1))
        expected = cv2.resize(image[0], (size, size), interpolation=cv2.INTER_LINEAR)
        got = out[0].transpose(1, 2, 0) * 255
        assert np.abs(got - expected).max() <= 2.0


@pytest.mark.parametrize("mode", ["isolate", "occlude"])
def test_no_resampling_at_image_size_is_exact(backend, mode):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    masks = random_masks(rng, 3, 24, 24)
    out = render(images, masks, [0, 1, 1], mode, 24, fill=(7, 8, 9), backend=backend)
    for r, i in enumerate([0, 1, 1]):
        canvas = images[i].astype(np.float32)
        sel = ~masks[r] if mode == "isolate" else masks[r]
        canvas[sel] = (7, 8, 9)
        expected = (canvas / 255 - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)
        np.testing.assert_allclose(out[r].transpose(1, 2, 0), expected, rtol=0, atol=1e-5)


def test_crop_of_square_box_at_output_size_is_the_box():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (1, 40, 40, 3), dtype=np.uint8)
    out = render(images, np.array([[5, 9, 21, 25]]), [0], "crop", 16, mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_array_equal(np.round(out[0].transpose(1, 2, 0) * 255), images[0, 9:25, 5:21])


def test_crop_pads_to_centred_square():
    image = np.full((1, 10, 10, 3), 200, np.uint8)
    mask = np.zeros((1, 10, 10), bool)
    mask[0, 2:4, 1:9] = True  # 2 rows x 8 cols: padded with 3 rows of fill above and below
    out = render(image, mask, [0], "crop", 8, mean=(0, 0, 0), std=(1, 1, 1), fill=0)
    got = np.round(out[0, 0] * 255)
    assert (got[:3] == 0).all() and (got[5:] == 0).all() and (got[3:5] == 200).all()


def test_edge_regions(backend):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (1, 13, 17, 3), dtype=np.uint8)
    empty = np.zeros((13, 17), bool)
    full = np.ones((13, 17), bool)
    pixel = empty.copy()
    pixel[12, 16] = True  # one pixel in the corner
    border = empty.copy()
    border[:, 0] = True
    masks = np.stack([empty, full, pixel, border])
    for mode in ("crop", "isolate", "occlude"):
        out = render(images, masks, [0] * 4, mode, 9, fill=(1, 2, 3), backend=backend)
        expected = ref.render(images, masks, [0] * 4, mode, 9, CLIP_MEAN, CLIP_STD, (1, 2, 3))
        assert np.isfinite(out).all() and pixel_diff(out, expected) < 0.01
    # The empty mask: pure fill when cropped or isolated, the untouched image when occluded.
    fill = (np.array([1, 2, 3]) / 255 - np.float32(CLIP_MEAN)) / np.float32(CLIP_STD)
    crop = render(images, masks[:1], [0], "crop", 9, fill=(1, 2, 3), backend=backend)
    np.testing.assert_allclose(crop[0].reshape(3, -1).T, np.broadcast_to(fill, (81, 3)), atol=1e-6)
    occ = render(images, masks[:1], [0], "occlude", 9, fill=(1, 2, 3), backend=backend)
    whole = render(images, masks[1:2], [0], "isolate", 9, fill=(1, 2, 3), backend=backend)
    np.testing.assert_array_equal(occ, whole)


def test_boxes_equal_rectangular_masks():
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (2, 30, 20, 3), dtype=np.uint8)
    box = np.array([[0, 0, 20, 30], [3, 4, 9, 25], [5, 5, 5, 5]])
    masks = np.zeros((3, 30, 20), bool)
    for r, (x0, y0, x1, y1) in enumerate(box):
        masks[r, y0:y1, x0:x1] = True
    for mode in ("crop", "isolate", "occlude"):
        a = render(images, box, [0, 1, 1], mode, 12, fill="mean")
        b = render(images, masks, [0, 1, 1], mode, 12, fill="mean")
        np.testing.assert_array_equal(a, b)


def test_non_contiguous_inputs_give_the_same_result():
    rng = np.random.default_rng(7)
    big = rng.integers(0, 256, (2, 40, 60, 3), dtype=np.uint8)
    images = big[:, ::2, ::3]  # strided view
    masks = random_masks(rng, 4, 40, 60)[:, ::2, ::3]
    index = np.array([0, 1, 0, 1])[::1]
    a = render(images, masks, index, "crop", 16)
    b = render(np.ascontiguousarray(images), np.ascontiguousarray(masks), index, "crop", 16)
    np.testing.assert_array_equal(a, b)


def test_zero_regions_and_single_image():
    images = np.zeros((5, 5, 3), np.uint8)  # one [H,W,3] image is accepted
    out = render(images, np.zeros((0, 5, 5), bool), np.zeros(0, int), "crop", 8)
    assert out.shape == (0, 3, 8, 8)


@settings(max_examples=30, deadline=None)
@given(r=st.integers(0, 5), h=st.integers(1, 30), w=st.integers(1, 30), seed=st.integers(0, 2**31))
def test_boxes_match_reference(r, h, w, seed):
    masks = random_masks(np.random.default_rng(seed), r, h, w, density=0.3)
    box, area = boxes(masks)
    assert box.dtype == np.int32 and area.dtype == np.int64
    for i in range(r):
        assert tuple(box[i]) == ref.tight_box(masks[i])
        assert area[i] == masks[i].sum()


def test_image_means():
    rng = np.random.default_rng(8)
    images = rng.integers(0, 256, (3, 9, 11, 3), dtype=np.uint8)
    np.testing.assert_allclose(image_means(images), images.reshape(3, -1, 3).mean(1), rtol=1e-6)


GOOD = dict(images=np.zeros((2, 8, 8, 3), np.uint8), masks=np.ones((1, 8, 8), bool), image_index=[0])


@pytest.mark.parametrize(
    "change, error, words",
    [
        (dict(images=np.zeros((2, 8, 8, 3), np.float32)), TypeError, "uint8"),
        (dict(images=np.zeros((2, 8, 8), np.uint8)), ValueError, "[N,H,W,3]"),
        (dict(images=np.zeros((2, 8, 8, 4), np.uint8)), ValueError, "RGB"),
        (dict(images=np.zeros((2, 0, 8, 3), np.uint8)), ValueError, "H, W > 0"),
        (dict(masks=np.ones((1, 8, 9), bool)), ValueError, "masks must be [R,8,8]"),
        (dict(masks=np.ones((1, 8, 8), np.int16)), TypeError, "bool or uint8"),
        (dict(masks=np.ones((8, 8), bool)), ValueError, "boxes must be [R,4]"),
        (dict(masks=np.array([[0, 0, 9, 8]])), ValueError, "inside the 8x8 image"),
        (dict(masks=np.array([[4, 0, 2, 8]])), ValueError, "x0 <= x1"),
        (dict(masks=np.array([[0.0, 0, 2, 8]])), TypeError, "integer dtype"),
        (dict(image_index=[2]), ValueError, "image_index must lie in [0, 2)"),
        (dict(image_index=[-1]), ValueError, "image_index"),
        (dict(image_index=[0, 1]), ValueError, "expected 1"),
        (dict(image_index=[0.5]), TypeError, "integer dtype"),
        (dict(mode="zoom"), ValueError, "mode must be one of"),
        (dict(size=0), ValueError, "size"),
        (dict(size=2.5), ValueError, "size"),
        (dict(fill="median"), ValueError, "'mean'"),
        (dict(fill=(0, 0, 300)), ValueError, "[0, 255]"),
        (dict(fill=(0, 0)), ValueError, "fill"),
        (dict(std=(1, 0, 1)), ValueError, "nonzero"),
        (dict(mean=(np.nan, 0, 0)), ValueError, "finite"),
        (dict(backend="tpu"), ValueError, "backend"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, words):
    kwargs = {**GOOD, **change}
    with pytest.raises(error, match=None) as info:
        render(**kwargs)
    assert words in str(info.value)


def test_native_boundary_checks_again():
    """The binding rejects what the wrapper would have converted: wrong dtypes and layouts."""
    images = np.zeros((1, 4, 4, 3), np.uint8)
    args = dict(
        masks=None, boxes=np.zeros((1, 4), np.int32), image_index=np.zeros(1, np.int64),
        fill=np.zeros((1, 3), np.float32), mode=0, size=4,
        mean=np.zeros(3, np.float32), std=np.ones(3, np.float32),
    )
    _core.regions.render(images, **args)  # the good call works
    with pytest.raises(ValueError, match="dtype"):
        _core.regions.render(images.astype(np.float32), **args)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.regions.render(np.zeros((1, 4, 8, 3), np.uint8)[:, :, ::2], **args)
    with pytest.raises(ValueError, match="out of range"):
        _core.regions.render(images, **{**args, "image_index": np.array([3], np.int64)})
    with pytest.raises(ValueError, match="not a box"):
        _core.regions.render(images, **{**args, "boxes": np.array([[0, 0, 5, 1]], np.int32)})
    with pytest.raises(ValueError, match="render mode"):
        _core.regions.render(images, **{**args, "mode": 7})
    with pytest.raises(ValueError, match="masks"):
        _core.regions.render(images, **{**args, "masks": np.zeros((1, 3, 4), np.uint8)})


def test_cuda_requested_without_gpu_says_why():
    if clipguard.HAS_CUDA:
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CUDA backend requested but unavailable"):
        render(GOOD["images"], GOOD["masks"], [0], backend="cuda")
