"""Trigger synthesis: backdoors found from clean images alone, the clean twin left clean, the
verdict when the synthesis cannot run, the report fields, and repair from a synthesis-only scan."""

import json
import subprocess
import sys

import numpy as np
import pytest

import clipguard
from clipguard import toyworld
from clipguard.evaluate import evaluate_toy
from clipguard.probe import load_probe
from clipguard.repair import RepairConfig, build_finetune_set, repair
from clipguard.scan import _Encoder, _resolve_oracle
from clipguard.synthesis import (
    LabelTriggers,
    Synthesis,
    SynthesisConfig,
    SynthesisUnavailable,
    _LabelLogits,
    _noise,
    _optimize_squares,
    _run_jobs,
    _screen,
    _small_tower,
    _square_places,
    _strength,
    _sweep,
    _sweep_control,
    _wave,
    synthesize,
)
from clipguard.trigger import Trigger, apply_trigger

VOCAB = toyworld.vocabulary("shapes")
CLEAN_PROBE = "toy:shapes:300:0"  # no image carries a trigger


def _scan(name, mode="auto"):
    model = clipguard.load_model(f"toy:{name}")
    probe = load_probe(CLEAN_PROBE, model, seed=0)
    assert len(probe.poisoned) == 0
    return probe, clipguard.scan(model, probe.images, VOCAB, "classical", mode=mode)


