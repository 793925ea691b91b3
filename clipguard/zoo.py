"""Vetting a zoo: scan every model of a folder or a list, resumable, each model in its own process.

    clipguard zoo SOURCE --probe P [--vocab V] --out DIR [--mode auto] [--engine local|ray] [--workers N]

``SOURCE`` is a folder (searched recursively for models) or a text/JSON list of model specs.
Each model is scanned in a worker process of its own (a crash, an out-of-memory kill or a time-out
there is that model's error, not the run's); every result is appended to ``DIR/results.jsonl``
and flushed as it arrives, with a report folder ``DIR/models/NAME/``. Running the same command
again scans only what is missing: a line cut by a crash is redone, and a model whose files changed
(SHA-256) is scanned again. At the end ``DIR/zoo.json``, ``DIR/zoo.csv`` and ``DIR/zoo.html``
(models sorted by score, with their trigger pictures and links to their reports).

Engines: ``local`` (a pool of worker processes on this machine, torch/ONNX Runtime threads split
between them) and ``ray`` (the same task per model on a Ray cluster; ``pip install clipguard[ray]``).
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import multiprocessing as mp
import os
import re
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Iterator

__all__ = ["ZooConfig", "ZooModel", "ZooResult", "discover", "zoo"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
MAX_LISTED = 100_000  # entries a folder walk looks at before it stops (a clear error, not a hang)
ENGINES = ("local", "ray")


@dataclass
class ZooConfig:
    """How every model of the zoo is scanned (the same probe, vocabulary, oracle and mode)."""

    probe: str
    vocab: str | None = None  # default: the probe's toy world (toy probes only)
    mode: str = "auto"
    oracle: str = "classical"
    engine: str = "local"
    workers: int = 1
    address: str | None = None  # an existing Ray cluster (engine "ray"); None starts a local one
    timeout: float = 3600.0  # seconds per model before its worker is killed
    arch: str | None = None  # open_clip architecture of checkpoints whose name does not say it
    seed: int = 0
    limit: int | None = None  # at most this many probe images (folder probes)

    def __post_init__(self) -> None:
        from .scan import MODES

        if self.mode not in MODES:
            raise ValueError(f"ZooConfig.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"ZooConfig.engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"ZooConfig.workers must be an integer >= 1, got {self.workers!r}")
        if not self.timeout > 0:
            raise ValueError(f"ZooConfig.timeout must be > 0 seconds, got {self.timeout!r}")


@dataclass
class ZooModel:
    """A model found in the zoo: its spec, the files it is made of and a name for its report."""

    spec: str
    name: str
    files: list[Path] = field(default_factory=list)

    def digest(self) -> str:
        """SHA-256 over the model's files (names and contents): a changed model is scanned again."""
        h = hashlib.sha256()
        for f in sorted(self.files):
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()


@dataclass
class ZooResult:
    """One model's line in results.jsonl."""

    spec: str
    name: str
    hash: str
    verdict: str | None = None  # backdoored / clean / inconclusive; None when the scan failed
    score: float | None = None
    affected: list[str] = field(default_factory=list)
    trigger_kind: str | None = None
    seconds: float = 0.0
    error: str | None = None
    report: str | None = None  # the report folder, relative to the zoo's output folder

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Finding the models


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "model"


def _arch_from_name(path: Path, known: list[str]) -> str | None:
    """The open_clip architecture a checkpoint's file name carries (the longest name that appears)."""
    stem = path.name.lower().replace("_", "-")
    hits = [a for a in known if a.lower() in stem]
    return max(hits, key=len) if hits else None


def _open_clip_archs() -> list[str]:
    try:
        import open_clip

        return list(open_clip.list_models())
    except ImportError:
        return []


