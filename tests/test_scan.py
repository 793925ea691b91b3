"""Scan mechanics: report files, CLI exit codes, folder probes. (The detection figures of issue 4
need the bundled models that meet issue 3's targets; they are not bundled yet.)"""

import json
import subprocess
import sys

import numpy as np
import pytest

import clipguard
from clipguard import toyworld
from clipguard.probe import load_probe
from clipguard.scan import _window_search, scan


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from clipguard.training import TrainConfig, train_toy_model

    out = tmp_path_factory.mktemp("model") / "m"
    train_toy_model(TrainConfig(scenes=300, steps=4, batch=32, eval_scenes=50, rate=0.05), out, progress=False)
    return f"dir:{out}"


def test_scan_report_files(tiny_model, tmp_path):
    model = clipguard.load_model(tiny_model)
    probe = load_probe("toy:shapes:40:0.05", model, seed=0)
    assert len(probe.poisoned) == 2 and probe.trigger_boxes.shape == (2, 4)
    report = scan(model, probe.images, toyworld.vocabulary("shapes"), "classical", mode="probe")
    # 40 probe images cannot show poisoned samples reliably: never "clean" from them.
    assert report.verdict == "inconclusive" and "too few" in report.reason and 0.0 <= report.score <= 1.0
    assert len(report.findings) == 40 and sum(f.regions for f in report.findings) > 40
    assert report.timings["encoded_inputs"] >= 80  # whole images and their background views at least
    data = json.loads(report.to_json(tmp_path / "r.json").read_text())
    assert data["schema"] == "clipguard.scan/2" and data["summary"]["probe_size"] == 40
    assert data["summary"]["verdict"] == "inconclusive" and data["summary"]["mode"] == "probe"
    back = clipguard.ScanReport.from_json(tmp_path / "r.json")
    assert back.verdict == report.verdict and back.findings == report.findings and back.labels == report.labels
    assert len(data["labels"]) == 10 and len(data["findings"]) == 40
    page = report.to_html(tmp_path / "r.html").read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page


def test_window_search_finds_the_occluded_patch():
    """A fake model that sees label 1 while more than half of a bright 6x6 patch is visible: the
    window search must return a small box on the patch that hides at least half of it."""

    class PatchModel:
        input_size, mean, std, logit_scale = 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 10.0

        def encode_pixels(self, pixels, batch_size=256):
            bright = pixels.max(axis=1) > 0.99  # [N,H,W]
            seen = bright[:, 10:16, 20:26].mean(axis=(1, 2)) > 0.5
            return np.stack([~seen, seen], axis=1).astype(np.float32)

    images = np.full((1, 32, 32, 3), 60, np.uint8)
    images[0, 10:16, 20:26] = 255
    model = PatchModel()
    text = np.eye(2, dtype=np.float32)
    from clipguard.scan import ScanConfig, _Encoder

    found = _window_search(model, _Encoder(model, 64), images, [0], np.array([1]), np.array([0.99]), text, ScanConfig())
    x0, y0, x1, y1 = found[0]
    covered = max(0, min(x1, 26) - max(x0, 20)) * max(0, min(y1, 16) - max(y0, 10))
    assert covered >= 18 and (x1 - x0) * (y1 - y0) <= 2 * 36, found[0]


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "clipguard", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_scan_exit_codes(tiny_model, tmp_path):
    proc = _cli("scan", tiny_model, "--probe", "toy:shapes:30", "--mode", "probe", "--out", str(tmp_path / "a"),
                "--quiet", cwd=tmp_path)
    assert proc.returncode == 5 and "inconclusive" in proc.stdout, proc.stderr
    assert (tmp_path / "a" / "report.json").is_file() and (tmp_path / "a" / "report.html").is_file()
    summary = json.loads((tmp_path / "a" / "report.json").read_text())["summary"]
    assert f"{summary['encoded_inputs'] / 30:.1f} encoder inputs per probe image" in proc.stdout
    assert summary["image_size"] == [48, 48]
    proc = _cli("scan", tiny_model, "--probe", "toy:shapes:30", "--mode", "probe", "--precision", "int8",
                "--out", str(tmp_path / "q"), "--quiet", cwd=tmp_path)
    assert proc.returncode == 5 and json.loads((tmp_path / "q" / "report.json").read_text())["model"]["precision"] == "int8"
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _cli("scan", tiny_model, "--probe", str(empty), "--vocab", "toy:shapes", "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert proc.returncode == 3 and "nothing to scan" in proc.stderr
    proc = _cli("scan", "toy:nope", "--probe", "toy:shapes:10", "--out", str(tmp_path / "c"), cwd=tmp_path)
    assert proc.returncode == 2 and "toy:nope" in proc.stderr
    proc = _cli("scan", tiny_model, "--out", str(tmp_path / "d"), cwd=tmp_path)
    assert proc.returncode == 4
    proc = _cli("scan", tiny_model, "--probe", "toy:shapes:30", "--mode", "nope", "--out", str(tmp_path / "e"), cwd=tmp_path)
    assert proc.returncode == 4 and "--mode" in proc.stderr


def test_folder_probe_skips_unreadable_images(tiny_model, tmp_path):
    from clipguard.report import png_bytes

    scenes = toyworld.generate("shapes", 6, seed=0)
    for i, img in enumerate(scenes.images):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(img))
    (tmp_path / "broken.png").write_bytes(png_bytes(scenes.images[0])[:40])  # truncated
    (tmp_path / "text.jpg").write_text("not an image")
    probe = load_probe(str(tmp_path), clipguard.load_model(tiny_model))
    assert len(probe.images) == 6
    assert {s["input"].split("/")[-1] for s in probe.skipped} == {"broken.png", "text.jpg"}
    np.testing.assert_array_equal(probe.images[0], scenes.images[0])


