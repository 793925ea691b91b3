"""Loading untrusted model files without running anything they contain.

- safetensors files are read with ``safetensors`` (no code path at all);
- PyTorch ``.pt``/``.bin``/``.pth`` files are first scanned (their pickles' imports are listed
  without unpickling), then read with ``torch.load(weights_only=True)``, whose unpickler only
  rebuilds tensors and plain containers; anything else is refused as ``UnsafeModelError``;
- TorchScript archives are refused (they carry code);
- ONNX files are parsed with ``onnx.load`` (no external data), their external-data paths must stay
  inside the model's folder, operators must come from the standard or ONNX Runtime domains (a
  custom-op domain needs a native library), and ``onnx.checker.check_model`` must pass.

The file format is sniffed from the bytes, not trusted from the suffix.
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

from .base import ModelLoadError, UnsafeModelError, require

__all__ = [
    "check_onnx_file",
    "load_tensor_file",
    "pickle_imports",
    "sniff_format",
    "unwrap_state_dict",
]

# Imports that let a pickle run code or touch the system. Refused before torch.load is even
# called; anything else that the weights_only unpickler does not allow is refused by torch.
_DANGEROUS_MODULES = {
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "shutil", "socket", "runpy",
    "importlib", "pty", "webbrowser", "ctypes", "multiprocessing", "code", "codeop", "pickle",
    "_pickle", "marshal", "types", "asyncio", "signal", "tempfile", "pathlib", "io", "_io",
    "urllib", "http", "requests", "ftplib", "smtplib", "telnetlib", "operator", "functools",
    "inspect", "pdb", "bdb", "timeit", "platform", "commands", "popen2", "glob", "zipimport",
    "__builtin__",
}
_DANGEROUS_BUILTINS = {
    "eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr", "globals",
    "locals", "vars", "breakpoint", "input", "exit", "quit", "help", "apply", "execfile",
}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
               "BINSTRING", "SHORT_BINSTRING"}
# Imports found in ordinary tensor checkpoints (torch's rebuild functions, dtypes, storages).
_PLAIN_IMPORTS = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset",
                  "builtins.bytearray", "builtins.slice", "builtins.complex", "_codecs.encode")
_ALLOWED_ONNX_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}


def sniff_format(path: Path) -> str:
    """'safetensors', 'torch-zip' or 'pickle', from the file's first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = path.stat().st_size
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read checkpoint ({exc})") from exc
    if not head:
        raise ModelLoadError(f"{path}: the file is empty")
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[0] == 0x80:
        return "pickle"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{":
            if 8 + n > size:
                raise ModelLoadError(
                    f"{path}: truncated safetensors file (header says {n} bytes, file has "
                    f"{size - 8} after the length)"
                )
            return "safetensors"
    raise ModelLoadError(
        f"{path}: not a recognised checkpoint (expected safetensors, or a PyTorch zip or pickle "
        "file)"
    )


def pickle_imports(data: bytes, max_pickles: int = 1) -> list[str]:
    """'module.name' for every global a pickle stream imports, read with pickletools (nothing is
    unpickled). Scans up to ``max_pickles`` consecutive pickles; stops quietly at corrupt data
    (the real loader reports that)."""
    found: list[str] = []
    stream = io.BytesIO(data)
    for _ in range(max_pickles):
        if stream.tell() >= len(data):
            break
        strings: list[str] = []
        memo: dict[int, Any] = {}
        last: Any = None
        try:
            for op, arg, _pos in pickletools.genops(stream):
                name = op.name
                if name == "GLOBAL" or name == "INST":
                    mod, _, attr = str(arg).partition(" ")
                    found.append(f"{mod}.{attr}")
                    last = None
                elif name == "STACK_GLOBAL":
                    if len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    else:
                        found.append("<unresolved>.<STACK_GLOBAL>")
                    last = None
                elif name in _STRING_OPS:
                    val = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
                    strings.append(val)
                    last = val
                elif name == "MEMOIZE":
                    memo[len(memo)] = last
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = last  # type: ignore[arg-type]  # pickletools gives PUT an int
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    val = memo.get(int(arg))  # type: ignore[arg-type,assignment]
                    if isinstance(val, str):
                        strings.append(val)
                    last = val
                else:
                    last = None
                if name == "STOP":
                    break
        except Exception:  # truncated or not a pickle: leave the diagnosis to the loader
            break
    return found


def _dangerous(imports: list[str]) -> list[str]:
    bad = []
    for g in imports:
        mod, _, attr = g.rpartition(".")
        top = mod.split(".")[0]
        if top in _DANGEROUS_MODULES:
            bad.append(g)
        elif top == "builtins" and attr in _DANGEROUS_BUILTINS:
            bad.append(g)
        elif g.startswith("<unresolved>"):
            bad.append(g)
    return sorted(set(bad))


def _scan_torch_file(path: Path, fmt: str) -> list[str]:
    if fmt == "torch-zip":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if any("/code/" in n or n.endswith("constants.pkl") for n in names):
                    raise UnsafeModelError(
                        f"{path}: a TorchScript archive, which carries code; clipguard loads "
                        "weights only (save a state_dict, preferably as safetensors)"
                    )
                imports: list[str] = []
                for n in names:
                    if n.endswith(".pkl"):
                        imports += pickle_imports(zf.read(n))
        except zipfile.BadZipFile as exc:
            raise ModelLoadError(f"{path}: corrupt or truncated PyTorch zip file ({exc})") from exc
        except (OSError, EOFError) as exc:
            raise ModelLoadError(f"{path}: cannot read PyTorch zip file ({exc})") from exc
    else:
        # Legacy format: magic number, protocol, sys info, the object, storage keys, raw data.
        with open(path, "rb") as f:
            imports = pickle_imports(f.read(64 << 20), max_pickles=5)
    bad = _dangerous(imports)
    if bad:
        raise UnsafeModelError(
            f"{path}: refused: its pickle imports {', '.join(bad)}, which would run code when "
            "loaded; nothing was loaded"
        )
    return imports


def load_tensor_file(path: str | Path) -> Any:
    """What a checkpoint file holds (usually a dict of CPU tensors), loaded without running code.

    Raises ``UnsafeModelError`` for a file that would run code, ``ModelLoadError`` for a missing,
    truncated or corrupt one.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: checkpoint file not found")
    fmt = sniff_format(path)
    if fmt == "safetensors":
        st = require("safetensors.torch", purpose="reading safetensors checkpoints")
        try:
            return st.load_file(str(path), device="cpu")
        except Exception as exc:  # SafetensorError, OSError, ...
            raise ModelLoadError(f"{path}: corrupt or truncated safetensors file ({exc})") from exc

    imports = _scan_torch_file(path, fmt)
    torch = require("torch", purpose="reading PyTorch checkpoints")
    import pickle

    try:
        with warnings.catch_warnings():
            # torch's advisory about non-default pickle protocols; the unpickler decides anyway.
            warnings.filterwarnings("ignore", message=r"Detected pickle protocol", category=UserWarning)
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc) or type(exc).__name__
        m = re.search(r"GLOBAL (\S+)", msg)
        odd = sorted({g for g in imports if not g.startswith(_PLAIN_IMPORTS)})
        if m or odd:
            what = m.group(1) if m else ", ".join(odd[:5])
            raise UnsafeModelError(
                f"{path}: refused by safe (weights_only) loading: it imports {what}, which would "
                "be called when unpickled. Nothing was run; if you trust the file, convert it to "
                "safetensors"
            ) from None
        if "Unsupported operand" in msg:
            op = re.search(r"Unsupported operand (\d+)", msg)
            raise ModelLoadError(
                f"{path}: uses pickle opcodes that safe loading does not support (operand "
                f"{op.group(1) if op else '?'}; e.g. a protocol-4 pickle); re-save it with "
                "torch.save defaults or as safetensors"
            ) from None
        raise ModelLoadError(f"{path}: corrupt or truncated PyTorch file ({msg[:300]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, struct.error) as exc:
        msg = str(exc) or type(exc).__name__
        raise ModelLoadError(f"{path}: corrupt or truncated PyTorch file ({msg[:300]})") from None


def unwrap_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    """The tensor dict inside a checkpoint: the object itself, or its 'state_dict'/'model' entry;
    a DistributedDataParallel 'module.' prefix is removed."""
    torch = require("torch")
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ModelLoadError(
            f"{path}: expected a dict of tensors (a state_dict), got {type(obj).__name__}"
            + (" (empty)" if isinstance(obj, dict) else "")
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelLoadError(f"{path}: entries that are not tensors: {bad[:5]}")
    if all(str(k).startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _iter_graph(graph: Any):
    """Every (node, tensors) in a graph and its subgraphs."""
    for t in graph.initializer:
        yield None, t
    for st in graph.sparse_initializer:
        yield None, st.values
        yield None, st.indices
    for node in graph.node:
        yield node, None
        for attr in node.attribute:
            if attr.HasField("t"):
                yield None, attr.t
            for t in attr.tensors:
                yield None, t
            if attr.HasField("g"):
                yield from _iter_graph(attr.g)
            for g in attr.graphs:
                yield from _iter_graph(g)


MAX_ONNX_BYTES = 64 << 30  # more than any CLIP's weights (ViT-bigG-14 in float32 is about 10 GiB)


def _tensor_bytes(onnx: Any, tensor: Any, path: Path) -> int:
    """The bytes a tensor's shape and type declare (refusing negative or absurd dimensions)."""
    n = 1
    for d in tensor.dims:
        if d < 0 or d > 1 << 40:
            raise ModelLoadError(f"{path}: tensor {tensor.name!r} declares dimension {d}; refused")
        n *= int(d)
    try:
        item = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        item = 8  # an unknown or string type: counted at its widest plain size
    return n * item


def check_onnx_file(path: str | Path, root: str | Path | None = None) -> Any:
    """Parse and check an ONNX file before any runtime sees it; returns the ``onnx.ModelProto``
    (without external data). ``root``: the folder external data must stay in (default: the
    file's folder)."""
    onnx = require("onnx", purpose="checking ONNX files")
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    if not path.is_file():
        raise ModelLoadError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends
        raise ModelLoadError(f"{path}: not a valid ONNX file, corrupt or truncated ({exc})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelLoadError(f"{path}: not a valid ONNX file (no graph), corrupt or truncated")

    local_domains = {f.domain for f in model.functions}
    allowed = _ALLOWED_ONNX_DOMAINS | local_domains
    for op in model.opset_import:
        if op.domain not in allowed:
            raise UnsafeModelError(
                f"{path}: uses the custom operator domain {op.domain!r}, which needs a native "
                "library to run; refused"
            )
    root_resolved = root.resolve()
    nodes_and_tensors = list(_iter_graph(model.graph))
    for f in model.functions:
        for node in f.node:
            nodes_and_tensors.append((node, None))
    total = 0
    for node, tensor in nodes_and_tensors:
        if node is not None and node.domain not in allowed:
            raise UnsafeModelError(
                f"{path}: node {node.name or node.op_type!r} uses the custom operator domain "
                f"{node.domain!r}; refused"
            )
        if tensor is not None and tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            loc = info.get("location", "")
            target = (path.parent / loc).resolve()
            if not loc or Path(loc).is_absolute() or ".." in Path(loc).parts:
                raise UnsafeModelError(
                    f"{path}: tensor {tensor.name!r} points at external data {loc!r} outside its "
                    "folder; refused"
                )
            try:
                target.relative_to(root_resolved)
            except ValueError:
                raise UnsafeModelError(
                    f"{path}: tensor {tensor.name!r} points at external data {loc!r}, which "
                    f"resolves outside {root}; refused"
                ) from None
            if not target.is_file():
                raise ModelLoadError(f"{path}: external data file {loc!r} is missing")
            need = int(info.get("offset", 0) or 0) + _tensor_bytes(onnx, tensor, path)
            if int(info.get("length", need) or need) > need or need > target.stat().st_size:
                raise ModelLoadError(
                    f"{path}: tensor {tensor.name!r}: its external data {loc!r} is shorter than the tensor "
                    "or its length disagrees with the tensor's shape; corrupt or hostile, refused"
                )
        if tensor is not None:
            total += _tensor_bytes(onnx, tensor, path)
            if total > MAX_ONNX_BYTES:
                raise ModelLoadError(
                    f"{path}: its tensors declare more than {MAX_ONNX_BYTES >> 30} GiB; refused before "
                    "anything is allocated"
                )
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: fails the ONNX checker ({str(exc)[:300]})") from None
    return model


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a small metadata file, with an error naming the file."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: {what} not found")
    if path.stat().st_size > 16 << 20:
        raise ModelLoadError(f"{path}: {what} is implausibly large")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: {what} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: {what} must hold a JSON object, got {type(data).__name__}")
    return data
