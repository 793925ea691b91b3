"""Toy worlds (shapes, fashion) and the Vocabulary."""

from __future__ import annotations

import gzip
import json
import re
import time

import numpy as np
import pytest

from clipguard import toyworld
from clipguard.toyworld import fashion, shapes
from clipguard.toyworld.scenes import PALETTE, Scenes
from clipguard.vocab import Vocabulary

needs_fashion = pytest.mark.skipif(
    not fashion.available(), reason=f"Fashion-MNIST files absent; install with: {fashion.INSTALL_HINT}")


@pytest.fixture(scope="module")
def mixed():
    return toyworld.generate("shapes", 600, seed=3)


@pytest.fixture(scope="module")
def single():
    return toyworld.generate("shapes", 500, seed=4, objects=(1, 1))


def _same(a: Scenes, b: Scenes) -> bool:
    return (np.array_equal(a.images, b.images) and a.captions == b.captions
            and all(np.array_equal(x, y) for x, y in zip(a.labels, b.labels))
            and all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks)))


# --- Vocabulary --------------------------------------------------------------------------------

def test_vocabulary_prompts_index_len():
    v = Vocabulary(["cat", "dog"], ["a photo of a {}.", "a {}."])
    assert v.classnames == ("cat", "dog") and isinstance(v.templates, tuple)
    assert len(v) == 2
    assert v.prompts() == [["a photo of a cat.", "a cat."], ["a photo of a dog.", "a dog."]]
    assert v.index("dog") == 1
    with pytest.raises(ValueError, match="'bird'"):
        v.index("bird")
    assert Vocabulary(("x",)).prompts() == [["a photo of a x."]]


@pytest.mark.parametrize("kwargs, match", [
    (dict(classnames=()), "at least one class"),
    (dict(classnames=("a", "a")), "duplicate"),
    (dict(classnames=("a", " ")), "empty"),
    (dict(classnames=("a",), templates=("no placeholder",)), "exactly one"),
    (dict(classnames=("a",), templates=("{} and {}",)), "exactly one"),
    (dict(classnames=("a",), templates=()), "at least one prompt"),
])
def test_vocabulary_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Vocabulary(**kwargs)


def test_vocabulary_rejects_bad_types():
    with pytest.raises(TypeError):
        Vocabulary("cat")
    with pytest.raises(TypeError):
        Vocabulary(("cat", 3))


def test_vocabulary_json_roundtrip(tmp_path):
    v = Vocabulary(("t-shirt", "ankle boot"), ("a photo of a {}.", "a {}."))
    path = tmp_path / "v.json"
    v.to_json(path)
    assert json.loads(path.read_text()) == {"classnames": ["t-shirt", "ankle boot"],
                                             "templates": ["a photo of a {}.", "a {}."]}
    assert Vocabulary.from_json(path) == v
    # a plain list of class names is accepted too, with the default template
    (tmp_path / "l.json").write_text('["a", "b"]')
    assert Vocabulary.from_json(tmp_path / "l.json") == Vocabulary(("a", "b"))


@pytest.mark.parametrize("content, match", [
    ("{not json", "invalid JSON"),
    ('{"templates": ["a {}."]}', "missing required key 'classnames'"),
    ('{"classnames": "cat"}', "must be a list"),
    ('{"classnames": ["a", "a"]}', "duplicate"),
    ('{"classnames": ["a"], "extra": 1}', "unknown keys"),
    ('{"classnames": [1, 2]}', "must be a string"),
    ("42", "expected a JSON object"),
])
def test_vocabulary_from_json_errors_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        Vocabulary.from_json(path)
    assert "bad.json" in str(info.value)


def test_vocabulary_from_json_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Vocabulary.from_json(tmp_path / "nope.json")


