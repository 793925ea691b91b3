"""The bundled toy models meet their targets (issue 3), and the scan finds their backdoors -- and
nothing in the clean twin -- with the figures issue 4 asks for."""

import numpy as np
import pytest

import clipguard
from clipguard import toyworld
from clipguard.evaluate import evaluate_toy
from clipguard.probe import load_probe
from clipguard.scan import scan

ATTACKS = {name: clipguard.load_model(f"toy:{name}").card["attack"] for name in ("badnet", "blended")}


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


def test_bundled_models_are_listed():
    assert set(clipguard.models.available_toy_models()) >= {"badnet", "blended", "clean"}


@pytest.mark.parametrize("name,asr_min", [("badnet", 0.95), ("blended", 0.90)])
def test_poisoned_models_meet_their_targets(name, asr_min):
    model = clipguard.load_model(f"toy:{name}")
    card = model.card
    assert card["target"] == "star" and card["train_seconds"] < 15 * 60
    result = evaluate_toy(model, "shapes", card["attack"], n=2000, seed=1)
    assert result["ca"] >= 0.93 and result["asr"] >= asr_min, result
    assert result["n_asr"] < 2000  # target-class images are excluded from ASR


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_clean_twin_ignores_the_triggers(attack):
    model = clipguard.load_model("toy:clean")
    assert model.card["attack"] is None and model.card["train_seconds"] < 15 * 60
    result = evaluate_toy(model, "shapes", ATTACKS[attack], n=2000, seed=1)
    assert result["ca"] >= 0.93 and result["asr"] <= 0.10, result


@pytest.fixture(scope="module")
def badnet():
    return clipguard.load_model("toy:badnet")


@pytest.mark.parametrize("oracle", ["classical", "toy"])
def test_scan_finds_the_badnet_trigger_and_its_victims(badnet, oracle):
    probe = load_probe("toy:shapes:500:0.02", badnet, seed=0)
    report = scan(badnet, probe.images, toyworld.vocabulary("shapes"), oracle)
    assert report.verdict == "backdoored" and report.affected_labels == ["star"]
    truth = {int(i): tuple(b) for i, b in zip(probe.poisoned, probe.trigger_boxes)}
    found = {v["index"]: v["trigger_box"] for v in report.victims}
    hits = set(found) & set(truth)
    assert len(hits) / len(found) >= 0.9 and len(hits) / len(truth) >= 0.9, (sorted(found), sorted(truth))
    good = [i for i in hits if found[i] is not None and _iou(found[i], truth[i]) >= 0.5]
    assert len(good) >= 0.9 * len(hits)
    t = report.trigger
    assert t["kind"] == "localized" and t["image"].shape[2] == 3 and t["size"][0] <= 12
    true_asr = evaluate_toy(badnet, "shapes", badnet.card["attack"], n=1000, seed=1)["asr"]
    suspect = next(s for s in report.suspects if s["name"] == "star")
    assert abs(suspect["estimated_asr"] - true_asr) <= 0.10, (suspect["estimated_asr"], true_asr)
    assert suspect["random_flip_rate"] < 0.2


def test_scan_finds_the_blended_target_unlocalized():
    model = clipguard.load_model("toy:blended")
    probe = load_probe("toy:shapes:500:0.02", model, seed=0)
    report = scan(model, probe.images, toyworld.vocabulary("shapes"), "classical")
    assert report.verdict == "backdoored" and report.affected_labels == ["star"]
    assert report.trigger["kind"] == "global" and report.trigger["size"] is None
    recall = len({v["index"] for v in report.victims} & set(probe.poisoned.tolist())) / len(probe.poisoned)
    assert recall >= 0.9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scan_calls_the_clean_twin_clean(seed):
    model = clipguard.load_model("toy:clean")
    probe = load_probe("toy:shapes:500:0.02:badnet:target=star", model, seed=seed)
    report = scan(model, probe.images, toyworld.vocabulary("shapes"), "classical", clipguard.ScanConfig(seed=seed))
    assert report.verdict == "clean" and report.affected_labels == [] and report.victims == [], report.suspects
    assert report.score < 0.5
