import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from clipguard import _core
from clipguard.scoring import compare, label_anomaly


def embeddings(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def assert_same_labels(got, expected, probs_of):
    """Labels equal, except where the reference's probabilities tie (float32 vs float64)."""
    differ = got != expected
    if differ.any():
        rows = np.nonzero(differ)[0]
        p_got = np.take_along_axis(probs_of(rows), got[rows].astype(np.int64), 1)
        p_exp = np.take_along_axis(probs_of(rows), expected[rows], 1)
        np.testing.assert_allclose(p_got, p_exp, atol=1e-5)


def assert_matches_reference(got, region, image, index, text, scale, k):
    rl, rp, il, ip, cos = ref.compare(region, image, index, text, scale, k)
    assert_same_labels(got.region_labels, rl, lambda rows: ref.probabilities(region[rows], text, scale))
    assert_same_labels(got.image_labels, il, lambda rows: ref.probabilities(image[rows], text, scale))
    np.testing.assert_allclose(got.region_probs, rp, atol=2e-5)
    np.testing.assert_allclose(got.image_probs, ip, atol=2e-5)
    np.testing.assert_allclose(got.region_image_cos, cos, atol=2e-5)


@settings(max_examples=40, deadline=None)
@given(
    r=st.integers(0, 150), n=st.integers(1, 70), c=st.integers(1, 120), d=st.integers(1, 70),
    k=st.integers(1, 6), scale=st.sampled_from([1.0, 30.0, 100.0]), seed=st.integers(0, 2**31),
)
def test_compare_matches_numpy_reference(r, n, c, d, k, scale, seed):
    rng = np.random.default_rng(seed)
    k = min(k, c)
    region, image, text = embeddings(rng, r, d), embeddings(rng, n, d), embeddings(rng, c, d)
    index = rng.integers(0, n, r)
    got = compare(region, image, index, text, scale, k)
    assert got.region_labels.shape == (r, k) and got.region_labels.dtype == np.int32
    assert got.image_probs.shape == (n, k) and got.region_image_cos.shape == (r,)
    assert_matches_reference(got, region, image, index, text, scale, k)


def test_compare_backends_agree(backend):
    rng = np.random.default_rng(0)
    region, image, text = embeddings(rng, 300, 64), embeddings(rng, 40, 64), embeddings(rng, 77, 64)
    index = rng.integers(0, 40, 300)
    got = compare(region, image, index, text, 100.0, 5, backend=backend)
    assert_matches_reference(got, region, image, index, text, 100.0, 5)


def test_compare_is_invariant_to_embedding_norm():
    rng = np.random.default_rng(1)
    region, image, text = embeddings(rng, 20, 16), embeddings(rng, 5, 16), embeddings(rng, 9, 16)
    index = rng.integers(0, 5, 20)
    a = compare(region, image, index, text, 50.0, 3)
    b = compare(region * 7.5, image * 0.01, index, text * 3, 50.0, 3)
    np.testing.assert_array_equal(a.region_labels, b.region_labels)
    np.testing.assert_allclose(a.region_probs, b.region_probs, atol=1e-5)


def test_compare_zero_vectors_and_ties():
    text = np.eye(4, dtype=np.float32)
    region = np.zeros((1, 4), np.float32)  # zero region: uniform probabilities, ties to low index
    image = np.array([[1, 0, 0, 0]], np.float32)
    got = compare(region, image, [0], text, 10.0, 4)
    np.testing.assert_array_equal(got.region_labels[0], [0, 1, 2, 3])
    np.testing.assert_allclose(got.region_probs[0], 0.25, atol=1e-6)
    assert got.region_image_cos[0] == 0
    assert got.image_labels[0, 0] == 0
    np.testing.assert_allclose(got.image_probs[0].sum(), 1.0, atol=1e-6)  # k == C: all mass


def test_compare_probabilities_are_the_softmax():
    text = np.array([[1, 0], [0, 1]], np.float32)
    image = np.array([[1, 0]], np.float32)
    got = compare(np.zeros((0, 2), np.float32), image, np.zeros(0, int), text, 2.0, 2)
    e = np.exp([2.0, 0.0])
    np.testing.assert_allclose(got.image_probs[0], e / e.sum(), rtol=1e-6)
    assert got.region_labels.shape == (0, 2)


GOOD = dict(
    region_emb=np.ones((2, 3), np.float32), image_emb=np.ones((1, 3), np.float32),
    image_index=[0, 0], text_emb=np.eye(3, dtype=np.float32), scale=10.0, k=2,
)


@pytest.mark.parametrize(
    "change, error, words",
    [
        (dict(region_emb=np.array([[np.nan, 0, 0], [1, 1, 1]], np.float32)), ValueError, "NaN or Inf"),
        (dict(image_emb=np.array([[np.inf, 0, 0]], np.float32)), ValueError, "NaN or Inf"),
        (dict(text_emb=np.full((3, 3), np.nan, np.float32)), ValueError, "text_emb"),
        (dict(region_emb=np.ones((2, 4), np.float32)), ValueError, "dimension 4"),
        (dict(region_emb=np.ones((2, 3), np.int64)), TypeError, "float"),
        (dict(region_emb=np.ones(3, np.float32)), ValueError, "[rows, D]"),
        (dict(image_index=[0, 1]), ValueError, "[0, 1)"),
        (dict(image_index=[0]), ValueError, "expected 2"),
        (dict(k=0), ValueError, "k must be"),
        (dict(k=4), ValueError, "k must be"),
        (dict(scale=float("nan")), ValueError, "scale"),
        (dict(text_emb=np.zeros((0, 3), np.float32)), ValueError, "non-empty"),
    ],
)
def test_compare_bad_inputs(change, error, words):
    with pytest.raises(error) as info:
        compare(**{**GOOD, **change})
    assert words in str(info.value)


def test_compare_native_boundary_checks_again():
    args = {k: np.asarray(v) for k, v in GOOD.items() if k not in ("scale", "k")}
    args["image_index"] = args["image_index"].astype(np.int64)
    _core.scoring.compare(**args, scale=1.0, k=1)
    with pytest.raises(ValueError, match="dtype"):
        _core.scoring.compare(**{**args, "region_emb": args["region_emb"].astype(np.float64)}, scale=1.0, k=1)
    with pytest.raises(ValueError, match="k must be"):
        _core.scoring.compare(**args, scale=1.0, k=9)
    with pytest.raises(ValueError, match="out of range"):
        _core.scoring.compare(**{**args, "image_index": np.array([0, 5], np.int64)}, scale=1.0, k=1)


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(0, 50), min_size=1, max_size=30),
    seed=st.integers(0, 2**31),
)
def test_label_anomaly_matches_reference(counts, seed):
    rng = np.random.default_rng(seed)
    totals = np.array(counts) + rng.integers(0, 50, len(counts))
    np.testing.assert_allclose(label_anomaly(counts, totals), ref.label_anomaly(counts, totals), rtol=1e-9)