def test_world_vocabularies():
    v = toyworld.vocabulary("shapes")
    assert len(v) >= 10 and "star" in v.classnames and len(set(v.classnames)) == len(v)
    assert toyworld.vocabulary("fashion").classnames[9] == "ankle boot"
    assert set(toyworld.WORLDS) == {"shapes", "fashion"}
    with pytest.raises(ValueError, match="unknown world"):
        toyworld.vocabulary("nope")


# --- shapes world --------------------------------------------------------------------------------

def test_shapes_types_and_shapes(mixed):
    sc = mixed
    assert len(sc) == 600 and sc.images.shape == (600, 48, 48, 3) and sc.images.dtype == np.uint8
    assert sc.world == "shapes" and sc.vocab == toyworld.vocabulary("shapes")
    counts = np.array([len(lab) for lab in sc.labels])
    assert counts.min() == 1 and counts.max() == 3 and set(np.bincount(counts)[1:] > 100) == {True}
    for lab, m, col in zip(sc.labels, sc.masks, sc.colors):
        assert lab.dtype == np.int64 and m.dtype == bool and col.dtype == np.uint8
        assert m.shape == (len(lab), 48, 48) and col.shape == (len(lab), 3)
        assert len(set(lab.tolist())) == len(lab)  # distinct classes in a scene
        assert (lab >= 0).all() and (lab < len(sc.vocab)).all()
    assert sc.primary.dtype == np.int64 and sc.primary.shape == (600,)


def test_shapes_deterministic_by_seed_and_split():
    a = toyworld.generate("shapes", 150, seed=7)
    b = toyworld.generate("shapes", 150, seed=7)
    assert _same(a, b)
    c = toyworld.generate("shapes", 150, seed=8)
    assert not np.array_equal(a.images, c.images)
    d = toyworld.generate("shapes", 150, seed=7, split="test")
    assert not np.array_equal(a.images, d.images)


def test_masks_are_the_visible_object_pixels(mixed):
    for img, m, col in zip(mixed.images, mixed.masks, mixed.colors):
        union = np.zeros(img.shape[:2], dtype=int)
        for mj, cj in zip(m, col):
            assert mj.sum() > 20  # every object stays visible
            assert (img[mj] == cj).all()  # a mask region has exactly its object's colour
            union += mj
        assert union.max() == 1  # visible masks are disjoint


def test_object_colours_come_from_the_palette_and_match_captions(mixed):
    pal = {k: np.array(v) for k, v in PALETTE.items()}
    for cap, col in zip(mixed.captions, mixed.colors):
        for c in col:
            name = min(pal, key=lambda k: np.abs(pal[k] - c.astype(int)).max())
            assert np.abs(pal[name] - c.astype(int)).max() <= 14
            assert re.search(rf"\b{name}\b", cap), (name, cap)


def test_captions_name_every_object(mixed):
    names = mixed.vocab.classnames
    for cap, lab in zip(mixed.captions, mixed.labels):
        mentioned = {n for n in names if re.search(rf"\b{n}\b", cap)}
        assert mentioned == {names[i] for i in lab}, cap


def test_primary_is_the_largest_visible_object(mixed):
    for p, lab, m in zip(mixed.primary, mixed.labels, mixed.masks):
        areas = m.reshape(len(lab), -1).sum(1)
        assert areas[list(lab).index(p)] == areas.max()


def test_class_balance(single, mixed):
    assert single.images.shape[0] == 500
    assert all(len(lab) == 1 for lab in single.labels)
    assert np.array_equal(single.primary, np.array([lab[0] for lab in single.labels]))
    assert (np.bincount(single.primary, minlength=10) == 50).all()  # exactly balanced
    counts = np.bincount(mixed.primary, minlength=10)
    assert counts.min() >= 0.6 * counts.mean() and counts.max() <= 1.4 * counts.mean()
    objs = np.bincount(np.concatenate(mixed.labels), minlength=10)
    assert objs.min() >= 0.7 * objs.mean()


