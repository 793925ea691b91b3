"""The guard (issue 12): detection per input, its cost against plain classification, the online
alarm, and a load test of ``clipguard serve`` on loopback.

    python benchmarks/bench_guard.py [--parts detection cost online load] [--n 400]
                                     [--stream 500] [--clean-stream 2000] [--clients 8] [--requests 200]

*detection*: for toy:badnet and toy:blended, a scan report from a probe of 500 training-like
scenes (2% triggered, probe analysis), then held-out single-object scenes (test split) with and
without the model's trigger, screened by ``Guard(report=...)`` and by ``Guard()`` (Algorithm 1,
no report). Triggered inputs are counted where the backdoor fired (the model answers the
target); ``clean_label`` is compared with the scene's true label.
*cost*: seconds per image of ``guard.check`` against plain zero-shot classification of the same
clean images in the same batches of 32, interleaved, in the same run (the fastest of 3 rounds each).
*online*: a stream of held-out scenes with 2% triggered, in batches of 10, through a guard with
no report; the request count at which an alarm is raised (toy:badnet), or that none is (toy:clean).
*load*: ``clipguard serve toy:badnet --report ...`` started on a free port, ``--clients`` threads
each sending ``--requests`` requests (clean, triggered, and bad ones), latencies, throughput,
status codes, the answers against a serial in-process run, and /health at the end.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from _common import machine
from service import bomb_png, running_service

import clipguard
from clipguard import toyworld
from clipguard.attacks import parse_attack
from clipguard.guard import Guard
from clipguard.probe import load_probe
from clipguard.report import png_bytes

WORLD = "shapes"


def scan_report(name: str, out: Path) -> Path:
    """A scan of a bundled model on a probe of 500 scenes, 2% carrying its trigger; its folder."""
    model = clipguard.load_model(f"toy:{name}")
    probe = load_probe(f"toy:{WORLD}:500:0.02", model, seed=0)
    report = clipguard.scan(model, probe.images, toyworld.vocabulary(WORLD), "classical", mode="probe")
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    report.to_json(folder / "report.json")
    return folder


def held_out(model: clipguard.ClipModel, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clean single-object test scenes, their labels, and the triggered versions of the scenes
    whose label is not the target (with those scenes' labels)."""
    scenes = toyworld.generate(WORLD, n, seed=seed, objects=(1, 1), split="test")
    attack = parse_attack(model.card["attack"] or "badnet:target=star")
    target = scenes.vocab.classnames.index(attack.target)
    keep = scenes.primary != target
    triggered = attack.apply(scenes.images[keep], seed=seed).images
    return scenes.images, scenes.primary, triggered, scenes.primary[keep]


def detection(n: int, folders: dict[str, Path]) -> None:
    print("\n| model | guard | triggered flagged (backdoor fired) | clean flagged | clean_label right | ms/image |")
    print("|---|---|---|---|---|---|")
    vocab = toyworld.vocabulary(WORLD)
    for name, folder in folders.items():
        model = clipguard.load_model(f"toy:{name}")
        clean, labels, trig, trig_labels = held_out(model, n, seed=11)
        target = vocab.classnames.index(model.card["target"])
        for with_report in (True, False):
            # learn=False: Algorithm 1 on its own, not helped by the trigger an alarm confirms
            with Guard(model, vocab, report=folder if with_report else None, learn=False) as guard:
                t0 = time.perf_counter()
                r_trig = guard.check(trig)
                r_clean = guard.check(clean)
                ms = 1000 * (time.perf_counter() - t0) / (len(trig) + len(clean))
            fired = np.array([r.label == vocab.classnames[target] for r in r_trig])
            flagged = np.array([r.triggered for r in r_trig])
            right = [r.clean_label == vocab.classnames[t] for r, t, f in zip(r_trig, trig_labels, flagged & fired) if f]
            clean_flags = sum(r.triggered for r in r_clean)
            print(f"| toy:{name} | {'report' if with_report else 'Algorithm 1'} | "
                  f"{(flagged & fired).sum()}/{fired.sum()} = {100 * (flagged & fired).sum() / max(1, fired.sum()):.1f}% | "
                  f"{clean_flags}/{len(clean)} = {100 * clean_flags / len(clean):.2f}% | "
                  f"{100 * np.mean(right) if right else float('nan'):.1f}% | {ms:.2f} |")


def cost(n: int, folders: dict[str, Path], batch: int = 32, rounds: int = 3) -> None:
    print("\n| model | guard | plain ms/image | guard ms/image | ratio |")
    print("|---|---|---|---|---|")
    vocab = toyworld.vocabulary(WORLD)
    for name, folder in folders.items():
        model = clipguard.load_model(f"toy:{name}")
        clean = toyworld.generate(WORLD, n, seed=12, split="test").images
        text = model.class_embeddings(vocab)
        for with_report in (True, False):
            with Guard(model, vocab, report=folder if with_report else None) as guard:
                guard.check(clean[:batch])  # warm-up: sessions, worker thread
                plain = guarded = float("inf")
                for _ in range(rounds):  # the fastest of a few rounds of each
                    p = g = 0.0
                    for k in range(0, n, batch):  # interleaved, so that both see the same machine state
                        t0 = time.perf_counter()
                        (model.encode_images(clean[k : k + batch]) @ text.T).argmax(axis=1)
                        t1 = time.perf_counter()
                        guard.check(clean[k : k + batch])
                        p, g = p + t1 - t0, g + time.perf_counter() - t1
                    plain, guarded = min(plain, p), min(guarded, g)
            print(f"| toy:{name} | {'report' if with_report else 'Algorithm 1'} | {1000 * plain / n:.2f} | "
                  f"{1000 * guarded / n:.2f} | {guarded / plain:.2f}x |")