def _model_folder(path: Path) -> str | None:
    """The spec kind of a model folder (clipguard/open_clip, ONNX, Hugging Face) or None."""
    from .models.torch_runtime import MODEL_CONFIG, MODEL_WEIGHTS

    if (path / MODEL_CONFIG).is_file() and (path / MODEL_WEIGHTS).is_file():
        return "dir"  # (an open_clip_config.json beside checkpoints alone is a sidecar naming their architecture)
    if (path / "meta.json").is_file() and (path / "image.onnx").is_file():
        return "onnx"
    if (path / "config.json").is_file() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin"))):
        return "hf"
    return None


def _folder_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]


def discover(source: str | os.PathLike, arch: str | None = None) -> tuple[list[ZooModel], list[dict[str, str]]]:
    """The models of a zoo ``source`` and what was skipped (``{"input", "reason"}``).

    A folder is searched recursively: clipguard/open_clip folders, ONNX folders and Hugging Face
    folders are one model each; a ``.pt/.pth/.bin/.safetensors`` file is an open_clip checkpoint
    whose architecture comes from a sidecar ``open_clip_config.json`` naming ``model_name``, its
    file name, or ``arch``. Symbolic links are not followed. A file (``.txt``: one spec per line,
    ``#`` comments; ``.json``: a list of specs) lists models explicitly.
    """
    src = Path(os.fspath(source))
    if src.is_file():
        return _from_list(src)
    if not src.is_dir():
        raise ValueError(f"zoo source {str(src)!r} is neither a folder nor a list file")
    models: list[ZooModel] = []
    skipped: list[dict[str, str]] = []
    known: list[str] | None = None
    seen = 0
    for root, dirs, files in os.walk(src, followlinks=False):
        here = Path(root)
        seen += len(dirs) + len(files)
        if seen > MAX_LISTED:
            raise ValueError(f"{src}: more than {MAX_LISTED:,} entries; point the zoo at a smaller folder or a list")
        kind = _model_folder(here)
        if kind is not None:
            dirs[:] = []  # a model folder is one model
            models.append(ZooModel(f"{kind}:{here}", _safe_name(str(here.relative_to(src))), _folder_files(here)))
            continue
        dirs.sort()
        for fname in sorted(files):
            f = here / fname
            rel = str(f.relative_to(src))
            if f.is_symlink():
                skipped.append({"input": rel, "reason": "a symbolic link (not followed)"})
                continue
            if f.suffix.lower() not in CHECKPOINT_SUFFIXES:
                if fname not in ("open_clip_config.json",):
                    skipped.append({"input": rel, "reason": "not a model file"})
                continue
            a = _sidecar_arch(here) or arch
            if a is None:
                known = _open_clip_archs() if known is None else known
                a = _arch_from_name(f, known)
            if a is None:
                skipped.append({"input": rel, "reason": "architecture unknown: name it in the file name, a sidecar "
                                                        "open_clip_config.json (model_name), or --arch"})
                continue
            models.append(ZooModel(f"open_clip:{a}:{f}", _safe_name(rel), [f]))
    return models, skipped