def test_colour_does_not_reveal_the_class():
    sc = toyworld.generate("shapes", 2000, seed=5, objects=(1, 1))
    names = list(PALETTE)
    pal = np.array([PALETTE[k] for k in names])
    cid = np.array([np.abs(pal - c[0].astype(int)).max(1).argmin() for c in sc.colors])
    table = np.zeros((10, len(names)))
    np.add.at(table, (sc.primary, cid), 1)
    # every class appears in most colours, and no colour is concentrated on one class
    assert ((table > 0).sum(1) >= len(names) - 2).all()
    share = table / table.sum(0, keepdims=True)
    assert share.max() < 0.3


def test_shape_geometry_is_recognizable(single):
    """Object sizes in the documented range; rings have a hole, circles do not."""
    names = single.vocab.classnames
    for lab, m in zip(single.labels, single.masks):
        ys, xs = np.nonzero(m[0])
        extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
        assert 12 <= extent <= 34, (names[lab[0]], extent)
        cy, cx = int(round(ys.mean())), int(round(xs.mean()))
        fill = m[0].sum() / extent**2
        if names[lab[0]] == "ring":
            assert not m[0][cy, cx] and fill < 0.6
        if names[lab[0]] in ("circle", "square", "heart"):
            assert m[0][cy, cx] and fill > 0.6
        if names[lab[0]] == "star":
            assert fill < 0.5


def test_shapes_masks_by_class_are_distinct():
    """The mean mask of each class (unrotated) differs from every other class's."""
    n = 40
    means = []
    for name in shapes.CLASSNAMES:
        m = shapes.shape_masks(name, 48, np.full(n, 24.0), np.full(n, 24.0), np.full(n, 11.0), np.zeros(n))
        assert m.shape == (n, 48, 48) and m.dtype == bool
        means.append(m[0].astype(float))
    for i in range(len(means)):
        for j in range(i + 1, len(means)):
            assert np.abs(means[i] - means[j]).sum() > 25, (shapes.CLASSNAMES[i], shapes.CLASSNAMES[j])


@pytest.mark.parametrize("size", [24, 33, 224])
def test_shapes_other_sizes_scale_objects(size):
    sc = toyworld.generate("shapes", 20, seed=1, size=size, objects=(1, 1))
    assert sc.images.shape == (20, size, size, 3) and sc.masks[0].shape == (1, size, size)
    frac = np.mean([m.mean() for m in sc.masks])
    ref = np.mean([m.mean() for m in toyworld.generate("shapes", 20, seed=1, objects=(1, 1)).masks])
    assert 0.6 * ref < frac < 1.6 * ref  # objects keep their relative size


def test_objects_argument():
    sc = toyworld.generate("shapes", 50, seed=2, objects=(2, 3))
    assert {len(lab) for lab in sc.labels} == {2, 3}
    assert len(toyworld.generate("shapes", 0)) == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(objects=(0, 2)), "objects"),
    (dict(objects=(2, 1)), "objects"),
    (dict(objects=(1, 4)), "objects"),
    (dict(size=8), "size"),
    (dict(split="val"), "split"),
    (dict(seed=-1), "seed"),
])
def test_generate_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        toyworld.generate("shapes", 5, **kwargs)
    with pytest.raises(ValueError, match="unknown world"):
        toyworld.generate("circles", 5)
    with pytest.raises(ValueError, match="n must be"):
        toyworld.generate("shapes", -1)


def test_subset(mixed):
    sub = mixed.subset([5, 0, 5])
    assert len(sub) == 3 and np.array_equal(sub.images[1], mixed.images[0])
    assert sub.captions == [mixed.captions[5], mixed.captions[0], mixed.captions[5]]
    assert np.array_equal(sub.primary, mixed.primary[[5, 0, 5]])
    mask = np.zeros(len(mixed), bool)
    mask[[3, 9]] = True
    assert mixed.subset(mask).captions == [mixed.captions[3], mixed.captions[9]]
    assert len(mixed.subset(slice(10, 20))) == 10
    assert len(mixed.subset([])) == 0
    with pytest.raises(IndexError):
        mixed.subset([600])
    sub.images[0] = 0  # a subset owns its images
    assert mixed.images[5].any()


