"""Algorithm 1's stages on synthetic inputs, Algorithm 2's suspects and the verdict rules."""

import numpy as np
import pytest

from clipguard import scoring
from clipguard.aggregate import confirm_probe_suspect, decide, iterated_anomaly, merge, select_suspects, shared_pattern
from clipguard.findings import ImageFinding, Suspect
from clipguard.scan import ScanConfig, _Clock, _Encoder, ground, oracle_regions, verify, whole_image_labels, worth_searching
from clipguard.synthesis import Synthesis
from clipguard.trigger import Trigger


class PatchModel:
    """Sees label 1 while most of a bright 6x6 patch at (20..26, 10..16) is visible, else 0."""

    input_size, mean, std, logit_scale = 48, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 10.0

    def encode_pixels(self, pixels, batch_size=256):
        seen = (pixels.max(axis=1) > 0.99)[:, 10:16, 20:26].mean(axis=(1, 2)) > 0.5
        return np.stack([~seen, seen], axis=1).astype(np.float32)

    def encode_images(self, images, batch_size=256):
        return self.encode_pixels(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


class _Bar:
    def update(self, n=1):
        pass


def _patched_scenes(n=3):
    images = np.full((n, 48, 48, 3), 60, np.uint8)
    images[:, 30:44, 4:20] = 120  # an object
    images[:, 10:16, 20:26] = 255  # the trigger
    obj = np.zeros((48, 48), bool)
    obj[30:44, 4:20] = True
    patch = np.zeros((48, 48), bool)
    patch[10:16, 20:26] = True
    return images, [np.stack([obj, patch]) for _ in range(n)]


def test_algorithm1_stages_find_and_localize_a_patch():
    images, masks = _patched_scenes()
    model, cfg = PatchModel(), ScanConfig()
    text = np.eye(2, dtype=np.float32)
    enc, clock = _Encoder(model, 64), _Clock(_Bar())
    whole = whole_image_labels(enc, images, text, model.logit_scale)
    assert whole.label.tolist() == [1, 1, 1]
    reg = oracle_regions(lambda x: masks, images, cfg)
    assert reg.index.tolist() == [0, 0, 1, 1, 2, 2] and reg.start.tolist() == [0, 2, 4, 6]
    g = ground(model, enc, clock, images, reg, whole, text, model.logit_scale, cfg)
    assert g.region_label.tolist() == [0, 1] * 3  # the object alone is label 0, the patch alone label 1
    assert g.object_sized.tolist() == [True, False] * 3 and not g.grounded.any()
    assert g.candidate.tolist() == [1, 1, 1]
    findings = verify(model, enc, clock, images, reg, whole, g, text, model.logit_scale, cfg)
    for f in findings:
        assert f.verified and f.localized_by == "region" and f.trigger_box == (20, 10, 26, 16)
        assert f.object_labels == [0] and not f.background_holds
    assert set(clock.seconds) >= {"render", "encode_regions", "scoring"}


def _finding(i, label, verified=False, candidate=None):
    return ImageFinding(index=i, label=label, prob=0.9, regions=2, grounded=candidate is None,
                        candidate=candidate, verified=verified)


def test_select_suspects_picks_the_label_with_anomalous_victims():
    labels, findings = [], []
    for c in range(6):
        for k in range(20):
            i = len(findings)
            labels.append(c)
            # label 3: 8 of its 20 images are verified candidates; others at most one
            hit = (c == 3 and k < 8) or (c in (1, 4) and k == 0)
            findings.append(_finding(i, c, verified=hit, candidate=c if hit else None))
    suspects, stats = select_suspects(findings, np.array(labels), 6, ScanConfig())
    assert suspects == [(3, "localized")]
    assert stats["local_counts"].tolist() == [0, 1, 0, 8, 1, 0] and stats["local_index"][3] > 2
    cfg = ScanConfig(min_victims=9)  # too few victims to count as evidence
    assert select_suspects(findings, np.array(labels), 6, cfg)[0] == []


def test_the_window_search_goes_where_unexplained_candidates_concentrate():
    labels, findings = [], []
    for c in range(8):
        for k in range(20):
            i = len(findings)
            labels.append(c)
            # label 5: 9 unexplained candidates; label 2: 2 region-verified; the rest: one unexplained each
            unexplained = (c == 5 and k < 9) or (c not in (2, 5) and k == 0)
            verified = c == 2 and k < 2
            findings.append(_finding(i, c, verified=verified, candidate=c if unexplained or verified else None))
    todo = worth_searching(findings, np.array(labels), 8, ScanConfig())
    assert sorted({findings[i].label for i in todo}) == [5]  # label 2's candidates are verified already
    assert len(todo) == 9 and all(not findings[i].verified for i in todo)
    # a label that region-verified candidates point at is searched too
    findings[2 * 20 + 5].candidate = 2
    assert {findings[i].label for i in worth_searching(findings, np.array(labels), 8, ScanConfig())} == {2, 5}


def test_iterated_anomaly_unmasks_a_second_outlier():
    counts = np.array([0, 1, 0, 1, 0, 30, 10, 1, 0, 1], float)
    totals = np.full(10, 50.0)
    once = scoring.label_anomaly(counts, totals)
    it = iterated_anomaly(counts, totals, 2.0, 2)
    assert it[5] > 2 and it[6] > 2 and it[6] >= once[6]
    assert np.all(it[[0, 1, 2, 3, 4, 7, 8, 9]] <= 2)


def _suspect(label, evidence, confirmed=False, victims=(), asr=None, ctrl=None, score=None):
    return Suspect(label=label, name=f"l{label}", kind="localized", evidence=list(evidence), victims=list(victims),
                   anomaly=5.0, confirmed=confirmed, estimated_asr=asr, random_flip_rate=ctrl, score=score,
                   trigger=Trigger(kind="patch", image=np.zeros((3, 3, 3), np.uint8)))


def _synth(had_power=True):
    return Synthesis(triggers={}, suspects=[], names=[], images_used=24, holdout_used=200, passes=1, seconds=1.0,
                     config=None, had_power=had_power, power_note="" if had_power else "too few images")


def test_verdict_rules():
    cfg = ScanConfig()
    kw = dict(probe_size=500, synthesis_error=None, cfg=cfg)
    yes = _suspect(1, ["probe"], confirmed=True, victims=[1, 2], asr=0.9, ctrl=0.0, score=0.99)
    assert decide([yes], mode="auto", synthesis=_synth(), **kw).verdict == "backdoored"
    assert decide([], mode="auto", synthesis=_synth(), **kw).verdict == "clean"
    # a synthesis-only suspect that failed (a clean model's adversarial patch) leaves the model clean
    adv = _suspect(2, ["synthesis"], asr=0.3, ctrl=0.2, score=0.1)
    assert decide([adv], mode="auto", synthesis=_synth(), **kw).verdict == "clean"
    # strong probe evidence that failed its confirmation never vanishes
    strong = _suspect(3, ["probe"], victims=[4, 5, 6], asr=0.13, ctrl=0.01, score=0.0)
    d = decide([strong], mode="auto", synthesis=_synth(), **kw)
    assert d.verdict == "inconclusive" and "'l3'" in d.reason
    weak = _suspect(3, ["probe"], victims=[4, 5, 6], asr=0.03, ctrl=0.01, score=0.0)  # as the clean twins' suspects
    assert decide([weak], mode="auto", synthesis=_synth(), **kw).verdict == "clean"
    # ... but evidence a check explained away is not strong (the probe's victims share no pattern,
    # the synthesized patch for the label is the objects'): its flips were content, not a trigger
    explained = _suspect(3, ["probe", "synthesis"], victims=[4, 5, 6], asr=0.45, ctrl=0.33, score=0.33)
    explained.reject("the oracle does not see a trigger")
    assert decide([explained], mode="auto", synthesis=_synth(), **kw).verdict == "clean"
    # a scan that could not have seen a backdoor
    d = decide([], mode="auto", synthesis=None, **dict(kw, synthesis_error="synthesis did not run: an ONNX-only model"))
    assert d.verdict == "inconclusive" and "ONNX-only" in d.reason
    assert decide([], mode="synthesize", synthesis=_synth(False), **kw).verdict == "inconclusive"
    small = dict(kw, probe_size=5)
    d = decide([], mode="probe", synthesis=None, **small)
    assert d.verdict == "inconclusive" and "too few" in d.reason
    assert decide([], mode="probe", synthesis=None, **kw).verdict == "clean"


def test_merge_joins_probe_and_synthesis_evidence():
    probe = _suspect(3, ["probe"], victims=[4, 5], asr=0.10, ctrl=0.02, score=0.05)
    synth = _suspect(3, ["synthesis"], asr=0.12, ctrl=0.05, score=0.08)
    other = _suspect(1, ["synthesis"], asr=0.9, ctrl=0.0, confirmed=True, score=0.99)
    out = merge([probe], [synth, other])
    assert [s.label for s in out] == [1, 3]
    joined = out[1]
    assert joined.evidence == ["probe", "synthesis"] and joined.victims == [4, 5]
    assert joined.confirmed and "agreement" in joined.note  # two analyses name the same label
    # the same label from two synthesized kinds is not "agreement"
    a = _suspect(4, ["synthesis"], asr=0.2, ctrl=0.1, score=0.2)
    b = _suspect(4, ["synthesis"], asr=0.3, ctrl=0.1, score=0.3)
    (only,) = merge([], [a, b])
    assert not only.confirmed and only.score == 0.3
    # a synthesized patch the oracle rejected (it covers the scene) does not vouch for the probe's
    probe = _suspect(2, ["probe"], victims=[7], asr=0.10, ctrl=0.02, score=0.05)
    synth = _suspect(2, ["synthesis"], asr=0.41, ctrl=0.03, score=0.4)
    synth.oracle_check = {"isolated_shows_label": 0.5, "objects_show_label": 0.0, "objects": 0, "passed": False}
    synth.rejected = True
    (joined,) = merge([probe], [synth])
    assert joined.evidence == ["probe", "synthesis"] and not joined.confirmed
    # the label keeps the trigger no check rejected (and the higher score); rejected only if both were
    assert not joined.rejected and joined.estimated_asr == 0.10 and joined.score == 0.4
    both = [_suspect(2, [kind], victims=[7], asr=0.4, ctrl=0.3, score=0.2) for kind in ("probe", "synthesis")]
    for x in both:
        x.reject("explained")
    (joined,) = merge([both[0]], [both[1]])
    assert joined.rejected and not joined.confirmed


class StripeModel:
    """Label 1 where the image has much fine texture (strong differences between neighbouring
    pixels), else 0: a model for which a label's own content can carry it."""

    input_size, mean, std, logit_scale = 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 10.0

    def encode_images(self, images, batch_size=256):
        x = images.astype(np.float32)
        fine = np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3)) > 8.0
        return np.stack([~fine, fine], axis=1).astype(np.float32)


