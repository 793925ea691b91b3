"""The bundled toy models meet their targets (issue 3), and the scan finds their backdoors -- and
nothing in the clean twin -- with the figures issue 4 asks for."""

import pytest

import clipguard
from clipguard import toyworld
from clipguard.evaluate import evaluate_toy
from clipguard.probe import load_probe
from clipguard.scan import scan
from clipguard.toyworld import fashion

# Bundled poisoned models: world, CA floor, ASR floor. Ten clothing classes at 64 px are harder than
# ten shapes at 48 px (shirt / t-shirt / pullover / coat), hence the fashion models' lower CA.
POISONED = {"badnet": ("shapes", 0.93, 0.95), "blended": ("shapes", 0.93, 0.90),
            "fashion-badnet": ("fashion", 0.70, 0.95), "fashion-blended": ("fashion", 0.70, 0.90)}
CLEAN = {"clean": ("shapes", 0.93), "fashion-clean": ("fashion", 0.70)}
TARGET = {"shapes": "star", "fashion": "bag"}


def _world_param(name):
    """``name`` as a test parameter, skipped where the fashion world's data is missing."""
    world = POISONED[name][0] if name in POISONED else CLEAN[name][0]
    marks = [pytest.mark.skipif(world == "fashion" and not fashion.available(),
                                reason=f"Fashion-MNIST files absent; install with: {fashion.INSTALL_HINT}")]
    return pytest.param(name, marks=marks, id=name)


def _attack(name):
    return clipguard.load_model(f"toy:{name}").card["attack"]


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


def test_bundled_models_are_lean():
    """One format per bundled model (the ONNX copy is exported to the cache on first use) and
    only the token rows the toy vocabulary uses: the package stays small."""
    from clipguard.models.loading import TOY_DIR

    for folder in TOY_DIR.iterdir():
        if folder.is_dir():
            assert not (folder / "onnx").exists(), folder
            assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 4e6, folder


def test_bundled_models_are_listed():
    assert set(clipguard.models.available_toy_models()) >= set(POISONED) | set(CLEAN)


@pytest.mark.parametrize("name", [_world_param(n) for n in POISONED])
def test_poisoned_models_meet_their_targets(name):
    world, ca_min, asr_min = POISONED[name]
    model = clipguard.load_model(f"toy:{name}")
    card = model.card
    assert card["world"] == world and card["target"] == TARGET[world] and card["train_seconds"] < 15 * 60
    result = evaluate_toy(model, world, card["attack"], n=2000, seed=1)
    assert result.ca >= ca_min and result.asr >= asr_min, result
    assert result.n_asr < 2000  # target-class images are excluded from ASR


@pytest.mark.parametrize("name,attack_of", [
    pytest.param(c, p, marks=_world_param(c).marks, id=f"{c}-{p}")
    for c in CLEAN for p in POISONED if POISONED[p][0] == CLEAN[c][0]])
def test_clean_twins_ignore_the_triggers(name, attack_of):
    world, ca_min = CLEAN[name]
    model = clipguard.load_model(f"toy:{name}")
    assert model.card["attack"] is None and model.card["train_seconds"] < 15 * 60
    result = evaluate_toy(model, world, _attack(attack_of), n=2000, seed=1)
    assert result.ca >= ca_min and result.asr <= 0.10, result


def _scan_poisoned(name, oracle):
    """Scan a bundled poisoned model with 500 scenes of its world, 2% triggered, by the probe
    analysis alone; the scan must find exactly its target."""
    world = POISONED[name][0]
    model = clipguard.load_model(f"toy:{name}")
    probe = load_probe(f"toy:{world}:500:0.02", model, seed=0)
    report = scan(model, probe.images, toyworld.vocabulary(world), oracle, mode="probe")
    assert report.verdict == "backdoored" and report.affected_labels == [TARGET[world]], report.suspects
    return world, model, probe, report


@pytest.mark.parametrize("oracle", ["classical", "toy"])
@pytest.mark.parametrize("name", [_world_param("badnet"), _world_param("fashion-badnet")])
def test_scan_finds_the_badnet_trigger_and_its_victims(name, oracle):
    world, model, probe, report = _scan_poisoned(name, oracle)
    truth = {int(i): tuple(b) for i, b in zip(probe.poisoned, probe.trigger_boxes)}
    found = {v.index: v.trigger_box for v in report.victims}
    hits = set(found) & set(truth)
    assert len(hits) / len(found) >= 0.9 and len(hits) / len(truth) >= 0.9, (sorted(found), sorted(truth))
    good = [i for i in hits if found[i] is not None and _iou(found[i], truth[i]) >= 0.5]
    assert len(good) >= 0.9 * len(hits)
    t = report.trigger
    assert t.kind == "patch" and t.source == "probe" and t.image.shape[2] == 3 and t.size[0] <= 12
    assert t.box is None  # the bundled BadNet pastes its patch anywhere: so must the confirmation
    true_asr = evaluate_toy(model, world, model.card["attack"], n=1000, seed=1).asr
    suspect = next(s for s in report.suspects if s.name == TARGET[world])
    assert abs(suspect.estimated_asr - true_asr) <= 0.10, (suspect.estimated_asr, true_asr)
    assert suspect.random_flip_rate < 0.2 and suspect.evidence == ["probe"]


@pytest.mark.parametrize("oracle", ["classical", "toy"])
@pytest.mark.parametrize("name", [_world_param("blended"), _world_param("fashion-blended")])
def test_scan_finds_the_blended_target_unlocalized(name, oracle):
    _, _, probe, report = _scan_poisoned(name, oracle)
    assert report.trigger.kind == "global" and report.trigger.size is None
    recall = len({v.index for v in report.victims} & set(probe.poisoned.tolist())) / len(probe.poisoned)
    assert recall >= 0.9


@pytest.mark.parametrize("seed,oracle", [(0, "classical"), (1, "classical"), (2, "classical"), (0, "toy")])
@pytest.mark.parametrize("name", [_world_param(n) for n in CLEAN])
def test_scan_calls_the_clean_twins_clean(name, seed, oracle):
    world = CLEAN[name][0]
    model = clipguard.load_model(f"toy:{name}")
    probe = load_probe(f"toy:{world}:500:0.02:badnet:target={TARGET[world]}", model, seed=seed)
    report = scan(model, probe.images, toyworld.vocabulary(world), oracle, clipguard.ScanConfig(seed=seed),
                  mode="probe")
    assert report.verdict == "clean" and report.affected_labels == [] and report.victims == [], report.suspects
    assert report.score < 0.5