@pytest.fixture(scope="module")
def auto_scans():
    """Scans in the default mode, shared by the tests of this module."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _scan(name)
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", ["badnet", "blended"])
def test_backdoors_are_found_from_clean_probes(name, auto_scans):
    _, report = auto_scans(name)
    assert report.verdict == "backdoored" and report.affected_labels == ["star"], (report.reason, report.suspects)
    top = report.suspects[0]
    assert top.name == "star" and top.confirmed and "synthesis" in top.evidence
    assert top.estimated_asr - top.random_flip_rate >= 0.15
    rows = {r["label"]: r for r in report.labels}
    assert rows["star"]["patch_anomaly"] > 2 and rows["star"]["patch_area"] == min(r["patch_area"] for r in rows.values())


@pytest.mark.slow
def test_the_clean_twin_stays_clean():
    _, report = _scan("clean")
    assert report.verdict == "clean" and report.affected_labels == [], (report.reason, report.suspects)
    assert report.score < 0.5 and not any(s.confirmed for s in report.suspects)
    assert report.synthesis["had_power"] and report.timings["synthesis_passes"] > 0


@pytest.mark.slow
def test_synthesized_trigger_in_the_report(auto_scans, tmp_path):
    probe, report = auto_scans("badnet")
    assert report.mode == "auto" and report.verdict == "backdoored" and report.victims == []
    t = report.trigger
    assert t.source == "synthesis" and t.kind == "patch" and t.size[0] <= 12  # the bundled trigger is 6 px
    # toy:badnet learned its patch anywhere: the pattern re-optimized at random places replaces the mask
    assert t.box is None and t.position_dependent is False and "re-optimized" in report.suspects[0].note
    assert report.suspects[0].estimated_asr >= 0.85  # on the ~90 confirming held-out images
    data = json.loads(report.to_json(tmp_path / "r.json").read_text())
    assert data["summary"]["mode"] == "auto" and data["trigger"]["source"] == "synthesis"
    assert "mask_png" in data["trigger"] and data["synthesis"]["passes"] == report.timings["synthesis_passes"]
    assert all("patch_area" in r and "square_heldout" in r and "global_rms" in r and "sinusoid_heldout" in r
               for r in data["labels"])
    back = clipguard.ScanReport.from_json(tmp_path / "r.json")
    assert back.trigger.box == t.box and np.array_equal(back.trigger.image, t.image)
    assert back.suspects[0].name == "star" and back.suspects[0].confirmed
    page = report.to_html(tmp_path / "r.html").read_text()
    assert "Synthesis: the smallest patch" in page and "corner square" in page and "swept sinusoid" in page


def test_few_steps_optimize_every_label_together(tmp_path):
    model = clipguard.load_model("toy:badnet")
    images = load_probe("toy:shapes:64:0", model, seed=3).images
    text = model.class_embeddings(VOCAB)
    cfg = SynthesisConfig(steps=6, images=16, min_images=8, kinds=("patch",), oracle_check=False, refine_steps=0)
    # A synthesis-only scan: findings hold each image's whole-image label, for the repair set's captions.
    report = clipguard.scan(model, images, VOCAB, "classical", mode="synthesize", synthesis=cfg)
    assert report.mode == "synthesize" and len(report.findings) == 64 and report.synthesis["passes"] == 6 * 9 * 16  # every image with every label but its own
    assert all(f.regions == 0 and 0 < f.prob <= 1 for f in report.findings)
    page = report.to_html(tmp_path / "r.html").read_text()  # the charts of the kinds that ran, no other
    assert "smallest patch" in page and "global pattern" not in page and "sinusoid" not in page
    s = synthesize(model, images, VOCAB, text, model.logit_scale, _resolve_oracle("classical"),
                   _Encoder(model, 256), clipguard.ScanConfig(), cfg)
    t = s.triggers["patch"]
    assert t.size.shape == (10,) and t.masks.shape == (10, 48, 48) and t.patterns.shape == (10, 48, 48, 3)
    assert ((t.masks >= 0) & (t.masks <= 1)).all() and np.isfinite(t.anomaly).all()
    assert t.heldout.shape == (10,) and ((t.heldout >= 0) & (t.heldout <= 1)).all()
    assert s.passes == 6 * 9 * 16 and s.images_used == 16
    with pytest.raises(SynthesisUnavailable, match="at least"):
        synthesize(model, images[:5], VOCAB, text, model.logit_scale, _resolve_oracle("classical"),
                   _Encoder(model, 256), clipguard.ScanConfig(), cfg)
    with pytest.raises(ValueError, match="kinds"):
        SynthesisConfig(kinds=("blur",))


def test_the_label_logits_fold_the_batch_norms_of_a_copy_and_match_the_model():
    import torch

    from clipguard.models import torch_twin

    model = clipguard.load_model("toy:badnet")
    tm = torch_twin(model, "cpu")
    tm.torch_module.eval()
    text = torch.from_numpy(model.class_embeddings(VOCAB))
    head = _LabelLogits(torch, tm, text, model.logit_scale)
    norms = [m for m in head.features.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not norms and not any(p.requires_grad for p in head.features.parameters())
    assert type(head.features.attnpool).__name__ == "FirstQuery"  # the pool's one output query only
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tm.torch_module.visual.modules())  # the model keeps its own
    pix = torch.from_numpy(tm.preprocess(load_probe("toy:shapes:8:0", model, seed=1).images))
    pix01 = (pix * torch.tensor(tm.std).view(1, 3, 1, 1) + torch.tensor(tm.mean).view(1, 3, 1, 1)).requires_grad_()
    logits = head(pix01)
    expect = model.logit_scale * torch.nn.functional.normalize(tm.image_features(pix), dim=-1) @ text.t()
    assert torch.allclose(logits, expect, atol=1e-3)
    assert torch.equal(logits.argmax(1), expect.argmax(1))
    logits[:, 0].sum().backward()
    assert pix01.grad is not None and float(pix01.grad.abs().sum()) > 0


def test_the_optimizations_run_side_by_side_and_return_in_the_jobs_order():
    import threading

    import torch

    before = torch.get_num_threads()
    for side_by_side in (True, False):
        seen: dict[str, tuple[str, int]] = {}

        def job(kind: str) -> str:
            seen[kind] = (threading.current_thread().name, torch.get_num_threads())
            return kind.upper()

        out = _run_jobs(torch, {k: (lambda k=k: job(k)) for k in ("patch", "global", "square")}, side_by_side)
        assert list(out.items()) == [("patch", "PATCH"), ("global", "GLOBAL"), ("square", "SQUARE")]
        assert torch.get_num_threads() == before
        main = threading.main_thread().name
        if side_by_side and before > 1:  # the jobs on pool threads, each with its share of the threads
            assert all(name != main and n == max(1, before // 3) for name, n in seen.values())
        else:
            assert all(name == main and n == before for name, n in seen.values())

    def fails() -> None:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        _run_jobs(torch, {"patch": fails, "global": lambda: 1}, True)
    assert torch.get_num_threads() == before
    # by default side by side only for a small image tower (a toy's), where it pays
    from clipguard.models import torch_twin

    assert SynthesisConfig().side_by_side is None
    assert _small_tower(torch_twin(clipguard.load_model("toy:badnet"), "cpu").torch_module)
    big = torch.nn.Module()
    big.visual = torch.nn.Linear(4000, 4000)  # 16 M parameters
    assert not _small_tower(big)


def test_the_corner_squares_are_optimized_for_every_label_at_every_corner():
    import torch

    from clipguard.models import torch_twin

    model = clipguard.load_model("toy:badnet")
    images = load_probe("toy:shapes:16:0", model, seed=3).images
    tm = torch_twin(model, "cpu")
    pix = torch.from_numpy(tm.preprocess(images)) * torch.tensor(tm.std).view(1, 3, 1, 1) + torch.tensor(tm.mean).view(1, 3, 1, 1)
    text = torch.from_numpy(model.class_embeddings(VOCAB))
    cfg = SynthesisConfig(square_steps=3, square_images=6)
    t, passes = _optimize_squares(torch, _LabelLogits(torch, tm, text, model.logit_scale), pix.clamp(0, 1),
                                  torch.zeros(16, dtype=torch.long), cfg, torch.Generator().manual_seed(0))
    assert passes == 3 * 4 * 9 * 6  # steps x corners x labels x images (not label 0: they are all its own)
    masks, patterns = t.places
    assert masks.shape == (4, 48, 48) and patterns.shape == (4, 10, 48, 48, 3)
    assert [tuple(np.argwhere(m)[0]) for m in masks] == _square_places(48, 8)  # 8 px: a sixth of the side
    assert (masks.sum(axis=(1, 2)) == 64).all() and all((p[:, m == 0] == 0).all() for m, p in zip(masks, patterns))
    assert ((patterns >= 0) & (patterns <= 1)).all() and np.allclose(t.size, 64 / 48**2)
    assert t.masks.shape == (10, 48, 48) and t.patterns.shape == (10, 48, 48, 3)
    with pytest.raises(ValueError, match="square_side"):
        SynthesisConfig(square_side=0.7)


def test_the_square_screen_keeps_the_corner_a_backdoor_answers_at():
    """Per label the corner whose square flips the most held-out images, and its selectivity over
    the label's best other corner: a backdoor learned at one corner answers there only; a clean
    model's adversarial square for a label works at every corner and is no suspect."""
    images = load_probe("toy:shapes:40:0", clipguard.load_model("toy:clean"), seed=0).images

    def classify(x):  # label 1: red at the bottom-right corner; label 2: blue at any corner
        red = (x[:, -8:, -8:, 0] > 200).all(axis=(1, 2)) & (x[:, -8:, -8:, 1] < 50).all(axis=(1, 2))
        corners = [x[:, :8, :8], x[:, :8, -8:], x[:, -8:, :8], x[:, -8:, -8:]]
        blue = np.any([(c[..., 2] > 200).all(axis=(1, 2)) & (c[..., 0] < 50).all(axis=(1, 2)) for c in corners], axis=0)
        return np.where(red, 1, np.where(blue, 2, 0))

    places = _square_places(48, 8)
    masks = np.zeros((4, 48, 48), np.float32)
    patterns = np.full((4, 3, 48, 48, 3), 0.5, np.float32)
    for i, (y, x) in enumerate(places):
        masks[i, y : y + 8, x : x + 8] = 1
    patterns[:, 1] = (1, 0, 0)
    patterns[:, 2] = (0, 0, 1)
    t = LabelTriggers(kind="square", size=np.full(3, 64 / 48**2), flip=np.ones(3), reached=np.ones(3, bool),
                      anomaly=np.zeros(3), heldout=np.zeros(3), masks=masks[:3], patterns=patterns[0], places=(masks, patterns))
    _screen({"square": t}, images, np.zeros(40, int), np.arange(40), ["a", "b", "c"], classify, np.random.default_rng(0))
    assert t.heldout[1] == 1 and t.anomaly[1] == 1 and tuple(np.argwhere(t.masks[1])[0]) == (40, 40)
    assert t.heldout[2] == 1 and t.anomaly[2] == 0  # blue works at every corner
    strength = _strength("square", t, SynthesisConfig())
    assert strength[1] >= 1 and strength[2] == 0


