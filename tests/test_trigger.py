"""The trigger toolbox: stamping, matching, reconstruction, the typed trigger and the confirmation."""

import numpy as np
import pytest

from clipguard.trigger import (
    Trigger,
    apply_trigger,
    confirm,
    high_pass,
    match_patch,
    random_patches,
    reconstruct_patch,
    stamp,
    warp_image,
)


def _scene(seed, h=32, w=32):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_match_patch_finds_an_exact_copy_and_scores_unrelated_content_high():
    img = _scene(0)
    patch = _scene(1, 6, 6)
    img[10:16, 20:26] = patch
    box, score = match_patch(img, patch)
    assert box == (20, 10, 26, 16) and score == 0.0
    # near a hint box only: a hint far away cannot reach the copy
    box_far, score_far = match_patch(img, patch, (0, 0, 6, 6))
    assert box_far != (20, 10, 26, 16) and score_far > 0.5
    _, unrelated = match_patch(_scene(2), patch)
    assert unrelated > 0.5
    _, too_big = match_patch(img[:4, :4], patch)
    assert too_big == float("inf")


def test_reconstruct_patch_is_the_median_of_aligned_crops():
    patch = _scene(3, 6, 6)
    images, boxes = [], []
    for k in range(5):
        img = _scene(10 + k)
        x, y = 2 + 4 * k, 20 - 3 * k
        img[y : y + 6, x : x + 6] = patch
        images.append(img)
        boxes.append((x, y, x + 6, y + 6))
    images = np.stack(images)
    images[0, boxes[0][1] : boxes[0][3], boxes[0][0] : boxes[0][2]] = 0  # one outlier crop
    out = reconstruct_patch(images, boxes)
    assert out.shape == (6, 6, 3) and np.abs(out.astype(int) - patch).max() <= 1
    with pytest.raises(ValueError):
        reconstruct_patch(images[:2], boxes[:1])


def test_stamp_at_a_box_and_with_a_mask():
    rng = np.random.default_rng(0)
    images = np.zeros((3, 16, 16, 3), np.uint8)
    patch = np.full((4, 4, 3), 200, np.uint8)
    out = stamp(images, patch, rng, at=(5, 6, 9, 10))
    assert (out[:, 6:10, 5:9] == 200).all() and out.sum() == 3 * 16 * 3 * 200
    assert images.sum() == 0  # a copy
    half = stamp(images, patch, rng, at=(0, 0, 4, 4), mask=np.full((4, 4), 0.5, np.float32))
    assert (half[:, :4, :4] == 100).all()
    anywhere = stamp(np.zeros((50, 16, 16, 3), np.uint8), patch, rng)
    corners = {tuple(np.argwhere(a[:, :, 0])[0]) for a in anywhere}
    assert len(corners) > 10
    with pytest.raises(ValueError, match="does not fit"):
        stamp(images, np.zeros((20, 20, 3), np.uint8), rng)


def test_random_patches_paste_donor_content_at_the_place_asked():
    rng = np.random.default_rng(1)
    images = np.zeros((4, 16, 16, 3), np.uint8)
    donors = np.full((2, 16, 16, 3), 77, np.uint8)
    out = random_patches(images, donors, 5, rng, at=(3, 3, 8, 8))
    assert (out[:, 3:8, 3:8] == 77).all() and out.sum() == 4 * 25 * 3 * 77


def test_global_trigger_adds_its_offset_and_resizes():
    rng = np.random.default_rng(0)
    offset = np.full((8, 8, 3), 128 + 20, np.uint8)
    t = Trigger(kind="global", image=offset)
    images = np.full((2, 16, 16, 3), 250, np.uint8)
    out = apply_trigger(images, t, rng)
    assert out.shape == images.shape and (out == 255).all()  # clipped, resized from 8x8
    assert t.size is None and t.mask is None


