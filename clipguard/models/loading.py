"""``load_model(spec, runtime, device)``: model specs a user can type.

=========================  =============================================================
``toy:NAME``               a model folder bundled in ``clipguard/models/toy/NAME/``
``dir:PATH`` or ``PATH``   a clipguard model folder (see ``export.save_model_dir``)
``open_clip:ARCH:PATH``    a local .pt/.bin/.pth/.safetensors checkpoint of an open_clip architecture
``hf:DIR``                 a Hugging Face ``CLIPModel`` folder (extra ``clipguard[hf]``)
``onnx:DIR``               a folder with image.onnx, text.onnx and meta.json
=========================  =============================================================

With ``runtime="onnx"``, a spec that has no ONNX files yet (``open_clip:``, ``hf:``, a folder
without ``onnx/``) is exported once into the cache (``$CLIPGUARD_CACHE_DIR``, default
``~/.cache/clipguard``), keyed by the weights' SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .base import ClipModel, ModelLoadError

__all__ = ["SPEC_KINDS", "TOY_DIR", "ParsedSpec", "available_toy_models", "cache_dir", "load_model",
           "parse_spec"]

TOY_DIR = Path(__file__).parent / "toy"
SPEC_KINDS = ("toy:NAME", "dir:PATH", "open_clip:ARCH:PATH", "hf:DIR", "onnx:DIR")
RUNTIMES = ("onnx", "torch")
_KINDS = ("toy", "dir", "open_clip", "hf", "onnx")
_SPEC_HELP = ", ".join(SPEC_KINDS) + ", or the path of an existing model folder"


@dataclass(frozen=True)
class ParsedSpec:
    kind: str  # "toy" | "dir" | "open_clip" | "hf" | "onnx"
    path: Path
    arch: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        if self.kind == "toy":
            return f"toy:{self.name}"
        if self.kind == "open_clip":
            return f"open_clip:{self.arch}:{self.path}"
        return f"{self.kind}:{self.path}"


def available_toy_models() -> list[str]:
    """Names ``toy:NAME`` can load in this install."""
    if not TOY_DIR.is_dir():
        return []
    return sorted(
        p.name for p in TOY_DIR.iterdir()
        if p.is_dir() and ((p / "open_clip_config.json").is_file() or (p / "onnx" / "meta.json").is_file())
    )


def _detect_folder(path: Path, spec: str) -> ParsedSpec:
    if (path / "open_clip_config.json").is_file():
        return ParsedSpec("dir", path)
    if (path / "meta.json").is_file() and (path / "image.onnx").is_file():
        return ParsedSpec("onnx", path)
    if (path / "config.json").is_file():
        return ParsedSpec("hf", path)
    raise ModelLoadError(
        f"{path}: not a model folder (no open_clip_config.json, meta.json + image.onnx, or "
        "config.json)"
    )


def parse_spec(spec: str | os.PathLike) -> ParsedSpec:
    """Parse a model spec; ``ValueError`` (``ModelLoadError`` for a missing path) if it is bad."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise TypeError(f"model spec must be a string, got {type(spec).__name__}")
    if not spec.strip():
        raise ValueError(f"empty model spec; expected {_SPEC_HELP}")
    m = re.match(r"^([A-Za-z][A-Za-z0-9_]+):(.*)$", spec, re.S)
    if m is None or m.group(1) not in _KINDS:
        path = Path(spec)
        if path.is_dir():
            return _detect_folder(path, spec)
        if path.is_file():
            if path.suffix == ".onnx" and (path.parent / "meta.json").is_file():
                return ParsedSpec("onnx", path.parent)
            raise ValueError(
                f"{spec!r} is a file: a checkpoint needs its architecture, as "
                f"open_clip:ARCH:{spec} (ARCH an open_clip model name)"
            )
        if m is not None:
            raise ValueError(f"unknown model spec kind {m.group(1)!r} in {spec!r}; expected {_SPEC_HELP}")
        raise ValueError(f"{spec!r} is neither a model spec nor an existing path; expected {_SPEC_HELP}")
    kind, rest = m.group(1), m.group(2)
    if not rest:
        raise ValueError(f"model spec {spec!r} has nothing after {kind!r}; expected {_SPEC_HELP}")
    if kind == "toy":
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", rest):
            raise ValueError(f"invalid toy model name {rest!r} in {spec!r}")
        names = available_toy_models()
        if rest not in names:
            listed = ", ".join(names) if names else "none are bundled in this install"
            raise ModelLoadError(f"unknown toy model {rest!r}; available: {listed}")
        return ParsedSpec("toy", TOY_DIR / rest, name=rest)
    if kind == "open_clip":
        arch, sep, ckpt = rest.partition(":")
        if not sep or not arch or not ckpt:
            raise ValueError(
                f"model spec {spec!r} must be open_clip:ARCH:PATH (ARCH an open_clip model name, "
                "PATH a local .pt/.bin/.safetensors checkpoint)"
            )
        return ParsedSpec("open_clip", Path(ckpt), arch=arch)
    folder = Path(rest)
    if kind == "onnx" and folder.is_file() and (folder.parent / "meta.json").is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: folder not found (from spec {spec!r})")
    return ParsedSpec(kind, folder)