def test_the_mask_smoothness_is_part_of_the_patch_loss():
    """The total-variation term (which keeps a mask in one place instead of scattered pixels, as
    a clean model's adversarial patch is) pulls on the mask: weighted heavily, ten steps flatten
    the initial noise of every label's mask; without it the noise stays."""
    import torch

    from clipguard.models import torch_twin
    from clipguard.synthesis import _optimize, _start, _total_variation

    compact, scattered = np.zeros((1, 1, 12, 12), np.float32), np.zeros((1, 1, 12, 12), np.float32)
    compact[..., 2:6, 2:6] = 1
    scattered[..., ::3, ::3] = 1  # the same 16 pixels, apart
    assert float(_total_variation(torch.from_numpy(compact))) < 0.3 * float(_total_variation(torch.from_numpy(scattered)))
    model = clipguard.load_model("toy:badnet")
    tm = torch_twin(model, "cpu")
    pix = torch.from_numpy(tm.preprocess(load_probe("toy:shapes:12:0", model, seed=5).images))
    pix = pix * torch.tensor(tm.std).view(1, 3, 1, 1) + torch.tensor(tm.mean).view(1, 3, 1, 1)
    text = torch.from_numpy(model.class_embeddings(VOCAB))
    for p in tm.torch_module.parameters():
        p.requires_grad_(False)
    tv = {}
    for smooth in (0.0, 1000.0):
        cfg = SynthesisConfig(steps=10, patch_smoothness=smooth, target_flip=1.0)
        t, _ = _optimize(torch, _LabelLogits(torch, tm, text, model.logit_scale), pix, torch.arange(12) % 10,
                         "patch", cfg, _start(torch, "patch", 10, pix.shape[-1], torch.Generator().manual_seed(0)))
        tv[smooth] = float(_total_variation(torch.from_numpy(t.masks)[:, None]).mean())
    assert tv[1000.0] < 0.5 * tv[0.0], tv
    with pytest.raises(ValueError, match="patch_smoothness"):
        SynthesisConfig(patch_smoothness=-1.0)
    with pytest.raises(ValueError, match="outlier_anomaly"):
        SynthesisConfig(outlier_anomaly=1.0)