def test_label_anomaly_flags_the_outlier():
    totals = np.full(10, 100.0)
    counts = np.array([2, 3, 1, 2, 4, 2, 3, 40, 2, 1], float)
    index = label_anomaly(counts, totals)
    assert index.argmax() == 7 and index[7] > 10
    assert (np.delete(index, 7) < 2).all()


def test_label_anomaly_degenerate_cases():
    np.testing.assert_array_equal(label_anomaly([3, 3, 3], [10, 10, 10]), [0, 0, 0])
    np.testing.assert_array_equal(label_anomaly([0, 0], [0, 0]), [0, 0])  # nothing predicted
    index = label_anomaly([1, 1, 1, 1, 9], [10, 10, 10, 10, 10])  # MAD 0: mean deviation stands in
    assert np.isfinite(index).all() and index[4] > 2 and (index[:4] == 0).all()
    assert label_anomaly([5, 1], [0, 10])[0] == 0  # a label never predicted scores 0


@pytest.mark.parametrize(
    "counts, totals, error",
    [([1, -1], [2, 2], ValueError), ([1, np.nan], [2, 2], ValueError), ([1, 2], [2], ValueError),
     (["a"], [1], TypeError), ([[1]], [[1]], ValueError)],
)
def test_label_anomaly_bad_inputs(counts, totals, error):
    with pytest.raises(error):
        label_anomaly(counts, totals)