def test_folder_probe_does_not_follow_links_out_and_bounds_the_listing(tiny_model, tmp_path, monkeypatch):
    from clipguard import probe as probe_mod
    from clipguard.report import png_bytes

    scenes = toyworld.generate("shapes", 3, seed=0)
    inside, outside = tmp_path / "probe", tmp_path / "elsewhere"
    (inside / "sub").mkdir(parents=True)
    outside.mkdir()
    for i, img in enumerate(scenes.images):
        (inside / "sub" / f"{i}.png").write_bytes(png_bytes(img))
    (outside / "secret.png").write_bytes(png_bytes(scenes.images[0]))
    (inside / "leak.png").symlink_to(outside / "secret.png")
    (inside / "alias.png").symlink_to(inside / "sub" / "0.png")  # stays inside: read
    (inside / "linked-dir").symlink_to(outside, target_is_directory=True)  # not walked
    model = clipguard.load_model(tiny_model)
    probe = load_probe(str(inside), model)
    assert sorted(probe.names) == ["alias.png", "sub/0.png", "sub/1.png", "sub/2.png"]
    assert [s["reason"] for s in probe.skipped] == ["a symbolic link out of the probe folder (not followed)"]
    monkeypatch.setattr(probe_mod, "MAX_LISTED", 3)
    with pytest.raises(ValueError, match="more than 3 entries"):
        load_probe(str(inside), model)
    assert len(load_probe(str(inside), model, limit=2).images) == 2


def test_the_window_search_stops_on_labels_where_it_is_futile(monkeypatch):
    """Rounds of 8 images per label: a trigger's label (every image verifies) is searched whole,
    a label whose first round verifies nothing stops there, and one that verifies 1 image in 30
    stops after one round (it was not among them) or two (1 in 16)."""
    from clipguard.findings import ImageFinding
    from clipguard.scan import ScanConfig, WholeImage, search_until_futile

    labels = np.array([0] * 30 + [1] * 30 + [2] * 30)
    verifies = set(range(30)) | {60}  # label 0: all; label 1: none; label 2: 1 in 30
    findings = [ImageFinding(index=i, label=int(c), prob=0.9, regions=1, grounded=False, candidate=int(c))
                for i, c in enumerate(labels)]
    searched = []

    def fake_windows(model, enc, images, found, todo, *args):
        searched.extend(todo)
        for i in todo:
            found[i].verified = i in verifies

    monkeypatch.setattr(sys.modules["clipguard.scan"], "localize_windows", fake_windows)  # the module, not scan()
    whole = WholeImage(label=labels, prob=np.full(90, 0.9, np.float32), emb=np.zeros((90, 4), np.float32))
    cfg = ScanConfig(search_round=8)
    done = search_until_futile(None, None, None, findings, list(range(90)), whole, None, 1.0, cfg)
    assert sorted(searched) == done and len(set(done)) == len(done)  # no image searched twice
    per_label = np.bincount(labels[done], minlength=3)
    assert per_label[0] == 30 and per_label[1] == 8 and per_label[2] == (16 if 60 in done else 8), per_label
    # After Algorithm 2 a label stops once enough of its images are verified to reconstruct the patch.
    for f in findings:
        f.verified = False
    searched.clear()
    done = search_until_futile(None, None, None, findings, list(range(30)), whole, None, 1.0, cfg, enough=4)
    assert len(done) == 8 and sum(findings[i].verified for i in done) == 8