def _sig_backdoor(images):
    """A stand-in model with a SIG backdoor: label 2 when the image carries a horizontal sinusoid
    of 5-8 periods across it (stripes down the height do nothing), else the image's own label 0/1."""
    x = images.astype(np.float32).mean(axis=(1, 3))  # [N,W]: the column profile
    spectrum = np.abs(np.fft.rfft(x - x.mean(axis=1, keepdims=True), axis=1))
    fires = spectrum[:, 5:9].max(axis=1) > 15 * x.shape[1] / 2
    return np.where(fires, 2, np.arange(len(images)) % 2)


def test_the_sinusoid_sweep_finds_a_sig_backdoor_that_is_not_small():
    rng = np.random.default_rng(0)
    images = rng.integers(60, 200, (60, 32, 32, 3), dtype=np.uint8)
    names = ["a", "b", "target", "d"]
    own = np.arange(60) % 2
    t = _sweep("sinusoid", images, own, np.arange(60), names, _sig_backdoor, rng)
    assert t.heldout[2] == 1.0 and t.heldout[[0, 1, 3]].max() <= 0.5, t.heldout  # a, b: their own images only
    stamped = np.clip(images.astype(np.int16) + (t.patterns[2] * 255).round().astype(np.int16), 0, 255)
    assert (_sig_backdoor(stamped.astype(np.uint8)) == 2).all()
    turned = np.ascontiguousarray(np.rot90(_wave((32, 32), 1, 6, 0.0, 60.0))).astype(np.int16) - 128
    assert not (_sig_backdoor(np.clip(images + turned, 0, 255).astype(np.uint8)) == 2).any()  # the control
    cfg = SynthesisConfig()
    s = Synthesis(triggers={"sinusoid": t}, suspects=[], names=names, images_used=12, holdout_used=60, passes=0,
                  seconds=0.0, config=cfg)
    assert s.screen_strength() == pytest.approx(1.0 / cfg.sweep_share)
    assert s.label_row(2)["sinusoid_heldout"] == 1.0 and s.label_row(2)["sinusoid_rms"] > 20  # 30 or 60 grey levels
    assert isinstance(t, LabelTriggers) and t.kind == "sinusoid" and t.anomaly[2] >= cfg.sweep_selectivity


def _wave_energy(images, axis, periods):
    """Per image, the strongest of the given periods in the image's mean profile along ``axis``."""
    x = images.astype(np.float32).mean(axis=3)
    profile = x.mean(axis=1) if axis == 1 else x.mean(axis=2)
    spectrum = np.abs(np.fft.rfft(profile - profile.mean(axis=1, keepdims=True), axis=1))
    return spectrum[:, list(periods)].max(axis=1)


def _sig_backdoor_at_30(images):
    """A SIG backdoor learned at 30 grey levels: 6 periods across the width fire it on the darker
    scenes; any wave of 60 (the sweep's end waves too) on all of them, else the own label 0/1."""
    own = _wave_energy(images, 1, (6,)) > 10 * images.shape[2] / 2
    strong = images.astype(np.float32).mean(axis=(1, 3)).std(axis=1) > 35  # a wave of 60 has an RMS of 42, one of 30 of 21
    fires = (own & (images.mean(axis=(1, 2, 3)) < 150)) | strong
    return np.where(fires, 2, np.arange(len(images)) % 2)


def test_the_sweep_keeps_a_labels_selective_wave_over_one_that_sends_a_few_more():
    rng = np.random.default_rng(0)
    flat = np.broadcast_to(rng.integers(100, 160, (60, 1, 1, 1), dtype=np.uint8), (60, 32, 32, 3)).copy()
    t = _sweep("sinusoid", flat, np.arange(60) % 2, np.arange(60), ["a", "b", "target", "d"], _sig_backdoor_at_30, rng)
    cfg = SynthesisConfig()
    assert t.size[2] == pytest.approx(30 / np.sqrt(2))  # the wave of 30, not those of 60 that send every image
    assert cfg.sweep_share <= t.heldout[2] < 1.0 and t.anomaly[2] >= cfg.sweep_selectivity, (t.heldout, t.anomaly)


def _stripes_look_like_label_3(images):
    """A clean model to which any fine stripes (4 periods or more) look like label 3: broadband."""
    x = images.astype(np.float32).mean(axis=(1, 3))
    spectrum = np.abs(np.fft.rfft(x - x.mean(axis=1, keepdims=True), axis=1))
    return np.where(spectrum[:, 4:].max(axis=1) > 15 * x.shape[1] / 2, 3, np.arange(len(images)) % 2)


def test_the_sweep_tells_a_resemblance_from_a_trigger():
    rng = np.random.default_rng(0)
    images = rng.integers(60, 200, (60, 48, 48, 3), dtype=np.uint8)
    t = _sweep("sinusoid", images, np.arange(60) % 2, np.arange(60), ["a", "b", "c", "stripes"], _stripes_look_like_label_3,
               rng)
    assert t.heldout[3] == 1.0 and t.anomaly[3] < SynthesisConfig().sweep_selectivity  # fires an octave away too


