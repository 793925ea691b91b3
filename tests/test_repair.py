"""Repair (issue 5): the compact fine-tuning set, fine-tuning toy:badnet clean, the formats it
writes, and the CLI's errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

import clipguard
from clipguard import toyworld
from clipguard.evaluate import evaluate_toy
from clipguard.probe import load_probe
from clipguard.repair import FinetuneSet, RepairConfig, build_finetune_set, repair, save_repaired
from clipguard.scan import scan

VOCAB = toyworld.vocabulary("shapes")


@pytest.fixture(scope="module")
def badnet_scan():
    model = clipguard.load_model("toy:badnet")
    probe = load_probe("toy:shapes:500:0.02", model, seed=0)
    return model, probe, scan(model, probe.images, VOCAB, "classical", mode="probe")


def test_finetune_set_is_compact_and_targeted(badnet_scan):
    _, probe, report = badnet_scan
    fset = build_finetune_set(report, pairs=300)
    counts = fset.counts()
    assert 0 < len(fset) <= 300 and len(fset.captions) == len(fset.images) == len(fset.kinds)
    assert counts["victim"] >= 9 and counts["triggered"] == counts["clean"] > 50 and counts["target"] > 0
    star = VOCAB.index("star")
    for labs, kind, caption in zip(fset.labels, fset.kinds, fset.captions):
        if kind in ("victim", "victim_cleaned", "triggered", "clean"):
            assert star not in labs and "star" not in caption  # the trigger is tied to nothing
    # Triggered pairs differ from their clean twins exactly by a pasted copy of the trigger.
    kinds = np.array(fset.kinds)
    trig, clean = fset.images[kinds == "triggered"], fset.images[kinds == "clean"]
    changed = (trig != clean).any(axis=3).sum(axis=(1, 2))
    side = fset.trigger.size[0]
    assert (changed <= side * side).all() and (changed > 0).mean() > 0.9
    victims = set(fset.sources[kinds == "victim"].tolist())
    assert victims <= set(probe.poisoned.tolist())
    others = fset.sources[np.isin(kinds, ["triggered", "clean", "target"])]
    assert not set(others.tolist()) & set(probe.poisoned.tolist())  # poisoned images only as victims
    assert len(fset.holdout) > 100


def test_finetune_set_falls_back_to_the_models_labels_when_little_is_grounded(badnet_scan):
    """A backdoor that fires on the scan's own region views (a WaNet model's resampling) leaves
    few grounded images of other labels: the set then takes ungrounded ones, captioned with the
    model's own label, rather than coming out with no clean images at all."""
    import copy

    _, probe, report = badnet_scan
    starved = copy.copy(report)
    starved.findings = [copy.copy(f) for f in report.findings]
    victims = {v.index for v in report.victims}
    kept = 0
    for f in starved.findings:
        if f.grounded and f.index not in victims and f.label != VOCAB.index("star"):
            kept += 1
            f.grounded = kept <= 20  # 20 grounded others left, under a quarter of the 300 pairs
    fset = build_finetune_set(starved, pairs=300)
    clean = fset.sources[np.array(fset.kinds) == "clean"]
    assert len(clean) > 75
    by_index = {f.index: f for f in starved.findings}
    ungrounded = [i for i in clean.tolist() if not by_index[i].grounded]
    assert len(ungrounded) > 50 and not set(clean.tolist()) & victims
    for labs, kind, src in zip(fset.labels, fset.kinds, fset.sources.tolist()):
        if kind == "clean" and not by_index[src].grounded:
            assert labs[0] == by_index[src].label  # captioned with the model's own label first


def test_finetune_set_round_trips_and_rejects_bad_input(badnet_scan, tmp_path):
    _, _, report = badnet_scan
    fset = build_finetune_set(report, pairs=120, seed=3)
    back = FinetuneSet.load(fset.save(tmp_path / "set.npz"))
    assert back.captions == fset.captions and back.labels == fset.labels and back.kinds == fset.kinds
    assert np.array_equal(back.images, fset.images) and np.array_equal(back.holdout, fset.holdout)
    assert np.array_equal(back.trigger.image, fset.trigger.image) and back.vocab == fset.vocab
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        FinetuneSet.load(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="pairs"):
        build_finetune_set(report, pairs=3)
    with pytest.raises(ValueError, match="probe images"):
        build_finetune_set(report, report.images[:10])
    clean = scan(clipguard.load_model("toy:clean"), load_probe("toy:shapes:60", clipguard.load_model("toy:clean")).images,
                 VOCAB, "classical", mode="probe")
    with pytest.raises(ValueError, match="nothing to repair"):
        build_finetune_set(clean)


