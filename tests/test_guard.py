"""The guard (clipguard.guard) and its HTTP service (clipguard.serve)."""

from __future__ import annotations

import json
import struct
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from service import bomb_png, running_service

import clipguard
from clipguard import toyworld
from clipguard.attacks import parse_attack
from clipguard.guard import Guard, GuardResult
from clipguard.probe import decode_image, load_probe
from clipguard.report import png_bytes

VOCAB = toyworld.vocabulary("shapes")


@pytest.fixture(scope="module")
def badnet():
    return clipguard.load_model("toy:badnet")


@pytest.fixture(scope="module")
def report_dir(badnet, tmp_path_factory):
    """A probe-analysis scan of toy:badnet (300 scenes, 3% triggered), written as a scan folder."""
    probe = load_probe("toy:shapes:300:0.03", badnet, seed=0)
    report = clipguard.scan(badnet, probe.images, VOCAB, "classical", mode="probe")
    assert report.verdict == "backdoored" and report.affected_labels == ["star"]
    out = tmp_path_factory.mktemp("scan")
    report.to_json(out / "report.json")
    return out


@pytest.fixture(scope="module")
def held_out(badnet):
    scenes = toyworld.generate("shapes", 60, seed=21, objects=(1, 1), split="test")
    keep = scenes.primary != VOCAB.classnames.index("star")
    triggered = parse_attack(badnet.card["attack"]).apply(scenes.images[keep], seed=21)
    return scenes.images[keep], scenes.primary[keep], triggered.images, triggered.boxes


def _fired(badnet, images):
    text = badnet.class_embeddings(VOCAB)
    return (badnet.encode_images(images) @ text.T).argmax(axis=1) == VOCAB.classnames.index("star")


def test_guard_with_a_report_flags_the_known_trigger_and_removes_it(badnet, report_dir, held_out):
    clean, labels, triggered, boxes = held_out
    fired = _fired(badnet, triggered)
    assert fired.mean() > 0.9
    with Guard(badnet, VOCAB, report=report_dir) as guard:
        assert guard.mode == "known" and [guard.names[c] for c in guard.known] == ["star"]
        on_trig = guard.check(triggered)
        on_clean = guard.check(clean)
    assert all(isinstance(r, GuardResult) for r in on_trig + on_clean)
    flagged = np.array([r.triggered for r in on_trig])
    assert flagged[fired].mean() >= 0.9
    assert sum(r.triggered for r in on_clean) <= 1
    for r, label, box in zip(on_trig, labels, boxes):
        if r.triggered:
            assert r.label == "star" and r.evidence == "known-patch" and 0.5 <= r.score <= 1.0
            # the box found is the trigger's (the patch's top-left corner within a pixel)
            assert abs(r.box[0] - box[0]) <= 1 and abs(r.box[1] - box[1]) <= 1
    right = [r.clean_label == VOCAB.classnames[t] for r, t in zip(on_trig, labels) if r.triggered]
    assert np.mean(right) >= 0.8
    assert all(r.clean_label is None and r.box is None and r.score == 0.0 for r in on_clean if not r.triggered)
    assert json.loads(json.dumps(on_trig[0].to_dict()))["label"] == on_trig[0].label


def test_guard_without_a_report_runs_algorithm_1(badnet, held_out):
    clean, labels, triggered, boxes = held_out
    fired = _fired(badnet, triggered)
    with Guard(badnet, VOCAB) as guard:
        assert guard.mode == "algorithm1"
        on_trig = guard.check(triggered[:20])
        on_clean = guard.check(clean[:20])
        stats = guard.stats()
    flagged = np.array([r.triggered for r in on_trig])
    assert flagged[fired[:20]].mean() >= 0.7
    assert sum(r.triggered for r in on_clean) <= 2
    assert {r.evidence for r in on_trig if r.triggered} <= {"region", "window", "global"}
    assert stats["requests"] == 40 and sum(stats["predicted"].values()) == 40
    assert stats["seconds"]["oracle"] > 0