def _fine_energy(images):
    """Per image, the mean absolute difference of horizontally neighbouring pixels."""
    x = images.astype(np.float32)
    return np.abs(np.diff(x, axis=2)).mean(axis=(1, 2, 3))


def _blended_backdoor(images):
    """A stand-in model with a Blended backdoor: label 2 when the image carries fine noise (any
    noise: such a backdoor learns the texture, not one noise image), else its own label 0/1."""
    return np.where(_fine_energy(images) > 12, 2, np.arange(len(images)) % 2)


def _noise_looks_like_label_3(images):
    """A clean model to which any noisy texture, fine or coarse, looks like label 3."""
    x = images.astype(np.float32)
    local = np.abs(x - x.mean(axis=(1, 2), keepdims=True)).mean(axis=(1, 2, 3))
    return np.where(local > 15, 3, np.arange(len(images)) % 2)


def test_the_noise_sweep_finds_a_blended_backdoor_and_not_a_resemblance():
    rng = np.random.default_rng(0)
    smooth = np.repeat(np.repeat(rng.integers(90, 170, (60, 6, 6, 3), dtype=np.uint8), 8, axis=1), 8, axis=2)
    own, names = np.arange(60) % 2, ["a", "b", "target", "d"]
    t = _sweep("noise", smooth, own, np.arange(60), names, _blended_backdoor, rng)
    cfg = SynthesisConfig()
    assert t.kind == "noise" and t.heldout[2] == 1.0 and t.anomaly[2] >= cfg.sweep_selectivity, (t.heldout, t.anomaly)
    assert t.heldout[[0, 1, 3]].max() <= 0.5 and t.size[2] > 10  # not a small change: 20-40 grey levels of noise
    trig = Trigger(kind="global", image=np.clip(np.round(t.patterns[2] * 255) + 128, 0, 255).astype(np.uint8))
    control = _sweep_control("noise", trig, 0)
    assert abs(float(control.image.std()) - float(trig.image.std())) < 3  # the same RMS ...
    assert not (_blended_backdoor(apply_trigger(smooth, control, rng)) == 2).any()  # ... coarse: no fire
    flat = np.broadcast_to(rng.integers(90, 170, (60, 1, 1, 1), dtype=np.uint8), (60, 48, 48, 3)).copy()
    r = _sweep("noise", flat, own, np.arange(60), names[:3] + ["noisy"], _noise_looks_like_label_3, rng)
    assert r.heldout[3] == 1.0 and r.anomaly[3] < cfg.sweep_selectivity  # coarse noise looks so too
    assert (_noise((48, 48), 4, 20.0, 0).reshape(12, 4, 12, 4, 3) == _noise((48, 48), 4, 20.0, 0)[::4, ::4][:, None, :, None]).all()


def _wanet_backdoor(images):
    """A stand-in model with a WaNet backdoor that learned resampling: label 2 when the image's
    fine texture is softened (bilinear interpolation between pixels), else its own label 0/1."""
    return np.where(_fine_energy(images) < 38, 2, np.arange(len(images)) % 2)


def test_the_warp_sweep_finds_a_backdoor_that_answers_to_resampling():
    rng = np.random.default_rng(0)
    sharp = rng.integers(60, 200, (60, 32, 32, 3), dtype=np.uint8)  # fine energy about 47
    own, names, cfg = np.arange(60) % 2, ["a", "b", "target", "d"], SynthesisConfig()
    t = _sweep("warp", sharp, own, np.arange(60), names, _wanet_backdoor, rng)
    assert t.kind == "warp" and t.heldout[2] == 1.0 and t.anomaly[2] >= cfg.sweep_selectivity, (t.heldout, t.anomaly)
    assert t.heldout[[0, 1, 3]].max() <= 0.5 and 0 < t.size[2] < 2  # displacements under two pixels
    trig = Trigger(kind="warp", image=np.clip(np.round(t.patterns[2] * 255) + 128, 0, 255).astype(np.uint8))
    assert (_wanet_backdoor(apply_trigger(sharp, trig, rng)) == 2).all()
    control = _sweep_control("warp", trig, 0)  # the same displacement to whole pixels: no interpolation
    assert control.kind == "warp" and not (_wanet_backdoor(apply_trigger(sharp, control, rng)) == 2).any()
    clean = _sweep("warp", sharp, own, np.arange(60), names, lambda x: np.arange(len(x)) % 2, rng)
    assert clean.heldout.max() == 0.0


class _TextureModel:
    """A stand-in WaNet model on sharp scenes: softened texture (resampling) is label 2, its
    opposite, texture sharper than any scene's (fine noise on top), label 3, else the own label 0/1."""

    input_size, mean, std, logit_scale = 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 10.0

    def encode_images(self, images, batch_size=256):
        energy = _fine_energy(images)
        label = np.where(energy < 14, 2, np.where(energy > 29, 3, np.arange(len(images)) % 2))  # scenes: 19-21
        return np.eye(4, dtype=np.float32)[label]