def _sidecar_arch(folder: Path) -> str | None:
    side = folder / "open_clip_config.json"
    if not side.is_file():
        return None
    try:
        name = json.loads(side.read_text()).get("model_name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name else None


def _from_list(path: Path) -> tuple[list[ZooModel], list[dict[str, str]]]:
    from .models import parse_spec

    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            specs = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a JSON list of model specs ({exc})") from None
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
            raise ValueError(f"{path}: a JSON zoo list must be a list of model spec strings")
    else:
        specs = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    models: list[ZooModel] = []
    skipped: list[dict[str, str]] = []
    names: set[str] = set()
    for spec in specs:
        try:
            parsed = parse_spec(spec)
        except (ValueError, TypeError) as exc:
            skipped.append({"input": spec, "reason": str(exc)})
            continue
        files = _folder_files(parsed.path) if parsed.path.is_dir() else [parsed.path]
        name = _safe_name(spec.split(":", 1)[-1] if parsed.kind != "open_clip" else parsed.path.name)
        while name in names:
            name += "_"
        names.add(name)
        models.append(ZooModel(str(parsed) if parsed.kind != "toy" else spec, name, files))
    return models, skipped


# ---------------------------------------------------------------------------------------------
# One model's scan (runs in a worker: a process of the local pool, or a Ray task)


def scan_task(spec: str, name: str, digest: str, cfg: dict[str, Any], out_dir: str, threads: int) -> dict[str, Any]:
    """Scan one model and write its report folder; returns its :class:`ZooResult` as a dict.
    Errors are returned, not raised: a bad model is a result."""
    t0 = time.perf_counter()
    result = ZooResult(spec=spec, name=name, hash=digest, report=f"models/{name}")
    try:
        if threads > 0:
            os.environ["CLIPGUARD_NUM_THREADS"] = str(threads)
            try:
                import torch

                torch.set_num_threads(threads)
            except ImportError:
                pass
        from .models import load_model
        from .probe import load_probe, load_vocab
        from .report import png_bytes
        from .scan import ScanConfig, scan
        from .synthesis import SynthesisConfig

        model = load_model(spec)
        probe = load_probe(cfg["probe"], model, seed=cfg["seed"], limit=cfg["limit"])
        if len(probe.images) == 0:
            raise ValueError(f"no readable probe images in {cfg['probe']}")
        vocab = load_vocab(cfg["vocab"])
        report = scan(model, probe.images, vocab, cfg["oracle"], ScanConfig(seed=cfg["seed"]), mode=cfg["mode"],
                      synthesis=SynthesisConfig(seed=cfg["seed"], threads=threads), skipped=probe.skipped)
        folder = Path(out_dir) / "models" / name
        report.to_json(folder / "report.json")
        report.to_html(folder / "report.html")
        if report.trigger is not None:
            (folder / "trigger.png").write_bytes(png_bytes(report.trigger.image, scale=max(1, 96 // max(report.trigger.image.shape[:2]))))
        result.verdict, result.score, result.affected = report.verdict, float(report.score), list(report.affected_labels)
        result.trigger_kind = report.trigger.kind if report.trigger is not None else None
    except Exception as exc:  # noqa: BLE001 -- any failure is this model's error, recorded with its reason
        result.error = f"{type(exc).__name__}: {exc}"
        result.report = None
        if os.environ.get("CLIPGUARD_ZOO_DEBUG"):
            result.error += "\n" + traceback.format_exc(limit=4)
    result.seconds = round(time.perf_counter() - t0, 2)
    return result.to_dict()


def _process_main(conn: Any, args: tuple) -> None:
    conn.send(scan_task(*args))
    conn.close()


# ---------------------------------------------------------------------------------------------
# Engines: each yields results as models finish


def _run_local(tasks: list[tuple], workers: int, timeout: float) -> Iterator[dict[str, Any]]:
    """Each model in a fresh spawned process (no state shared with the parent or other models);
    at most ``workers`` at once; a process past ``timeout`` is killed."""
    ctx = mp.get_context("spawn")
    pending = list(tasks)
    running: list[tuple[Any, Any, float, tuple]] = []
    while pending or running:
        while pending and len(running) < workers:
            args = pending.pop(0)
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_process_main, args=(send, args), daemon=True)
            proc.start()
            send.close()
            running.append((proc, recv, time.monotonic(), args))
        wait([r for _, r, _, _ in running] + [p.sentinel for p, _, _, _ in running], timeout=1.0)
        still: list[tuple[Any, Any, float, tuple]] = []
        for proc, recv, started, args in running:
            result = None
            if recv.poll():
                try:
                    result = recv.recv()
                except (EOFError, OSError):
                    result = None
            if result is not None:
                proc.join(timeout=10)
                yield result
            elif not proc.is_alive():
                proc.join()
                yield _failed(args, f"the worker process died (exit code {proc.exitcode}; "
                                    f"{'killed by signal ' + str(-proc.exitcode) if (proc.exitcode or 0) < 0 else 'crashed'})",
                              time.monotonic() - started)
            elif time.monotonic() - started > timeout:
                proc.kill()
                proc.join()
                yield _failed(args, f"timed out after {timeout:.0f} s (the worker was killed)", time.monotonic() - started)
            else:
                still.append((proc, recv, started, args))
                continue
            recv.close()
        running = still


def _run_ray(tasks: list[tuple], workers: int, timeout: float, address: str | None) -> Iterator[dict[str, Any]]:
    """The same task per model on Ray: a local instance started for the run, or the cluster at
    ``address``. Models and probe data are read by path: on a cluster the zoo, the probe folder
    and the output folder must be on storage every node mounts at the same path."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("the ray engine needs Ray: pip install 'clipguard[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(max_retries=0, num_cpus=1)(scan_task)
        pending = list(tasks)
        running: dict[Any, tuple[float, tuple]] = {}
        while pending or running:
            while pending and len(running) < workers:
                args = pending.pop(0)
                running[remote.remote(*args)] = (time.monotonic(), args)
            done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in done:
                started, args = running.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # noqa: BLE001 -- a worker crash is that model's error
                    yield _failed(args, f"the Ray worker failed: {type(exc).__name__}: {exc}".splitlines()[0],
                                  time.monotonic() - started)
            for ref, (started, args) in list(running.items()):
                if time.monotonic() - started > timeout:
                    ray.cancel(ref, force=True)
                    del running[ref]
                    yield _failed(args, f"timed out after {timeout:.0f} s (the Ray task was cancelled)",
                                  time.monotonic() - started)
    finally:
        if started_here:
            ray.shutdown()


def _failed(args: tuple, error: str, seconds: float) -> dict[str, Any]:
    spec, name, digest = args[:3]
    return ZooResult(spec=spec, name=name, hash=digest, error=error, seconds=round(seconds, 2)).to_dict()


# ---------------------------------------------------------------------------------------------
# The run


def _read_results(path: Path) -> dict[str, dict[str, Any]]:
    """results.jsonl by model name (the last line of a name wins); a cut line is ignored (redone)."""
    out: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and "name" in r and "hash" in r:
            out[r["name"]] = r
    return out


def zoo(source: str | os.PathLike, out: str | os.PathLike, config: ZooConfig, *,
        progress: bool = False) -> dict[str, Any]:
    """Scan every model of ``source`` into ``out``; returns the zoo summary (also ``zoo.json``).

    Resumable: results already in ``out/results.jsonl`` for an unchanged model are kept.
    """
    from .probe import load_vocab
    from .training import progress_bar

    vocab = config.vocab
    if vocab is None:
        if not config.probe.startswith("toy:"):
            raise ValueError("a vocabulary is required for a folder probe (--vocab)")
        vocab = "toy:" + config.probe.split(":")[1]
        config = replace(config, vocab=vocab)
    load_vocab(vocab)  # a bad vocabulary fails here, before any worker starts
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    models, skipped = discover(source, config.arch)
    results_path = out_dir / "results.jsonl"
    done = _read_results(results_path)
    digests = {m.name: m.digest() for m in models}
    todo = [m for m in models if m.name not in done or done[m.name]["hash"] != digests[m.name]]
    cfg = {k: getattr(config, k) for k in ("probe", "vocab", "mode", "oracle", "seed", "limit")}
    cores = os.cpu_count() or 1
    threads = max(1, cores // config.workers)
    tasks = [(m.spec, m.name, digests[m.name], cfg, str(out_dir), threads) for m in todo]
    if results_path.is_file() and results_path.stat().st_size:
        with open(results_path, "rb") as fh:  # a line cut by a kill gets its own line end
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                with open(results_path, "a") as fa:
                    fa.write("\n")
    bar = progress_bar(len(tasks), "zoo", progress)
    t0, failed = time.monotonic(), 0
    engine = (_run_local(tasks, config.workers, config.timeout) if config.engine == "local"
              else _run_ray(tasks, config.workers, config.timeout, config.address))
    with open(results_path, "a") as sink:
        for n, r in enumerate(engine, 1):
            sink.write(json.dumps(r) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
            done[r["name"]] = r
            failed += r["error"] is not None
            bar.update(1)
            bar.set_postfix(done=n - failed, failed=failed, left=len(tasks) - n,
                            per_hour=f"{3600 * n / max(time.monotonic() - t0, 1e-9):.0f}")
    bar.close()
    rows = [done[m.name] for m in models if m.name in done]
    summary = {"source": str(source), "config": asdict(config), "models": rows, "skipped": skipped,
               "counts": {v: sum(r["verdict"] == v for r in rows) for v in ("backdoored", "inconclusive", "clean")}
               | {"failed": sum(r["error"] is not None for r in rows), "skipped": len(skipped)}}
    (out_dir / "zoo.json").write_text(json.dumps(summary, indent=2) + "\n")
    _write_csv(out_dir / "zoo.csv", rows)
    (out_dir / "zoo.html").write_text(_html(summary, out_dir))
    return summary


def exit_code(summary: dict[str, Any]) -> int:
    """1 if any model is backdoored; else 2 if any scan failed; else 5 if any is inconclusive; else 0."""
    c = summary["counts"]
    return 1 if c["backdoored"] else 2 if c["failed"] else 5 if c["inconclusive"] else 0


_CSV_FIELDS = ("name", "spec", "verdict", "score", "affected", "trigger_kind", "seconds", "error", "hash")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(_CSV_FIELDS)
    for r in rows:
        w.writerow([";".join(r[k]) if k == "affected" else ("" if r[k] is None else r[k]) for k in _CSV_FIELDS])
    path.write_text(buf.getvalue())


def _html(summary: dict[str, Any], out_dir: Path) -> str:
    e = html.escape
    rows = sorted(summary["models"], key=lambda r: (r["error"] is None, r["score"] or 0.0), reverse=True)
    body = []
    for r in rows:
        pic = ""
        if r["report"] and (out_dir / r["report"] / "trigger.png").is_file():
            pic = f'<img src="{e(r["report"])}/trigger.png" alt="trigger" height="48">'
        link = f'<a href="{e(r["report"])}/report.html">report</a>' if r["report"] else ""
        verdict = r["verdict"] or "error"
        score = "" if r["score"] is None else f"{r['score']:.3f}"
        body.append(
            f'<tr class="{e(verdict)}"><td>{e(r["name"])}</td><td>{e(verdict)}</td>'
            f'<td>{score}</td><td>{e(", ".join(r["affected"]))}</td>'
            f'<td>{pic}</td><td>{e(r["trigger_kind"] or "")}</td><td>{r["seconds"]:.1f}</td>'
            f'<td>{link}</td><td class="err">{e(r["error"] or "")}</td></tr>')
    skipped = "".join(f"<li>{e(s['input'])}: {e(s['reason'])}</li>" for s in summary["skipped"])
    c = summary["counts"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>clipguard zoo</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:middle}}
tr.backdoored td:nth-child(2){{color:#b00020;font-weight:bold}}tr.inconclusive td:nth-child(2){{color:#b36b00}}
tr.error td:nth-child(2){{color:#555}}td.err{{font-size:85%;color:#555;max-width:30em}}img{{image-rendering:pixelated}}</style>
</head><body><h1>clipguard zoo</h1>
<p>{e(summary["source"])}: {len(rows)} models scanned with probe {e(summary["config"]["probe"])}, mode
{e(summary["config"]["mode"])}: {c["backdoored"]} backdoored, {c["inconclusive"]} inconclusive, {c["clean"]} clean,
{c["failed"]} failed; {c["skipped"]} inputs skipped.</p>
<table><tr><th>model</th><th>verdict</th><th>score</th><th>affected labels</th><th>trigger</th><th>kind</th>
<th>seconds</th><th></th><th>error</th></tr>
{"".join(body)}</table>
{"<h2>Skipped</h2><ul>" + skipped + "</ul>" if skipped else ""}
</body></html>
"""