def cache_dir() -> Path:
    """Where ONNX exports made on demand are kept."""
    env = os.environ.get("CLIPGUARD_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipguard"


def _digest(files: list[Path], extra: str) -> str:
    from .export import EXPORT_VERSION

    h = hashlib.sha256(f"clipguard-onnx-v{EXPORT_VERSION}\0{extra}\0".encode())
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:32]


def _cached_onnx(
    files: list[Path], extra: str, build: Callable[[], Any], spec: str, device: str,
    card: dict[str, Any] | None, precision: str,
) -> ClipModel:
    """Load the ONNX export of a torch model from the cache, exporting it first if needed."""
    from .export import export_onnx
    from .onnx_runtime import OnnxClipModel

    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ModelLoadError(f"{missing[0]}: file not found")
    root = cache_dir() / "onnx"
    target = root / _digest(files, extra)
    if not (target / "meta.json").is_file():
        torch_model = build()
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            export_onnx(torch_model, staging)
            try:
                os.replace(staging, target)
            except OSError:  # another process got there first
                pass
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        card = card if card is not None else torch_model.card
    return OnnxClipModel(target, spec=spec, device=device, card=card, precision=precision)


def load_model(spec: str | os.PathLike, runtime: str = "onnx", device: str = "auto",
               precision: str = "fp32") -> ClipModel:
    """Load a CLIP model from a spec (see the module docstring) on a runtime ("onnx" for fast
    scanning, "torch" for repair) and a device ("auto", "cpu", "cuda", "cuda:N"). ``precision``
    "int8" quantizes the ONNX image encoder (a CPU path, about twice as fast; see
    :class:`~clipguard.models.onnx_runtime.OnnxClipModel`).

    Raises ``ValueError`` for a bad spec, ``ModelLoadError`` naming the file for anything wrong
    with the files, ``UnsafeModelError`` for a file that would run code (nothing is run).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be 'onnx' or 'torch', got {runtime!r}")
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if precision != "fp32" and runtime == "torch":
        raise ValueError(f"precision {precision!r} is an ONNX Runtime path; the torch runtime runs fp32")
    p = parse_spec(spec)
    name = str(p)

    from . import torch_runtime as tr

    if p.kind == "onnx":
        if runtime == "torch":
            raise ValueError(f"{name}: an ONNX model has no torch weights; use runtime='onnx'")
        from .onnx_runtime import OnnxClipModel

        return OnnxClipModel(p.path, spec=name, device=device, precision=precision)

    if p.kind in ("toy", "dir"):
        if runtime == "torch":
            return tr.load_model_folder_torch(p.path, spec=name, device=device)
        onnx_dir = p.path / "onnx"
        cfg = p.path / tr.MODEL_CONFIG
        card = None
        if cfg.is_file() or (p.path / "card.json").is_file():
            arch = tr.folder_arch(tr.read_json(cfg, "open_clip config")) if cfg.is_file() else None
            card = tr.read_model_folder_card(p.path, arch)
        if (onnx_dir / "meta.json").is_file():
            from .onnx_runtime import OnnxClipModel

            return OnnxClipModel(onnx_dir, spec=name, device=device, card=card, precision=precision)
        return _cached_onnx(
            [cfg, p.path / tr.MODEL_WEIGHTS], "dir",
            lambda: tr.load_model_folder_torch(p.path, spec=name, device="cpu"),
            name, device, card, precision,
        )

    if p.kind == "open_clip":
        if runtime == "torch":
            return tr.load_open_clip_checkpoint(p.arch or "", p.path, spec=name, device=device)
        return _cached_onnx(
            [p.path], f"open_clip:{p.arch}",
            lambda: tr.load_open_clip_checkpoint(p.arch or "", p.path, spec=name, device="cpu"),
            name, device, None, precision,
        )

    assert p.kind == "hf"
    if runtime == "torch":
        return tr.load_hf_folder(p.path, spec=name, device=device)
    from .base import require

    require("transformers", extra="hf", purpose="hf: model folders")
    files = sorted(
        f for f in p.path.iterdir()
        if f.is_file() and (f.suffix in (".json", ".txt", ".safetensors", ".bin", ".model"))
    )
    return _cached_onnx(
        files, "hf", lambda: tr.load_hf_folder(p.path, spec=name, device="cpu"), name, device, None, precision
    )


def torch_twin(model: Any, device: str = "cpu") -> Any:
    """The model on the torch runtime, with the same weights (for synthesis and repair): the
    model itself when it already runs there, else reloaded from its spec. ``ValueError`` for an
    ONNX-only model (it has no trainable weights) or an object without a spec."""
    from .torch_runtime import TorchClipModel

    if isinstance(model, TorchClipModel):
        return model
    spec = model if isinstance(model, str) else getattr(model, "spec", None)
    if not isinstance(spec, str):
        raise ValueError(f"need a model spec or a loaded model, got {type(model).__name__}")
    if spec.startswith("onnx:"):
        raise ValueError(f"{spec}: an ONNX-only model has no torch weights; use its checkpoint "
                         "(toy:, dir:, open_clip: or hf:) instead")
    return load_model(spec, runtime="torch", device=device)