def test_grounding_until_an_object_shows_the_label_gives_the_same_findings():
    """The probe analysis encodes an image's object regions largest first until one grounds its
    label, its small and background-sized regions only where the label is ungrounded (or its
    background still shows the label), and a grounded image's background view only where its
    label's ungrounded images showed a background hit: the same grounding, candidates, verified
    regions and boxes as encoding everything, with fewer inputs; ``name_objects`` then names every
    image's objects as the full grounding does."""
    from clipguard.oracle import get_oracle
    from clipguard.scan import (
        ProbeAnalysis,
        ScanConfig,
        _Clock,
        _Encoder,
        ground,
        name_objects,
        oracle_regions,
        verify,
        whole_image_labels,
    )

    model = clipguard.load_model("toy:badnet")  # shapes: no data files needed
    probe = load_probe("toy:shapes:200:0.1", model, seed=0)
    text, scale, cfg = model.class_embeddings(toyworld.vocabulary("shapes")), model.logit_scale, ScanConfig()
    whole = whole_image_labels(_Encoder(model, 256), probe.images, text, scale)
    reg = oracle_regions(get_oracle("classical"), probe.images, cfg)
    runs = {}
    for complete in (True, False):
        enc = _Encoder(model, 256)
        g = ground(model, enc, _Clock(None), probe.images, reg, whole, text, scale, cfg, complete=complete)
        found = verify(model, enc, _Clock(None), probe.images, reg, whole, g, text, scale, cfg,
                       lazy_background=not complete)
        runs[complete] = (g, found, enc.count)
    (g_all, all_, n_all), (g_obj, obj, n_obj) = runs[True], runs[False]
    assert g_all.encoded.all() and not g_obj.encoded[g_obj.object_sized].all()
    np.testing.assert_array_equal(g_all.grounded, g_obj.grounded)
    np.testing.assert_array_equal(g_all.candidate, g_obj.candidate)
    assert n_obj < n_all
    flagged = {f.label for f in obj if not f.grounded and f.background_holds}
    for a, b in zip(all_, obj):
        assert (a.candidate, a.verified, a.trigger_box) == (b.candidate, b.verified, b.trigger_box)
        assert b.background_holds <= a.background_holds
        if not b.grounded or b.label in flagged:
            assert b.background_holds == a.background_holds
        assert b.global_share <= a.global_share
        assert [x for x in b.region_labels if x is not None] == [x for x, y in zip(a.region_labels, b.region_labels)
                                                                  if y is not None]
        if not b.grounded or b.background_holds:
            assert b.region_labels == a.region_labels and b.global_share == a.global_share
        else:
            assert b.label in b.object_labels and set(b.object_labels) <= set(a.object_labels)
    assert sum(f.verified for f in obj) > 0 and any(None in f.region_labels for f in obj)
    skipped = [b for b in obj if b.grounded and b.label not in flagged]  # no background view encoded
    assert skipped and not any(b.background_holds for b in skipped)
    unnamed = int((g_obj.object_sized & ~g_obj.encoded).sum())
    assert unnamed > 0
    enc = _Encoder(model, 256)
    name_objects(model, enc, _Clock(None), probe.images,
                 ProbeAnalysis(findings=obj, suspects=[], stats={}, regions=reg, whole=whole, grounding=g_obj), text, scale)
    assert enc.count == unnamed
    assert [a.object_labels for a in all_] == [b.object_labels for b in obj]


def test_the_summary_line_tells_an_explained_away_suspect_from_a_weak_one():
    from types import SimpleNamespace

    from clipguard.cli import summary_line
    from clipguard.findings import Suspect

    weak = Suspect(label=1, name="ring", kind="global", evidence=["probe"], anomaly=4.2, victims=[3, 5])
    explained = Suspect(label=2, name="star", kind="global", evidence=["synthesis"], anomaly=0.9)
    explained.reject("a sinusoid trigger of 'arrow' is stronger")
    confirmed = Suspect(label=0, name="arrow", kind="global", evidence=["synthesis"], confirmed=True)
    report = SimpleNamespace(verdict="backdoored", score=1.0, affected_labels=["arrow"], victims=[], probe_size=300,
                             reason="'arrow': global trigger", timings={}, suspects=[confirmed, weak, explained])
    line = summary_line("m", report)
    assert "unconfirmed suspects: ring (probe, anomaly 4.2, 2 victims), " in line
    assert "star (synthesis, anomaly 0.9, 0 victims, explained away: see the report)" in line