def test_guard_answers_in_each_images_own_pixels(badnet, report_dir, held_out):
    import cv2

    _, _, triggered, boxes = held_out
    big = cv2.resize(triggered[0], (96, 144), interpolation=cv2.INTER_NEAREST)  # 2x wide, 3x tall
    with Guard(badnet, VOCAB, report=report_dir) as guard:
        small, large = guard.check([triggered[0], big])
    assert small.triggered and large.triggered
    x0, y0, x1, y1 = large.box
    assert abs(x0 - 2 * small.box[0]) <= 2 and abs(y0 - 3 * small.box[1]) <= 3
    assert x1 <= 96 and y1 <= 144


def test_guard_is_thread_safe_and_batching_does_not_change_answers(badnet, report_dir, held_out):
    clean, _, triggered, _ = held_out
    images = np.concatenate([clean[:16], triggered[:16]])
    with Guard(badnet, VOCAB, report=report_dir, max_wait=0.0) as guard:
        serial = [guard.check(img)[0] for img in images]
    results: dict[int, GuardResult] = {}
    with Guard(badnet, VOCAB, report=report_dir, max_batch=8, max_wait=0.02) as guard:
        def work(k: int) -> None:
            for i in range(k, len(images), 8):
                results[i] = guard.check(images[i])[0]

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert guard.stats()["requests"] == len(images)
    for i, ref in enumerate(serial):
        got = results[i]
        assert (got.label, got.triggered, got.clean_label, got.box, got.evidence) == \
               (ref.label, ref.triggered, ref.clean_label, ref.box, ref.evidence)
        assert got.score == pytest.approx(ref.score, abs=1e-4)