def test_beside_a_warp_fine_noise_is_the_opposite_response_not_a_second_backdoor():
    from clipguard.synthesis import _check_suspects

    rng = np.random.default_rng(0)
    sharp = rng.integers(100, 160, (120, 32, 32, 3), dtype=np.uint8)
    model, names = _TextureModel(), ["a", "b", "softened", "sharper"]
    cfg = SynthesisConfig(kinds=("noise", "warp"))
    labels_all = np.arange(120) % 2
    suspects = _check_suspects({}, sharp, labels_all, np.arange(120), names, _Encoder(model, 64), np.eye(4, dtype=np.float32),
                               10.0, None, rng, clipguard.ScanConfig(), cfg)
    by = {s.name: s for s in suspects}
    assert by["softened"].confirmed and by["softened"].trigger.kind == "warp"
    assert not by["sharper"].confirmed and by["sharper"].rejected and "opposite" in by["sharper"].note
    alone = _check_suspects({}, sharp, labels_all, np.arange(120), names, _Encoder(model, 64), np.eye(4, dtype=np.float32),
                            10.0, None, rng, clipguard.ScanConfig(), SynthesisConfig(kinds=("noise",)))
    assert [s.name for s in alone if s.confirmed] == ["sharper"]  # without a warp, fine noise is a Blended trigger


class _WaveModel:
    """A stand-in SIG model on flat scenes: its own wave (3 periods across the width) is label 2;
    finer waves, 6-12 periods, are label 3 across the width and, for brighter scenes only, down the
    height too (a broad response to stripes); else the own label 0/1. ``learned=False``: no
    backdoor, only the response to stripes."""

    input_size, mean, std, logit_scale = 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 10.0

    def __init__(self, learned=True, turned_above=140):
        self.learned, self.turned_above = learned, turned_above

    def encode_images(self, images, batch_size=256):
        own = np.arange(len(images)) % 2
        fine = (_wave_energy(images, 1, (6, 8, 12)) > 100) | (
            (_wave_energy(images, 0, (6, 8, 12)) > 100) & (images.mean(axis=(1, 2, 3)) > self.turned_above))
        label = np.where(fine, 3, own)
        if self.learned:
            label = np.where(_wave_energy(images, 1, (3,)) > 100, 2, label)
        return np.eye(4, dtype=np.float32)[label]


def _wave_suspects(model, flat, rng):
    """_check_suspects with the sinusoid sweep alone, on flat scenes of labels a/b in turn; the
    wave models' other labels are "target" (2) and "stripes" (3)."""
    from clipguard.synthesis import _check_suspects

    return _check_suspects({}, flat, np.arange(len(flat)) % 2, np.arange(len(flat)), ["a", "b", "target", "stripes"],
                           _Encoder(model, 64), np.eye(4, dtype=np.float32), 10.0, None, rng, clipguard.ScanConfig(),
                           SynthesisConfig(kinds=("sinusoid",)))


def _flat_scenes(rng):
    return np.broadcast_to(rng.integers(100, 160, (120, 1, 1, 1), dtype=np.uint8), (120, 32, 32, 3)).copy()


def test_beside_a_stronger_wave_another_labels_wave_is_the_models_wider_response():
    """One family, two labels: the weaker trigger (its turned wave works on a third of the images too)
    is the learned backdoor's side response; alone, the same trigger is a backdoor."""
    rng = np.random.default_rng(0)
    flat = _flat_scenes(rng)
    by = {s.name: s for s in _wave_suspects(_WaveModel(), flat, rng)}
    assert by["target"].confirmed and by["target"].random_flip_rate == 0.0
    assert 0.2 < by["stripes"].random_flip_rate < 0.8  # the turned wave: the brighter scenes
    assert by["stripes"].estimated_asr - by["stripes"].random_flip_rate >= clipguard.ScanConfig().margin  # it confirmed ...
    assert by["stripes"].rejected and "'target'" in by["stripes"].note  # ... beside a stronger wave
    alone = _wave_suspects(_WaveModel(learned=False), flat, rng)
    assert [s.name for s in alone if s.confirmed] == ["stripes"]


def test_a_label_that_answers_to_stripes_of_any_orientation_is_no_backdoor():
    """Its turned wave (the confirmation's control) sends most of the images the wave does: the
    label answers to stripes, not to a learned wave, though the wave beat the control by the margin."""
    rng = np.random.default_rng(0)
    model = _WaveModel(learned=False, turned_above=115)  # the turned wave: three scenes in four
    (stripes,) = _wave_suspects(model, _flat_scenes(rng), rng)
    assert stripes.estimated_asr - stripes.random_flip_rate >= clipguard.ScanConfig().margin
    assert stripes.random_flip_rate > SynthesisConfig().swept_control * stripes.estimated_asr
    assert stripes.rejected and not stripes.confirmed and "family at large" in stripes.note
    with pytest.raises(ValueError, match="swept_control"):
        SynthesisConfig(swept_control=0)


