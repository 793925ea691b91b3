"""The native kernels release the GIL: several Python threads can run them at once and get the
serial results."""

import sys
import threading
import time

import numpy as np

from clipguard.regions import render
from clipguard.scoring import compare


def _workload(seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    masks = rng.random((40, 64, 64)) < 0.5
    index = rng.integers(0, 8, 40)
    emb = rng.standard_normal((500, 32)).astype(np.float32)
    text = rng.standard_normal((50, 32)).astype(np.float32)
    return images, masks, index, emb, text


def _run(work):
    images, masks, index, emb, text = work
    views = render(images, masks, index, "crop", 48)
    scores = compare(emb, emb[:100], np.arange(500) % 100, text, 100.0, 3)
    return views, scores


def test_threads_give_the_serial_results():
    works = [_workload(s) for s in range(6)]
    serial = [_run(w) for w in works]
    results = [None] * len(works)

    def target(i):
        results[i] = _run(works[i])

    threads = [threading.Thread(target=target, args=(i,)) for i in range(len(works))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (v0, s0), (v1, s1) in zip(serial, results):
        np.testing.assert_array_equal(v0, v1)
        np.testing.assert_array_equal(s0.region_labels, s1.region_labels)
        np.testing.assert_array_equal(s0.region_probs, s1.region_probs)


def test_python_runs_while_a_kernel_runs(monkeypatch):
    """While one thread is inside a long native call, another keeps executing Python.

    With the GIL held for the whole call, the main thread could run only around the call's edges
    (a couple of switch intervals); released, it runs for the whole call. The call is made long
    enough that the two cases differ by a wide margin.
    """
    monkeypatch.setenv("CLIPGUARD_NUM_THREADS", "1")  # leave a core for the Python thread
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40000, 384)).astype(np.float32)
    text = rng.standard_normal((800, 384)).astype(np.float32)
    index = np.zeros(40000, np.int64)
    done = threading.Event()
    call = {}

    def worker():
        t0 = time.perf_counter()
        compare(emb, emb[:1], index, text, 100.0, 5)
        call["seconds"] = time.perf_counter() - t0
        done.set()

    ticks = []
    thread = threading.Thread(target=worker)
    thread.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
    thread.join()
    ticks = np.array(ticks)
    # Python progress during the call: the span over which the main thread kept ticking.
    busy = float(np.sum(np.minimum(np.diff(ticks), 0.001)))
    edges = 4 * sys.getswitchinterval()
    assert call["seconds"] > 10 * edges, "the native call was too short to tell"
    assert busy > 0.5 * call["seconds"]
