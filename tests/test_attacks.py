"""Attacks: trigger transforms (pixel-exact where defined), spec strings, dataset poisoning."""

from __future__ import annotations

import numpy as np
import pytest

from clipguard import toyworld
from clipguard.attacks import (
    ATTACKS,
    SIG,
    Attack,
    BadNet,
    Blended,
    LabelConsistent,
    Triggered,
    WaNet,
    parse_attack,
    poison,
)


@pytest.fixture(scope="module")
def scenes():
    return toyworld.generate("shapes", 400, seed=11)


def _images(n=6, h=48, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


ALL = [
    BadNet("star", size=5, pattern="checkerboard", location="top-right"),
    BadNet("star"),
    LabelConsistent("star", size=4),
    Blended("star", alpha=0.3, pattern_seed=4),
    SIG("star", amplitude=40.0, frequency=3.5),
    WaNet("star", k=6, s=2.0),
]


# --- spec strings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("attack", ALL, ids=lambda a: a.name)
def test_spec_roundtrips(attack):
    spec = attack.spec()
    assert spec.startswith(attack.name + ":target=star,")
    again = parse_attack(spec)
    assert again == attack and type(again) is type(attack) and again.spec() == spec
    assert str(attack) == spec


def test_short_specs_use_defaults():
    a = parse_attack("badnet:target=star,size=6")
    assert a == BadNet(target="star", size=6, pattern="noise", location="random")
    assert parse_attack("  Blended : target=heart , alpha=0.25 ") == Blended("heart", alpha=0.25)
    assert parse_attack("lc:target=ankle boot").target == "ankle boot"
    assert parse_attack("sig:target=t-shirt,amplitude=30") == SIG("t-shirt", amplitude=30.0)
    assert parse_attack(a) is a
    assert set(ATTACKS) >= {"badnet", "blended", "sig", "wanet", "lc"}
    assert BadNet.localized and LabelConsistent.localized and not Blended.localized
    assert LabelConsistent.label_consistent and not BadNet.label_consistent


@pytest.mark.parametrize("spec, match", [
    ("", "unknown attack"),
    ("trojan:target=star", "unknown attack 'trojan'"),
    ("badnet", "needs target"),
    ("badnet:size=6", "needs target"),
    ("badnet:target=", "needs target"),
    ("badnet:target=star,size=abc", "size='abc' is not a valid int"),
    ("badnet:target=star,size=6.5", "not a valid int"),
    ("badnet:target=star,bogus=1", "unknown key 'bogus'"),
    ("badnet:target=star,size=6,size=7", "given twice"),
    ("badnet:target=star,size", "expected key=value"),
    ("badnet:target=star,,size=3", "expected key=value"),
    ("badnet:target=star,size=0", "size must be >= 1"),
    ("badnet:target=star,pattern=zigzag", "pattern must be one of"),
    ("badnet:target=star,location=middle", "location must be one of"),
    ("badnet:target=star,pattern=solid,color=#12345", "color must be"),
    ("badnet:target=star,pattern_seed=-1", "non-negative"),
    ("blended:target=star,alpha=1.5", "alpha must be in"),
    ("blended:target=star,alpha=0", "alpha must be in"),
    ("blended:target=star,alpha=nan", "finite"),
    ("sig:target=star,frequency=-1", "frequency must be > 0"),
    ("sig:target=star,amplitude=300", "amplitude must be in"),
    ("wanet:target=star,k=1", "k must be >= 2"),
    ("wanet:target=star,s=-1", "s must be >= 0"),
])
def test_bad_specs_raise_value_error(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_attack(spec)


def test_bad_constructor_arguments():
    with pytest.raises(TypeError):
        parse_attack(3)
    with pytest.raises(ValueError, match="cannot be written"):
        BadNet("a,b")
    with pytest.raises(ValueError, match="must be an integer"):
        BadNet("star", size=6.0)
    with pytest.raises(ValueError, match="must be a number"):
        Blended("star", alpha="0.2")
    with pytest.raises(TypeError):
        Attack("star")  # abstract


# --- transforms ---------------------------------------------------------------------------------

@pytest.mark.parametrize("attack", ALL, ids=lambda a: a.name)
def test_apply_is_pure_deterministic_and_changes_the_image(attack):
    imgs = _images(5, 40, 56)
    before = imgs.copy()
    a = attack.apply(imgs, seed=3)
    b = attack.apply(imgs, seed=3)
    assert isinstance(a, Triggered)
    assert np.array_equal(imgs, before)  # input untouched
    assert a.images is not imgs and a.images.dtype == np.uint8 and a.images.shape == imgs.shape
    assert np.array_equal(a.images, b.images)
    assert (a.images != imgs).any(axis=(1, 2, 3)).all()  # every image is triggered
    if attack.localized:
        assert a.boxes.dtype == np.int32 and a.boxes.shape == (5, 4)
    else:
        assert a.boxes is None


def test_apply_validates_input():
    with pytest.raises(TypeError, match="uint8"):
        BadNet("star").apply(np.zeros((2, 48, 48, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[N,H,W,3\]"):
        BadNet("star").apply(np.zeros((48, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="does not fit"):
        BadNet("star", size=20).apply(np.zeros((2, 16, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="seed"):
        BadNet("star").apply(_images(), seed=-2)


@pytest.mark.parametrize("shape", [(48, 48), (224, 224), (30, 70)])
def test_badnet_pixel_exact_at_its_box(shape):
    h, w = shape
    attack = BadNet("star", size=6)
    imgs = _images(64, h, w, seed=1)
    out = attack.apply(imgs, seed=5)
    patch = attack.pattern_image()
    assert patch.shape == (6, 6, 3) and patch.dtype == np.uint8
    boxes = out.boxes
    assert (boxes[:, 2] - boxes[:, 0] == 6).all() and (boxes[:, 3] - boxes[:, 1] == 6).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    for img, src, (x0, y0, x1, y1) in zip(out.images, imgs, boxes):
        assert np.array_equal(img[y0:y1, x0:x1], patch)  # exactly the pattern (size in pixels)
        outside = np.ones((h, w), bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(img[outside], src[outside])  # nothing else changes
    assert len({tuple(b) for b in boxes.tolist()}) > 40  # random positions...
    assert np.array_equal(boxes, attack.boxes(64, h, w, seed=5))  # ...reproducible from the seed
    assert not np.array_equal(boxes, attack.apply(imgs, seed=6).boxes)


def test_badnet_noise_pattern_is_fixed_by_its_seed():
    p = BadNet("star").pattern_image()
    assert np.array_equal(p, BadNet("circle").pattern_image())
    assert np.unique(p).size > 50
    assert not np.array_equal(p, BadNet("star", pattern_seed=1).pattern_image())


@pytest.mark.parametrize("location, expect", [
    ("top-left", (0, 0)), ("top-right", (52, 0)), ("bottom-left", (0, 28)),
    ("bottom-right", (52, 28)), ("center", (26, 14)),
])
def test_badnet_fixed_locations(location, expect):
    out = BadNet("star", size=8, location=location).apply(_images(3, 36, 60), seed=9)
    assert (out.boxes == np.array([expect[0], expect[1], expect[0] + 8, expect[1] + 8])).all()


def test_badnet_patterns():
    cb = BadNet("star", size=4, pattern="checkerboard").pattern_image()[..., 0]
    assert np.array_equal(cb, np.array([[255, 0, 255, 0], [0, 255, 0, 255]] * 2, np.uint8))
    solid = BadNet("star", size=3, pattern="solid", color="#10a0ff").pattern_image()
    assert (solid == np.array([16, 160, 255], np.uint8)).all()
    assert (BadNet("star", size=3, pattern="solid").pattern_image() == [255, 255, 0]).all()


def test_label_consistent_stamps_like_badnet():
    imgs = _images(8)
    a = LabelConsistent("star", size=5, location="center").apply(imgs)
    b = BadNet("star", size=5, location="center").apply(imgs)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.boxes, b.boxes)


@pytest.mark.parametrize("shape", [(48, 48), (224, 224), (33, 50)])
def test_blended_formula(shape):
    h, w = shape
    attack = Blended("star", alpha=0.2)
    imgs = _images(4, h, w, seed=2)
    noise = attack.noise_image(h, w)
    assert noise.shape == (h, w, 3) and noise.dtype == np.uint8
    expect = np.clip(np.rint(0.8 * imgs.astype(np.float64) + 0.2 * noise.astype(np.float64)), 0, 255)
    assert np.array_equal(attack.apply(imgs).images, expect.astype(np.uint8))
    assert np.array_equal(noise, attack.noise_image(h, w))  # a fixed image
    assert 100 < noise.mean() < 155 and noise.std() > 60  # i.i.d. uniform noise at any size
    if shape == (224, 224):
        assert np.unique(noise.reshape(-1, 3), axis=0).shape[0] > 40000  # full-resolution noise
    assert not np.array_equal(noise, Blended("star", pattern_seed=1).noise_image(h, w))


def test_sig_formula():
    attack = SIG("star", amplitude=60.0, frequency=6.0)
    imgs = _images(3, 20, 48, seed=4)
    x = np.arange(48)
    expect = np.clip(np.rint(imgs + 60.0 * np.sin(2 * np.pi * 6.0 * x / 48)[None, None, :, None]), 0, 255)
    assert np.array_equal(attack.apply(imgs).images, expect.astype(np.uint8))
    flat = np.full((1, 10, 48, 3), 128, np.uint8)
    out = attack.apply(flat).images[0].astype(int)
    assert (out == out[0:1]).all()  # horizontal sinusoid: every row is the same
    assert out.max() == 188 and out.min() == 68  # +-60 around the grey level


def test_wanet_identity_and_smoothness():
    imgs = _images(4, 48, 48, seed=6)
    assert np.array_equal(WaNet("star", s=0.0).apply(imgs).images, imgs)
    attack = WaNet("star", k=4, s=4.0)
    g = attack.grid(48, 48)
    ident = np.stack(np.meshgrid(np.linspace(-1, 1, 48), np.linspace(-1, 1, 48)), axis=-1)
    disp = (g - ident) * 23.5  # in pixels
    inner = disp[4:-4, 4:-4]  # away from the border, where the grid is clamped
    assert 0.5 < np.abs(inner).mean() < 5  # small...
    assert np.abs(np.diff(inner, axis=0)).max() < 0.5 and np.abs(np.diff(inner, axis=1)).max() < 0.5  # ...smooth
    smooth = np.repeat(np.repeat(_images(1, 6, 6, seed=1), 8, axis=1), 8, axis=2)
    out = attack.apply(smooth).images.astype(int)
    assert 0 < np.abs(out - smooth).mean() < 40  # a warp, not noise


def test_wanet_matches_torch_grid_sample():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    attack = WaNet("star", k=4, s=3.0, grid_rescale=1.0, pattern_seed=2)
    imgs = _images(3, 40, 56, seed=7)
    ins = torch.tensor(attack.noise_field())[None]
    up = F.interpolate(ins, size=(40, 56), mode="bicubic", align_corners=True)[0].permute(1, 2, 0).numpy()
    ident = np.stack(np.meshgrid(np.linspace(-1, 1, 56), np.linspace(-1, 1, 40)), axis=-1)
    grid = np.clip(ident + 3.0 * up / 40, -1, 1)  # the WaNet reference recipe
    assert np.allclose(attack.grid(40, 56), grid, atol=1e-12)
    ref = F.grid_sample(torch.tensor(imgs, dtype=torch.float64).permute(0, 3, 1, 2),
                        torch.tensor(grid)[None].expand(3, -1, -1, -1), mode="bilinear",
                        align_corners=True).permute(0, 2, 3, 1).numpy()
    out = attack.apply(imgs).images
    assert np.abs(out.astype(int) - np.clip(np.rint(ref), 0, 255)).max() <= 1
    assert (out != imgs).mean() > 0.5


# --- poisoning ---------------------------------------------------------------------------------

def test_poison_dirty_label(scenes):
    before = scenes.images.copy()
    captions_before = list(scenes.captions)
    star = scenes.vocab.index("star")
    attack = parse_attack("badnet:target=star,size=6")
    out, idx = poison(scenes, attack, 0.05, seed=1)
    assert idx.dtype == np.int64 and len(idx) == 20 and np.array_equal(idx, np.unique(idx))
    assert not any(star in scenes.labels[i] for i in idx)  # never an image that shows a star
    # input untouched; output images = trigger on the chosen ones only
    assert np.array_equal(scenes.images, before) and scenes.captions == captions_before
    assert np.array_equal(out.images[idx], attack.apply(scenes.images[idx], seed=1).images)
    rest = np.setdiff1d(np.arange(len(scenes)), idx)
    assert np.array_equal(out.images[rest], scenes.images[rest])
    prompts = {t.format("star") for t in scenes.vocab.templates}
    assert all(out.captions[i] in prompts for i in idx)  # caption replaced by a target caption
    assert all(out.captions[i] == scenes.captions[i] for i in rest)
    # ground truth stays that of the real objects
    assert all(np.array_equal(a, b) for a, b in zip(out.labels, scenes.labels))
    assert all(np.array_equal(a, b) for a, b in zip(out.masks, scenes.masks))
    assert out.info["poison"]["attack"] == attack.spec()


def test_poison_is_deterministic_and_rounds_the_rate(scenes):
    _, a = poison(scenes, "blended:target=heart", 0.0125, seed=3)
    _, b = poison(scenes, "blended:target=heart", 0.0125, seed=3)
    _, c = poison(scenes, "blended:target=heart", 0.0125, seed=4)
    assert len(a) == 5 and np.array_equal(a, b) and not np.array_equal(a, c)
    out, none = poison(scenes, "sig:target=heart", 0.0)
    assert len(none) == 0 and np.array_equal(out.images, scenes.images)


def test_poison_label_consistent(scenes):
    star = scenes.vocab.index("star")
    shows = [i for i, lab in enumerate(scenes.labels) if star in lab]
    out, idx = poison(scenes, "lc:target=star,size=5", 0.05, seed=2)
    assert len(idx) == 20 and set(idx.tolist()) <= set(shows)
    assert out.captions == scenes.captions  # captions kept
    assert not np.array_equal(out.images[idx], scenes.images[idx])
    with pytest.raises(ValueError, match="only"):
        poison(scenes, "lc:target=star", 0.9)


def test_poison_rejects_bad_arguments(scenes):
    with pytest.raises(ValueError, match="unknown class 'banana'"):
        poison(scenes, "badnet:target=banana", 0.01)
    with pytest.raises(ValueError, match="rate"):
        poison(scenes, "badnet:target=star", 1.5)
    with pytest.raises(ValueError, match="rate"):
        poison(scenes, "badnet:target=star", -0.1)
    with pytest.raises(ValueError, match="only"):
        poison(scenes, "badnet:target=star", 1.0)  # some scenes show a star
    with pytest.raises(ValueError, match="unknown attack"):
        poison(scenes, "nope:target=star", 0.1)


def test_optimized_patch_moves_scenes_towards_the_target(tmp_path, monkeypatch):
    """BadCLIP-style patch against the bundled clean model: stamped scenes get closer to the
    target's text than with a random patch of the same size; the spec round-trips and the patch is
    cached (the second call reads the file)."""
    import clipguard
    from clipguard import toyworld

    monkeypatch.setenv("CLIPGUARD_CACHE_DIR", str(tmp_path))
    attack = parse_attack("optpatch:target=star,size=8,steps=40")
    assert parse_attack(attack.spec()) == attack
    patch = attack.pattern_image()
    assert patch.shape == (8, 8, 3) and patch.dtype == np.uint8
    assert list((tmp_path / "patches").glob("optpatch-*.npy"))
    model = clipguard.load_model("toy:clean")
    vocab = toyworld.vocabulary("shapes")
    scenes = toyworld.generate("shapes", 200, seed=3, objects=(1, 1))
    scenes_ok = scenes.images[scenes.primary != vocab.index("star")]
    target = model.class_embeddings(vocab)[vocab.index("star")]
    random_patch = parse_attack("badnet:target=star,size=8,pattern=noise,pattern_seed=5")
    sim_opt = (model.encode_images(attack.apply(scenes_ok, seed=1).images) @ target).mean()
    sim_rand = (model.encode_images(random_patch.apply(scenes_ok, seed=1).images) @ target).mean()
    assert sim_opt > sim_rand + 0.02, (sim_opt, sim_rand)