def test_guard_rejects_bad_inputs_and_keeps_serving(badnet, held_out):
    clean = held_out[0]
    guard = Guard(badnet, VOCAB, oracle="classical")
    with pytest.raises(ValueError, match="uint8"):
        guard.check(clean[0].astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        guard.check([clean[0], clean[0][:, :, :2]])
    with pytest.raises(TypeError):
        guard.check("image.png")
    assert guard.check([]) == []
    assert len(guard.check(clean[:2])) == 2  # still serving
    guard.close()
    with pytest.raises(RuntimeError, match="closed"):
        guard.check(clean[:1])
    with pytest.raises(ValueError, match="max_batch"):
        Guard(badnet, VOCAB, max_batch=0)
    with pytest.raises(ValueError, match="not a clipguard scan report"):
        Guard(badnet, VOCAB, report=_write(held_out, "not json"))


def _write(tmp, text):
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    (d / "report.json").write_text(text)
    return d


@pytest.mark.slow
def test_online_algorithm_2_raises_an_alarm_from_traffic(badnet):
    """An unknown backdoor found from the model's own traffic: no report, 4% triggered inputs."""
    n = 300
    scenes = toyworld.generate("shapes", n, seed=31, split="test")
    rng = np.random.default_rng(31)
    idx = rng.choice(n, size=12, replace=False)
    images = scenes.images.copy()
    images[idx] = parse_attack(badnet.card["attack"]).apply(images[idx], seed=31).images
    with Guard(badnet, VOCAB, min_clean=60) as guard:
        for k in range(0, n, 20):
            guard.check(images[k : k + 20])
        alarms = guard.alarms
    assert [a.label for a in alarms] == ["star"]
    a = alarms[0]
    assert a.kind == "localized" and a.trigger is not None and a.estimated_asr > a.random_flip_rate + 0.15
    assert len(set(a.victims) & set(idx.tolist())) >= 2 and a.requests <= n
    assert json.loads(json.dumps(a.to_dict()))["label"] == "star"


# ------------------------------------------------------------------------------ image decoding
def test_decode_image_measures_before_it_decodes():
    import cv2

    from clipguard.probe import image_header_size

    img = toyworld.generate("shapes", 1, seed=0).images[0]
    np.testing.assert_array_equal(decode_image(png_bytes(img)), img)
    ok, jpg = cv2.imencode(".jpg", np.zeros((30, 50, 3), np.uint8))
    assert image_header_size(jpg.tobytes()) == ("jpeg", 50, 30)
    assert decode_image(jpg.tobytes(), formats=("png", "jpeg")).shape == (30, 50, 3)
    bomb = bomb_png(6000)  # 108 MB when inflated, ~100 KB here
    assert len(bomb) < 1_000_000 and image_header_size(bomb) == ("png", 6000, 6000)
    with pytest.raises(ValueError, match="pixel limit"):
        decode_image(bomb, max_pixels=10_000_000)
    ok, bmp = cv2.imencode(".bmp", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="PNG or JPEG"):
        decode_image(bmp.tobytes(), formats=("png", "jpeg"))
    for bad in (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", png_bytes(img)[:60]):
        with pytest.raises(ValueError):
            decode_image(bad)


# ------------------------------------------------------------------------------ HTTP service
def _request(url: str, body: bytes | None = None, ctype: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": ctype} if ctype else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def service(report_dir):
    pytest.importorskip("uvicorn")
    with running_service("toy:badnet", "--report", str(report_dir)) as url:
        yield url


def test_service_classifies_and_reports(service, badnet, report_dir, held_out):
    clean, _, triggered, _ = held_out
    status, body = _request(service + "/health")
    assert status == 200 and body["status"] == "ok" and body["mode"] == "known"
    with Guard(badnet, VOCAB, report=report_dir) as guard:
        expected = guard.check([triggered[0], clean[0]])
    import cv2

    for img, ref, ctype, data in ((triggered[0], expected[0], "image/png", png_bytes(triggered[0])),
                                  (clean[0], expected[1], "image/png", png_bytes(clean[0]))):
        status, body = _request(service + "/classify", data, ctype)
        assert status == 200
        assert {k: body[k] for k in ("label", "triggered", "clean_label", "evidence")} == \
               {"label": ref.label, "triggered": ref.triggered, "clean_label": ref.clean_label, "evidence": ref.evidence}
        assert body["box"] == (list(ref.box) if ref.box else None)
    ok, jpg = cv2.imencode(".jpg", clean[1][:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    status, body = _request(service + "/classify", jpg.tobytes(), "image/jpeg")
    assert status == 200 and body["label"] in VOCAB.classnames
    status, body = _request(service + "/alarms")
    assert status == 200 and isinstance(body["alarms"], list) and body["requests"] == 3


def test_service_refuses_bad_requests_and_keeps_serving(service, held_out):
    clean = held_out[0]
    header_only = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR"
                   + struct.pack(">IIBBBBB", 10_000, 10_000, 8, 2, 0, 0, 0) + b"\0" * 4)  # claims 100 megapixels
    cases = [(b"", "image/png", 400, "empty"), (b"plain text, not an image", "image/png", 400, "PNG or JPEG"),
             (png_bytes(clean[0]), "text/plain", 415, "Content-Type"), (png_bytes(clean[0]), None, 415, "Content-Type"),
             (png_bytes(clean[0])[:70], "image/png", 400, "readable"), (header_only, "image/png", 413, "pixel limit"),
             (bomb_png(8000), "image/png", 413, "pixel limit")]
    for body, ctype, want, words in cases:
        status, answer = _request(service + "/classify", body, ctype)
        assert status == want and words in answer["error"], (want, answer)
    # A body over the limit is refused from its Content-Length, before it is read.
    import http.client

    host, port = service.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("POST", "/classify")
        conn.putheader("Content-Type", "image/png")
        conn.putheader("Content-Length", str(200 * 1024 * 1024))
        conn.endheaders()
        conn.send(b"\0" * 1024)
        resp = conn.getresponse()
        assert resp.status == 413 and "byte limit" in json.loads(resp.read())["error"]
    finally:
        conn.close()
    status, body = _request(service + "/classify", png_bytes(clean[0]), "image/png")
    assert status == 200 and body["label"] in VOCAB.classnames
    assert _request(service + "/health")[0] == 200