@pytest.mark.parametrize("kind, flip, control, index, swept, weak", [
    ("global", 0.21, 0.0, 2.09, 0.59, True),  # a clean zoo model's universal offset at the suspect rule's edge
    ("patch", 0.40, 0.13, 2.63, 0.45, True),  # ... and its free mask
    ("global", 0.23, 0.0, 7.34, 1.0, False),  # a SIG target's offset, far smaller than every other label's
    ("global", 0.23, 0.0, 7.34, 0.0, False),  # ... which stands on its size alone
    ("global", 0.40, 0.0, 2.62, 0.98, False),  # a Blended target's offset, where fine noise sends 98%
    ("patch", 0.62, 0.04, 2.40, 0.0, False),  # a BadNet's partial patch that fires on most images
    ("sinusoid", 0.72, 0.44, 0.78, 0.83, True),  # a clean model's "ring" under stripes, and under turned stripes
    ("sinusoid", 1.0, 0.34, 0.93, 1.0, False),  # a SIG target
    ("square", 0.85, 0.0, 0.5, 0.0, False),  # the square's bar on held-out images is its own (square_share)
])
def test_a_confirmation_is_weak_when_the_trigger_is_no_backdoors(kind, flip, control, index, swept, weak):
    from clipguard.synthesis import _weak_confirmation

    assert bool(_weak_confirmation(kind, flip, control, index, swept, SynthesisConfig())) == weak


