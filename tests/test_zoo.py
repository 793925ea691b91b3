"""clipguard zoo: discovery, a killed run resumed, bad models as errors, the Ray engine."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest

from clipguard.models.loading import TOY_DIR
from clipguard.zoo import ZooConfig, discover, exit_code

PROBE = "toy:shapes:300:0.03"  # 3% of the probe carries BadNet's star: the probe analysis finds it


class _Evil:
    """A pickle that would create a file when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def zoo_dir(tmp_path):
    root = tmp_path / "zoo"
    (root / "vendor-a").mkdir(parents=True)
    shutil.copytree(TOY_DIR / "badnet", root / "vendor-a" / "badnet")
    shutil.copytree(TOY_DIR / "clean", root / "clean")
    marker = tmp_path / "pwned"
    (root / "vendor-b").mkdir()
    (root / "vendor-b" / "ViT-B-32-finetuned.pt").write_bytes(pickle.dumps({"state_dict": _Evil(marker)}))
    (root / "vendor-b" / "RN50-cut.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\": ")
    (root / "notes.txt").write_text("not a model\n")
    (root / "mystery.bin").write_bytes(b"\0" * 64)
    return root, marker


def test_discover_finds_models_and_says_what_it_skipped(zoo_dir):
    root, _ = zoo_dir
    models, skipped = discover(root)
    specs = {m.name: m.spec for m in models}
    assert specs["vendor-a_badnet"] == f"dir:{root / 'vendor-a' / 'badnet'}"
    assert specs["clean"].startswith("dir:")
    assert specs["vendor-b_ViT-B-32-finetuned.pt"].startswith("open_clip:ViT-B-32:")
    assert specs["vendor-b_RN50-cut.safetensors"].startswith("open_clip:RN50:")
    reasons = {s["input"]: s["reason"] for s in skipped}
    assert reasons["notes.txt"] == "not a model file" and "architecture unknown" in reasons["mystery.bin"]
    # --arch names the architecture of checkpoints whose name does not say it.
    models, _ = discover(root, arch="RN50")
    assert any(m.spec.startswith("open_clip:RN50:") and m.spec.endswith("mystery.bin") for m in models)
    # A changed file changes the model's hash (it is scanned again).
    before = {m.name: m.digest() for m in models}
    (root / "clean" / "card.json").write_text((root / "clean" / "card.json").read_text() + " ")
    after = {m.name: m.digest() for m in discover(root, arch="RN50")[0]}
    assert [n for n in before if before[n] != after[n]] == ["clean"]


def test_discover_from_a_list(tmp_path):
    lst = tmp_path / "models.txt"
    lst.write_text("# two bundled models and a bad line\ntoy:badnet\ntoy:clean\nno-such-kind:x\n")
    models, skipped = discover(lst)
    assert [m.spec for m in models] == ["toy:badnet", "toy:clean"] and len(skipped) == 1
    (tmp_path / "models.json").write_text(json.dumps(["toy:clean"]))
    assert [m.spec for m in discover(tmp_path / "models.json")[0]] == ["toy:clean"]
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="list of model spec"):
        discover(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="neither a folder nor a list"):
        discover(tmp_path / "absent")


def test_config_is_validated():
    with pytest.raises(ValueError, match="workers"):
        ZooConfig(probe=PROBE, workers=0)
    with pytest.raises(ValueError, match="engine"):
        ZooConfig(probe=PROBE, engine="spark")
    with pytest.raises(ValueError, match="mode"):
        ZooConfig(probe=PROBE, mode="fast")


def _zoo_cmd(root, out, *extra):
    return [sys.executable, "-m", "clipguard", "zoo", str(root), "--probe", PROBE, "--mode", "probe",
            "--out", str(out), "--quiet", *extra]


def _lines(path):
    """The complete result lines (a line cut by a kill is not one)."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


@pytest.mark.slow
def test_zoo_killed_and_resumed(zoo_dir, tmp_path):
    root, marker = zoo_dir
    out = tmp_path / "out"
    # First run: killed (the whole process group, as a crash would) once one model has finished.
    proc = subprocess.Popen(_zoo_cmd(root, out, "--workers", "2"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if results.is_file() and results.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = _lines(results)
    # killed part-way: by the signal, with at least one model done and at least one left
    assert proc.returncode == -signal.SIGKILL and 1 <= len(first) < 4, (proc.returncode, len(first))
    with results.open("a") as f:
        f.write('{"spec": "dir:cut-by-the-kill", "na')  # a half-written line
    # Resumed: only what is missing is scanned; the cut line is redone.
    done = subprocess.run(_zoo_cmd(root, out, "--workers", "2"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr  # a backdoored model was found
    lines = _lines(results)
    names = [r["name"] for r in lines]
    assert sorted(names) == sorted(set(names)) and len(names) == 4, names  # each model exactly once
    by = {r["name"]: r for r in lines}
    assert by["vendor-a_badnet"]["verdict"] == "backdoored" and by["vendor-a_badnet"]["affected"] == ["star"]
    assert by["clean"]["verdict"] == "clean"
    assert "UnsafeModelError" in by["vendor-b_ViT-B-32-finetuned.pt"]["error"]
    assert by["vendor-b_RN50-cut.safetensors"]["error"] and by["vendor-b_RN50-cut.safetensors"]["verdict"] is None
    assert not marker.exists(), "loading the malicious checkpoint ran its code"
    summary = json.loads((out / "zoo.json").read_text())
    assert summary["counts"]["backdoored"] == 1 and summary["counts"]["failed"] == 2
    assert {s["input"] for s in summary["skipped"]} == {"notes.txt", "mystery.bin"}
    html = (out / "zoo.html").read_text()
    assert html.index("vendor-a_badnet") < html.index(">clean<")  # sorted by score
    assert (out / "models" / "vendor-a_badnet" / "trigger.png").is_file()
    assert (out / "models" / "vendor-a_badnet" / "report.html").is_file()
    assert (out / "zoo.csv").read_text().splitlines()[0].startswith("name,spec,verdict,score")
    # A third run scans nothing again.
    again = subprocess.run(_zoo_cmd(root, out), capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and len(_lines(results)) == 4


def test_exit_code_rules():
    def s(**c):
        return {"counts": {"backdoored": 0, "inconclusive": 0, "clean": 0, "failed": 0, **c}}

    assert exit_code(s(clean=3)) == 0
    assert exit_code(s(backdoored=1, failed=2)) == 1
    assert exit_code(s(failed=1, inconclusive=1)) == 2
    assert exit_code(s(inconclusive=1, clean=2)) == 5


@pytest.mark.slow
def test_ray_engine_gives_the_local_verdicts(tmp_path):
    pytest.importorskip("ray")
    from clipguard.zoo import zoo

    lst = tmp_path / "models.txt"
    lst.write_text("toy:badnet\ntoy:clean\n")
    local = zoo(lst, tmp_path / "local", ZooConfig(probe=PROBE, mode="probe", workers=2))
    ray_ = zoo(lst, tmp_path / "ray", ZooConfig(probe=PROBE, mode="probe", workers=2, engine="ray"))
    pick = [(r["name"], r["verdict"], round(r["score"], 6), r["affected"]) for r in local["models"]]
    assert pick == [(r["name"], r["verdict"], round(r["score"], 6), r["affected"]) for r in ray_["models"]]
    assert [p[1] for p in pick] == ["backdoored", "clean"]