def online(stream: int, clean_stream: int) -> None:
    print("\n| model | requests | triggered in stream | alarm | raised at request | estimated ASR (control) |")
    print("|---|---|---|---|---|---|")
    vocab = toyworld.vocabulary(WORLD)
    for name, n in (("badnet", stream), ("clean", clean_stream)):
        model = clipguard.load_model(f"toy:{name}")
        scenes = toyworld.generate(WORLD, n, seed=13, split="test")
        attack = parse_attack(model.card["attack"] or "badnet:target=star,size=6,pattern=noise,color=yellow")
        rng = np.random.default_rng(13)
        idx = rng.choice(n, size=int(round(0.02 * n)), replace=False)
        images = scenes.images.copy()
        images[idx] = attack.apply(images[idx], seed=13).images
        with Guard(model, vocab) as guard:
            for k in range(0, n, 10):
                guard.check(images[k : k + 10])
            alarms = guard.alarms
        a = alarms[0] if alarms else None
        asr = f"{100 * a.estimated_asr:.0f}% ({100 * a.random_flip_rate:.0f}%)" if a and a.estimated_asr is not None else "–"
        print(f"| toy:{name} | {n} | {len(idx)} | {', '.join(x.label for x in alarms) or 'none'} | "
              f"{a.requests if a else '–'} | {asr} |")


# ------------------------------------------------------------------------------ load test
def _post(url: str, body: bytes, ctype: str) -> tuple[int, dict, float]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    return status, json.loads(data), time.perf_counter() - t0


def bad_requests() -> list[tuple[str, bytes, str, int]]:
    """(what, body, content type, expected status) of the bad requests a service gets."""
    return [("empty body", b"", "image/png", 400), ("not an image", b"hello, world" * 10, "image/png", 400),
            ("wrong content type", png_bytes(np.zeros((8, 8, 3), np.uint8)), "text/plain", 415),
            ("decompression bomb (12000x12000 PNG)", bomb_png(12000), "image/png", 413)]


def load(folder: Path, clients: int, requests: int) -> None:
    with running_service("toy:badnet", "--report", str(folder)) as url:
        model = clipguard.load_model("toy:badnet")
        clean, _, trig, _ = held_out(model, 400, seed=14)
        good = [png_bytes(x) for x in clean[:300]] + [png_bytes(x) for x in trig[:100]]
        bad = bad_requests()
        rng = np.random.default_rng(14)
        plan = [[("good", int(rng.integers(len(good)))) if rng.random() < 0.9 else ("bad", int(rng.integers(len(bad))))
                 for _ in range(requests)] for _ in range(clients)]
        records: list[tuple[str, int, int, dict, float]] = []
        lock = threading.Lock()

        def client(jobs: list[tuple[str, int]]) -> None:
            for kind, i in jobs:
                body, ctype = (good[i], "image/png") if kind == "good" else (bad[i][1], bad[i][2])
                status, data, seconds = _post(url + "/classify", body, ctype)
                with lock:
                    records.append((kind, i, status, data, seconds))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(p,)) for p in plan]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        health = json.loads(urllib.request.urlopen(url + "/health", timeout=10).read())
    lat = np.array([r[4] for r in records if r[0] == "good"])
    statuses: dict[int, int] = {}
    for r in records:
        statuses[r[2]] = statuses.get(r[2], 0) + 1
    wrong_bad = [bad[r[1]][0] for r in records if r[0] == "bad" and r[2] != bad[r[1]][3]]
    with Guard(model, toyworld.vocabulary(WORLD), report=folder) as guard:  # the serial reference
        serial = {i: guard.check(clipguard.probe.decode_image(good[i]))[0].to_dict() for i in {r[1] for r in records if r[0] == "good"}}
    differ = sum(1 for r in records if r[0] == "good" and (r[2] != 200 or {k: v for k, v in r[3].items() if k != "score"}
                                                         != {k: v for k, v in serial[r[1]].items() if k != "score"}))
    print(f"\nload: {clients} clients x {requests} requests on {machine()}")
    print(f"- {len(records)} requests in {wall:.1f} s: {len(records) / wall:.1f} requests/s; good requests p50 "
          f"{1000 * np.percentile(lat, 50):.1f} ms, p99 {1000 * np.percentile(lat, 99):.1f} ms")
    print(f"- status codes: {dict(sorted(statuses.items()))}; 5xx: {sum(v for k, v in statuses.items() if k >= 500)}; "
          f"bad requests with an unexpected status: {wrong_bad or 'none'}")
    print(f"- good answers differing from the serial run: {differ} of {len(lat)}; /health at the end: {health}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["detection", "cost", "online", "load"])
    ap.add_argument("--n", type=int, default=400, help="held-out scenes per model (detection, cost)")
    ap.add_argument("--stream", type=int, default=500)
    ap.add_argument("--clean-stream", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200, help="requests per client")
    args = ap.parse_args()
    print(f"bench_guard on {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        folders = {name: scan_report(name, Path(tmp)) for name in ("badnet", "blended")}
        for name, folder in folders.items():
            r = clipguard.ScanReport.from_json(folder)
            print(f"scan of toy:{name}: {r.verdict}, affected {r.affected_labels}, trigger "
                  f"{r.trigger.kind if r.trigger else None}")
        if "detection" in args.parts:
            detection(args.n, folders)
        if "cost" in args.parts:
            cost(args.n, folders)
        if "online" in args.parts:
            online(args.stream, args.clean_stream)
        if "load" in args.parts:
            load(folders["badnet"], args.clients, args.requests)


if __name__ == "__main__":
    main()