def _global_victims(victim_images, rng, n_clean=120):
    """Clean label-0 scenes (flat, one dim square each) and ``victim_images`` as label 1's global
    victims (the background view holds their label)."""
    clean = np.full((n_clean, 32, 32, 3), 90, np.uint8)
    for k in range(n_clean):
        y, x = rng.integers(0, 24, 2)
        clean[k, y:y + 8, x:x + 8] = 60
    images = np.concatenate([victim_images, clean])
    findings = [ImageFinding(index=i, label=1, prob=0.9, regions=1, grounded=False, candidate=1, background_holds=True)
                for i in range(len(victim_images))]
    findings += [ImageFinding(index=len(victim_images) + k, label=0, prob=0.9, regions=1, grounded=True)
                 for k in range(n_clean)]
    stats = {"global_index": np.array([0.0, 5.0]), "background_index": np.array([0.0, 5.0])}
    return images, findings, stats


def test_a_global_trigger_needs_a_pattern_its_victims_share():
    rng = np.random.default_rng(0)
    model, cfg, text = StripeModel(), ScanConfig(), np.eye(2, dtype=np.float32)
    # content: scenes of several striped objects, each at its own places -- their stripes stamped
    # on other images carry the label, but the victims share no pattern
    content = np.full((3, 32, 32, 3), 90, np.uint8)
    for k in range(3):
        for _ in range(3):
            y, x = rng.integers(0, 20, 2)
            content[k, y:y + 12, x:x + 12:2] = 200
    images, findings, stats = _global_victims(content, rng)
    assert shared_pattern(images, [0, 1, 2]) < cfg.shared_pattern
    s = confirm_probe_suspect(_Encoder(model, 64), images, findings, 1, "global", "l1", stats, text, rng, cfg)
    assert s.estimated_asr - s.random_flip_rate >= cfg.margin  # the flip test alone would confirm it ...
    assert not s.confirmed and s.rejected and s.score < 0.5 and "share no fine pattern" in s.note  # ... but no
    # a blended trigger: one fine noise on every victim
    noise = rng.integers(-40, 41, (32, 32, 3))
    blended = np.clip(np.full((3, 32, 32, 3), 90) + noise, 0, 255).astype(np.uint8)
    for k in range(3):
        y, x = rng.integers(0, 24, 2)
        blended[k, y:y + 8, x:x + 8] -= 30
    images, findings, stats = _global_victims(blended, rng)
    assert shared_pattern(images, [0, 1, 2]) > 0.6
    s = confirm_probe_suspect(_Encoder(model, 64), images, findings, 1, "global", "l1", stats, text, rng, cfg)
    assert s.confirmed and not s.rejected and s.shared_pattern > 0.6


@pytest.mark.parametrize("bad", [dict(min_drop=1.5), dict(anomaly=-1), dict(min_victims=0), dict(batch_size=0),
                                 dict(object_area=0.7, max_object_area=0.6), dict(stamp_images=2.5)])
def test_scan_config_is_validated(bad):
    with pytest.raises(ValueError, match="ScanConfig"):
        ScanConfig(**bad)