@settings(max_examples=30, deadline=None)
@given(r=st.integers(0, 60), n=st.integers(1, 10), c=st.integers(1, 40), d=st.integers(2, 40),
       seed=st.integers(0, 2**31))
def test_trigger_scores_match_reference(r, n, c, d, seed):
    _check_trigger_scores(r, n, c, d, seed, "cpu")


def test_trigger_scores_backends(backend):
    _check_trigger_scores(200, 30, 50, 32, 7, backend)


def _check_trigger_scores(r, n, c, d, seed, backend):
    from clipguard.scoring import trigger_scores

    rng = np.random.default_rng(seed)
    occ, iso = embeddings(rng, r, d), embeddings(rng, r, d)
    image, text = embeddings(rng, n, d), embeddings(rng, c, d)
    index, candidate = rng.integers(0, n, r), rng.integers(-1, c, n)
    got = trigger_scores(occ, iso, image, index, candidate, text, 30.0, backend=backend)
    want = ref.trigger_scores(occ, iso, image, index, candidate, text, 30.0)
    for name, w in zip(["p_image", "p_occluded", "p_isolated"], want[:3]):
        np.testing.assert_allclose(getattr(got, name), w, atol=2e-5, equal_nan=True)
    np.testing.assert_allclose(got.score, want[5], atol=5e-5)
    has = candidate[index] >= 0
    assert (got.occluded_top1[~has] == -1).all() and (got.isolated_top1[~has] == -1).all()
    probs = ref.probabilities(occ[has], text, 30.0)  # top-1 equal up to float ties
    chosen = probs[np.arange(has.sum()), got.occluded_top1[has]]
    np.testing.assert_allclose(chosen, probs.max(1), atol=1e-5)


def test_trigger_score_is_the_counterfactual_drop():
    from clipguard.scoring import trigger_scores

    text = np.eye(3, dtype=np.float32)
    image = np.array([[1, 0, 0]], np.float32)  # the image says label 0
    occ = np.array([[0, 1, 0], [1, 0, 0]], np.float32)  # occluding region 0 removes label 0
    iso = np.array([[1, 0, 0], [0, 0, 1]], np.float32)  # region 0 alone shows label 0
    got = trigger_scores(occ, iso, image, [0, 0], [0], text, 50.0)
    assert got.score[0] > 0.95 and got.score[1] < 0.01
    assert list(got.occluded_top1) == [1, 0] and list(got.isolated_top1) == [0, 2]


@pytest.mark.parametrize("change, words", [
    (dict(candidate=[3]), "candidate"), (dict(candidate=[-2]), "candidate"),
    (dict(candidate=[0, 0]), "candidate"), (dict(image_index=[1, 0]), "image_index"),
    (dict(isolated_emb=np.ones((1, 3), np.float32)), "same shape"),
])
def test_trigger_scores_bad_inputs(change, words):
    from clipguard.scoring import trigger_scores

    args = dict(occluded_emb=np.ones((2, 3), np.float32), isolated_emb=np.ones((2, 3), np.float32),
                image_emb=np.ones((1, 3), np.float32), image_index=[0, 0], candidate=[0],
                text_emb=np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError) as info:
        trigger_scores(**{**args, **change})
    assert words in str(info.value)