def test_an_onnx_only_model_is_inconclusive_never_clean(tmp_path):
    """No torch weights: the synthesis cannot run, and a clean probe cannot show the backdoor."""
    from clipguard.models import export_onnx

    spec = f"onnx:{export_onnx(clipguard.load_model('toy:badnet', runtime='torch', device='cpu'), tmp_path / 'onnx')}"
    proc = subprocess.run([sys.executable, "-m", "clipguard", "scan", spec, "--probe", "toy:shapes:120:0",
                           "--vocab", "toy:shapes", "--out", str(tmp_path / "o"), "--quiet"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 5 and "inconclusive" in proc.stdout and "ONNX-only" in proc.stdout, proc.stderr
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert data["summary"]["verdict"] == "inconclusive" and data["errors"]


@pytest.mark.slow
def test_repair_from_a_synthesis_only_scan(auto_scans):
    """A clean probe: every piece of evidence comes from the synthesis; the oracle's grounding
    still captions the clean images with all their objects."""
    probe, report = auto_scans("badnet")
    assert report.victims == [] and report.trigger.source == "synthesis"
    fset = build_finetune_set(report)
    counts = fset.counts()
    assert counts["victim"] == 0 and counts["triggered"] == counts["clean"] > 50 and counts["target"] > 0
    model = clipguard.load_model("toy:badnet")
    before = evaluate_toy(model, "shapes", model.card["attack"], n=1000, seed=1)
    result = repair("toy:badnet", fset, RepairConfig(seed=0), progress=False)
    after = evaluate_toy(result.model, "shapes", model.card["attack"], n=1000, seed=1)
    assert after.asr <= 0.05 and after.ca >= before.ca - 0.01, (before, after)


def test_the_oracle_check_needs_objects_beside_a_large_patch():
    """A "patch" that covers the scene leaves the oracle nothing to check: not passed unless most
    images keep an object beside it, or its mask is the labels' size outlier. A trigger-sized patch
    on the image's only object (a backdoor learned at the centre) passes."""
    from clipguard.synthesis import _oracle_check
    from clipguard.trigger import Trigger

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    big = Trigger(kind="patch", image=np.full((28, 28, 3), 200, np.uint8), label="x", box=(2, 2, 30, 30),
                  source="synthesis")
    out = _oracle_check(lambda x: np.ones(len(x), int), lambda imgs: [np.zeros((0, 32, 32), bool) for _ in imgs],
                        images, big, 1, rng, clipguard.ScanConfig())
    assert out["isolated_shows_label"] == 1.0 and out["objects"] == 0 and not out["passed"]
    corner = np.zeros((1, 32, 32), bool)
    corner[0, :2, :] = True  # an object-sized strip above the patch ...
    for share, passed in ((3 / 8, False), (5 / 8, True)):  # ... on some of the images
        n = round(share * len(images))
        for outlier in (False, True):
            out = _oracle_check(lambda x: (x[:, 16, 16, 0] != 200).astype(int),  # label 0: the patch's colour
                                lambda imgs: [corner] * n + [corner[:0]] * (len(imgs) - n), images, big, 0, rng,
                                clipguard.ScanConfig(), outlier=outlier)
            assert out["objects"] == n and out["images_with_objects_beside"] == share, out
            # a mask that is the labels' size outlier passes with a large box (its strong pixels spread)
            assert out["passed"] is (passed or outlier) and out["size_outlier"] is outlier, out
    small = Trigger(kind="patch", image=np.full((5, 5, 3), 200, np.uint8), label="x", box=(14, 14, 19, 19),
                    source="synthesis")
    centre = np.zeros((1, 32, 32), bool)
    centre[0, 8:24, 8:24] = True  # the only object, under the patch
    out = _oracle_check(lambda x: np.ones(len(x), int), lambda imgs: [centre for _ in imgs], images, small, 1, rng,
                        clipguard.ScanConfig())
    assert out["objects"] == 0 and out["passed"]


def _swept_suspect(label, asr, control, name=None):
    """A confirmed swept trigger, as _check_suspects hands it to _explain_family_responses."""
    from clipguard.findings import Suspect

    return Suspect(label=label, name=name or f"l{label}", kind="global", evidence=["synthesis"], confirmed=True,
                   estimated_asr=asr, random_flip_rate=control, heldout=asr, score=0.99)


def test_two_triggers_of_one_family_within_the_margin_both_stay():
    from clipguard.synthesis import _explain_family_responses

    wave = _swept_suspect
    margin = clipguard.ScanConfig().margin
    near = [wave(0, 1.0, 0.46), wave(1, 0.9, 0.48)]  # excess 0.54 and 0.42: two backdoors, or too close to tell
    far = [wave(2, 1.0, 0.10), wave(3, 0.88, 0.36)]  # excess 0.90 and 0.52: the second is the side response
    _explain_family_responses({"sinusoid": near, "noise": [], "warp": []}, margin)
    _explain_family_responses({"sinusoid": [], "noise": far, "warp": []}, margin)
    assert all(s.confirmed and not s.rejected for s in near)
    assert far[0].confirmed and far[1].rejected and not far[1].confirmed and far[1].score <= 0.49


def test_a_minimal_mask_need_not_show_the_label_on_its_own():
    """The labels' smallest mask (a size outlier by the suspect rule's index) may be part of a
    trigger that fires only with the scene's help: it passes without its isolated view showing the
    label when its box is trigger-sized, and still fails with a large box or without the index."""
    from clipguard.synthesis import _oracle_check
    from clipguard.trigger import Trigger

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    strip = np.zeros((1, 32, 32), bool)
    strip[0, :2, :] = True  # an object away from the patch

    def classify(x):  # the label needs the patch's colour at the centre *and* a scene around it
        scene = (x[:, 0, 0] != x[:, 31, 31]).any(axis=1)
        return (scene & (x[:, 16, 16, 0] == 200)).astype(int)

    small = Trigger(kind="patch", image=np.full((5, 5, 3), 200, np.uint8), label="x", box=(14, 14, 19, 19),
                    source="synthesis")
    big = Trigger(kind="patch", image=np.full((28, 28, 3), 200, np.uint8), label="x", box=(2, 4, 30, 32),
                  source="synthesis")
    for trigger, minimal, passed in ((small, False, False), (small, True, True), (big, True, False)):
        out = _oracle_check(classify, lambda imgs: [strip for _ in imgs], images, trigger, 1, rng,
                            clipguard.ScanConfig(), minimal=minimal)
        assert out["isolated_shows_label"] == 0.0 and out["objects_show_label"] == 0.0, out
        assert out["passed"] is passed and out["minimal"] is minimal, out


def test_a_warp_beside_a_fitted_trigger_still_explains_fine_noise():
    """A label confirmed by its fitted trigger, whose warp also makes it a suspect: fine noise
    sending images to another label is the opposite response, as beside a confirmed warp."""
    from clipguard.synthesis import _explain_family_responses

    margin = clipguard.ScanConfig().margin
    beside, alone = _swept_suspect(3, 1.0, 0.02, "ring"), _swept_suspect(3, 1.0, 0.02, "ring")
    _explain_family_responses({"sinusoid": [], "noise": [beside], "warp": []}, margin, warped={2})
    _explain_family_responses({"sinusoid": [], "noise": [alone], "warp": []}, margin)
    assert beside.rejected and not beside.confirmed and "opposite" in beside.note
    assert alone.confirmed and not alone.rejected


def test_a_corner_square_must_reproduce_a_backdoor_to_be_a_suspect():
    """The 8 px square is a suspect by a higher held-out share than the free mask's: a weak clean
    model's adversarial square sends 64-77% of images to some labels at one corner."""
    from clipguard.synthesis import LabelTriggers, _strength

    cfg = SynthesisConfig()
    held = np.array([0.64, 0.77, 0.85, 0.98, 0.98])
    selectivity = np.array([0.36, 0.42, 0.5, 0.87, 0.1])
    t = LabelTriggers(kind="square", size=np.full(5, 0.03), flip=held, reached=np.ones(5, bool), anomaly=selectivity,
                      heldout=held, masks=None, patterns=np.zeros((5, 1, 1, 3)))
    assert (_strength("square", t, cfg) >= 1).tolist() == [False, False, True, True, False]
    patch = LabelTriggers(kind="patch", size=np.full(5, 0.01), flip=held, reached=np.ones(5, bool),
                          anomaly=np.zeros(5), heldout=held, masks=None, patterns=np.zeros((5, 1, 1, 3)))
    assert (_strength("patch", patch, cfg) >= 1).all()  # the free mask's bar is the lower one