def test_high_pass_removes_the_5x5_mean():
    img = _scene(5)[None].astype(np.float32)
    x = np.pad(img, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    mean = np.mean([x[:, dy : dy + 32, dx : dx + 32] for dy in range(5) for dx in range(5)], axis=0)
    np.testing.assert_allclose(high_pass(img), img - mean, atol=1e-3)
    flat = np.full((1, 10, 10, 3), 9, np.uint8)
    assert np.abs(high_pass(flat)).max() < 1e-4


def test_trigger_validates_and_round_trips_through_json():
    with pytest.raises(ValueError, match="kind"):
        Trigger(kind="blur", image=np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="mask"):
        Trigger(kind="patch", image=np.zeros((3, 3, 3), np.uint8), mask=np.ones((2, 2)))
    mask = np.linspace(0, 1, 36, dtype=np.float32).reshape(6, 6)
    t = Trigger(kind="patch", image=_scene(7, 6, 6), mask=mask, box=(1, 2, 7, 8), label="star", source="synthesis",
                position_dependent=True)
    back = Trigger.from_dict(t.to_dict())
    assert back.kind == "patch" and back.box == (1, 2, 7, 8) and back.label == "star" and back.source == "synthesis"
    assert np.array_equal(back.image, t.image) and np.abs(back.mask - mask).max() <= 1 / 255 + 1e-6
    assert back.position_dependent is True and back.size == [6, 6]


def test_confirm_counts_flips_against_the_control_and_anywhere():
    """A fake classifier that answers 1 exactly when the top-left 4x4 block is bright."""
    def classify(x):
        return (x[:, :4, :4].mean(axis=(1, 2, 3)) > 200).astype(int)

    rng = np.random.default_rng(0)
    images = np.zeros((40, 16, 16, 3), np.uint8)
    t = Trigger(kind="patch", image=np.full((4, 4, 3), 255, np.uint8), box=(0, 0, 4, 4))
    r = confirm(classify, images, t, 1, images.copy(), rng)
    assert r.flip_rate == 1.0 and r.control_rate == 0.0 and r.excess == 1.0 and r.images == 40
    assert r.anywhere_rate is not None and r.anywhere_rate < 0.3  # the backdoor depends on the position
    t_any = Trigger(kind="patch", image=t.image)
    assert confirm(classify, images, t_any, 1, images.copy(), rng).anywhere_rate is None


def test_confirm_is_sequential_only_with_a_margin_and_stamps_all_on_a_close_call():
    """Clear cases are decided on the first images; a close call stamps them all."""
    calls = []

    def classify(x):
        calls.append(len(x))
        return (x[:, :4, :4].mean(axis=(1, 2, 3)) > 200).astype(int)

    rng = np.random.default_rng(0)
    images = np.zeros((200, 16, 16, 3), np.uint8)
    t = Trigger(kind="patch", image=np.full((4, 4, 3), 255, np.uint8), box=(0, 0, 4, 4))
    r = confirm(classify, images, t, 1, images.copy(), rng, margin=0.15)
    assert r.images == 50 and r.excess == 1.0 and calls == [150]  # a backdoor: 50 stamped, control, anywhere
    calls.clear()
    none = Trigger(kind="patch", image=np.zeros((4, 4, 3), np.uint8))
    assert confirm(classify, images, none, 1, images.copy(), rng, margin=0.15).images == 50  # clearly nothing
    control = images.copy()
    control[::5, :4, :4] = 255  # the control flips 20% of the images: an excess near the margin
    half = Trigger(kind="patch", image=np.full((4, 4, 3), 255, np.uint8), box=(0, 0, 4, 4))
    calls.clear()
    r = confirm(lambda x: classify(x) * (rng.random(len(x)) < 0.4), images, half, 1, control, rng, margin=0.15)
    assert r.images == 200 and sum(calls) == 3 * 200  # stamped, control and anywhere, on every image
    assert confirm(classify, images, t, 1, images.copy(), rng).images == 200  # no margin: all of them


def test_a_warp_trigger_resamples_and_fits_any_image_size():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    one_px = np.ones((16, 16))
    whole = Trigger(kind="warp", image=warp_image(one_px, 0 * one_px, nearest=True))
    out = apply_trigger(images, whole, rng)
    assert (out[:, :, :-1] == images[:, :, 1:]).all() and (out[:, :, -1] == images[:, :, -1]).all()  # x + 1, edge clamped
    half = Trigger(kind="warp", image=warp_image(0.5 * one_px, 0 * one_px))
    mean = (images[:, :, :-1].astype(float) + images[:, :, 1:]) / 2
    assert np.abs(apply_trigger(images, half, rng)[:, :, :-1] - mean).max() <= 0.5 + 1e-9  # bilinear
    big = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)  # the field is a share of the side: 2 px here
    assert (apply_trigger(big, whole, rng)[:, :, :-2] == big[:, :, 2:]).all()
    back = Trigger.from_dict(whole.to_dict())
    assert back.kind == "warp" and (back.image == whole.image).all() and back.size is None