def test_generation_is_fast():
    t0 = time.perf_counter()
    toyworld.generate("shapes", 2000, seed=0)
    assert time.perf_counter() - t0 < 5.0  # ~0.4 s here; per-pixel Python loops would take minutes


# --- fashion world ---------------------------------------------------------------------------------

def _write_idx(folder, stem, images, labels):
    with gzip.open(folder / f"{stem}-images-idx3-ubyte.gz", "wb") as fh:
        fh.write((0x803).to_bytes(4, "big") + len(images).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
        fh.write(images.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{stem}-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write((0x801).to_bytes(4, "big") + len(labels).to_bytes(4, "big"))
        fh.write(labels.astype(np.uint8).tobytes())


def test_fashion_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("apt-get install -y dataset-fashion-mnist")):
        toyworld.generate("fashion", 4, data_dir=tmp_path)


def test_fashion_corrupt_file_is_a_clear_error(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        fashion.load_items("train", str(tmp_path))


def test_fashion_synthetic_items_geometry_and_split(tmp_path):
    """With fake items (train: a full square, test: a 14-px-wide bar), masks have their shape."""
    square = np.full((10, 28, 28), 255)
    bar = np.zeros((10, 28, 28))
    bar[:, :, 7:21] = 255
    _write_idx(tmp_path, "train", square, np.arange(10))
    _write_idx(tmp_path, "t10k", bar, np.arange(10))
    for split, aspect in (("train", 1.0), ("test", 0.5)):
        sc = fashion.generate(30, seed=0, objects=(1, 1), split=split, data_dir=tmp_path)
        for m in sc.masks:
            ys, xs = np.nonzero(m[0])
            h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            assert m[0].sum() == h * w  # a filled rectangle, pasted without holes
            assert abs(w / h - aspect) < 0.15, (split, w, h)
            assert 22 <= h <= 64


@needs_fashion
def test_fashion_world_scenes():
    sc = toyworld.generate("fashion", 200, seed=1)
    assert sc.images.shape == (200, 64, 64, 3) and sc.images.dtype == np.uint8
    assert sc.vocab.classnames == fashion.CLASSNAMES and sc.world == "fashion"
    assert _same(sc, toyworld.generate("fashion", 200, seed=1))
    names = sc.vocab.classnames
    for img, lab, m, col, cap in zip(sc.images, sc.labels, sc.masks, sc.colors, sc.captions):
        assert m.shape == (len(lab), 64, 64) and m.dtype == bool
        assert m.sum(0).max() <= 1
        for mj, cj, lj in zip(m, col, lab):
            assert mj.sum() > 30
            assert re.search(rf"\b{re.escape(names[lj])}\b", cap), cap
            # pixels of an item are its tint times a shade in [0.3, 1]
            px = img[mj].astype(float)
            tint = cj.astype(float)
            shade = px @ tint / (tint @ tint)
            assert (shade > 0.25).all() and (shade < 1.05).all()
            if np.ptp(tint) > 100:  # a saturated tint: pixels must lie along it
                assert np.abs(px - shade[:, None] * tint).max() <= 3
    single = toyworld.generate("fashion", 100, seed=2, objects=(1, 1), split="test")
    assert (np.bincount(single.primary, minlength=10) == 10).all()


@needs_fashion
def test_fashion_splits_use_different_items():
    train, _ = fashion.load_items("train")
    test, _ = fashion.load_items("test")
    assert train.shape == (60000, 28, 28) and test.shape == (10000, 28, 28)
    a = toyworld.generate("fashion", 50, seed=0, split="train", objects=(1, 1), size=28 * 2)
    b = toyworld.generate("fashion", 50, seed=0, split="test", objects=(1, 1), size=28 * 2)
    assert not np.array_equal(a.images, b.images)