def test_repair_removes_the_badnet_backdoor(badnet_scan, tmp_path):
    model, probe, report = badnet_scan
    fset = build_finetune_set(report)
    before = evaluate_toy(model, "shapes", model.card["attack"], n=1000, seed=1)
    result = repair("toy:badnet", fset, RepairConfig(seed=0), progress=False)
    after = evaluate_toy(result.model, "shapes", model.card["attack"], n=1000, seed=1)
    assert after.asr <= 0.02 and after.ca >= before.ca - 0.01, (before, after)
    rec = result.record
    assert rec.pairs == len(fset) <= 320 and rec.steps <= 300
    assert rec.asr_before > 0.9 and rec.asr_after < 0.3
    assert rec.to_dict()["estimated_asr"]["after"] == rec.asr_after and len(rec.history) >= 2
    # The input model is untouched; the repaired one is written in the input's format.
    again = evaluate_toy(clipguard.load_model("toy:badnet", runtime="torch", device="cpu"), "shapes",
                         model.card["attack"], n=300, seed=1)
    assert again.asr > 0.9
    out = save_repaired(result.model, tmp_path / "fixed")
    loaded = clipguard.load_model(f"dir:{out}")  # ONNX export inside
    assert loaded.card["repair"]["pairs"] == len(fset)
    emb_t = result.model.encode_images(probe.images[:8])
    assert np.abs(loaded.encode_images(probe.images[:8]) - emb_t).max() < 2e-2  # float16 weights
    # Scanned again, the repaired model comes out clean.
    rescan = scan(loaded, probe.images, VOCAB, "classical", mode="probe")
    assert rescan.verdict == "clean" and rescan.affected_labels == [], rescan.suspects


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "clipguard", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_repair_errors(tmp_path):
    (tmp_path / "scan").mkdir()
    proc = _cli("repair", "toy:badnet", "--scan", str(tmp_path / "scan"), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 3 and "nothing to repair" in proc.stderr
    (tmp_path / "scan" / "finetune_set.npz").write_bytes(b"junk")
    proc = _cli("repair", "toy:badnet", "--scan", str(tmp_path / "scan"), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 2 and "not a clipguard fine-tuning set" in proc.stderr
    proc = _cli("repair", "toy:badnet", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 4
    assert not (tmp_path / "o" / "model").exists()


def test_demo_end_to_end(tmp_path):
    # --mode probe: the demo's own plumbing end to end at half the time; the default mode's
    # synthesis, and repair from it, are tested in tests/test_synthesis.py.
    proc = _cli("demo", "--out", str(tmp_path / "demo"), "--quiet", "--mode", "probe", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "demo" / "record.json").read_text())
    before, after = record["before"], record["after"]
    assert before["asr"] >= 0.95 and after["asr"] <= 0.02 and after["ca"] >= before["ca"] - 0.01, record
    assert record["scan"]["affected_labels"] == ["star"] and record["pairs"] <= 320
    assert record["rescan"]["verdict"] == "clean"
    assert set(record["seconds"]) >= {"scan", "repair", "evaluate"}
    assert (tmp_path / "demo" / "report.html").read_text().startswith("<!doctype html>")
    assert clipguard.load_model(f"dir:{tmp_path / 'demo' / 'model'}").card["repair"]["pairs"] == record["pairs"]
    assert "after" in proc.stdout and "CA" in proc.stdout


def test_cli_scan_then_repair(tmp_path):
    proc = _cli("scan", "toy:badnet", "--probe", "toy:shapes:300:0.03", "--mode", "probe", "--out", str(tmp_path / "s"),
                "--quiet", cwd=tmp_path)
    assert proc.returncode == 1 and (tmp_path / "s" / "finetune_set.npz").is_file(), proc.stderr
    proc = _cli("repair", "toy:badnet", "--scan", str(tmp_path / "s"), "--out", str(tmp_path / "r"), "--quiet",
                "--steps", "60", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "r" / "record.json").read_text())
    assert record["after"]["asr"] < record["before"]["asr"] and record["steps"] <= 60
    assert (tmp_path / "r" / "model" / "onnx" / "image.onnx").is_file() and "repaired toy:badnet" in proc.stdout
