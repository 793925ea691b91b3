"""ONNX export of a torch-runtime model, and the clipguard model folder.

Model folder (``save_model_dir`` writes it, ``dir:``/``toy:`` read it)::

    open_clip_config.json        {"model_cfg": ..., "preprocess_cfg": ..., "clipguard": {"arch": ...}}
    open_clip_model.safetensors  the state_dict (float16 by default: see ``weights_dtype``)
    card.json                    provenance: architecture, world, attack, target, poison_rate, ca, asr, recipe
    onnx/image.onnx, onnx/text.onnx, onnx/meta.json

ONNX export: legacy TorchScript exporter (``dynamo=False``, opset 17), a dynamic batch axis,
normalized embeddings out; float32 weights that are exactly representable in float16 are stored as
float16 behind a Cast (lossless, about half the size, folded back to float32 by ONNX Runtime at
load). The export is verified against PyTorch on the spot.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .base import ClipModel, normalize_card, require

__all__ = ["EXPORT_VERSION", "PARITY_TOL", "export_onnx", "save_model_dir"]

EXPORT_VERSION = 1
PARITY_TOL = 1e-4
OPSET = 17
_MIN_FP16_ELEMENTS = 256


def _wrappers(kind: str, module: Any) -> tuple[Any, Any]:
    torch = require("torch")
    from .torch_runtime import image_features, text_features

    class ImageEncoder(torch.nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, pixels: Any) -> Any:
            return torch.nn.functional.normalize(image_features(kind, self.model, pixels), dim=-1)

    class TextEncoder(torch.nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, tokens: Any) -> Any:
            return torch.nn.functional.normalize(text_features(kind, self.model, tokens), dim=-1)

    # A fresh wrapper is in training mode, and export restores that flag: without .eval() the
    # traced graph and PyTorch disagree (see FIELD_NOTES).
    return ImageEncoder().eval(), TextEncoder().eval()


def _compress_fp16(model: Any) -> int:
    """Store float32 initializers that float16 represents exactly as float16 + Cast. Returns the
    number converted. Lossless by construction."""
    onnx = require("onnx")
    from onnx import helper, numpy_helper

    graph = model.graph
    graph_inputs = {i.name for i in graph.input}
    casts = []
    keep = []
    n = 0
    for init in graph.initializer:
        if (init.data_type != onnx.TensorProto.FLOAT or init.name in graph_inputs
                or int(np.prod(init.dims)) < _MIN_FP16_ELEMENTS):
            keep.append(init)
            continue
        arr = numpy_helper.to_array(init)
        half = arr.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), arr):
            keep.append(init)
            continue
        h = numpy_helper.from_array(half, init.name + "__fp16")
        keep.append(h)
        casts.append(helper.make_node("Cast", [h.name], [init.name], to=onnx.TensorProto.FLOAT,
                                      name=init.name + "__cast"))
        n += 1
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return n


def _export_one(wrapper: Any, example: Any, path: Path, in_name: str) -> None:
    torch = require("torch")
    onnx = require("onnx")
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        # Expected while tracing: legacy-exporter deprecation, tracer notes, and the advisory
        # about index ops (our indices are argmax positions, never negative).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*aten::index operator.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*Constant folding.*", category=UserWarning)
        torch.onnx.export(
            wrapper, (example,), str(tmp), dynamo=False, opset_version=OPSET,
            input_names=[in_name], output_names=["embeddings"],
            dynamic_axes={in_name: {0: "batch"}, "embeddings": {0: "batch"}},
            do_constant_folding=True,
        )
    model = onnx.load(str(tmp))
    _compress_fp16(model)
    onnx.save(model, str(path))
    tmp.unlink()
    # Weights over 2 GB would need external data; refuse rather than write a broken file.
    if path.stat().st_size > (2 << 30) - (1 << 20):
        raise RuntimeError(f"{path}: model over 2 GB; external-data export is not supported yet")


def _tokenizer_meta(model: Any, out_dir: Path) -> str:
    """What meta.json names as the tokenizer: an open_clip model name, or "hf:tokenizer" (the
    Hugging Face tokenizer files, copied next to the ONNX files)."""
    from .torch_runtime import open_clip_module

    if model.tokenizer_kind == "hf":
        model.tokenizer.save_pretrained(str(out_dir / "tokenizer"))
        return "hf:tokenizer"
    name = str(model.tokenizer_name)
    known = open_clip_module().get_model_config(name) is not None
    if type(model.tokenizer).__name__ == "SimpleTokenizer":
        # CLIP's BPE; any name that open_clip maps to it works, at meta's context_length.
        return name if known else "ViT-B-32"
    if not known:
        raise NotImplementedError(
            f"ONNX export of a model whose tokenizer ({type(model.tokenizer).__name__}) is not "
            "named by an open_clip architecture"
        )
    return name


def export_onnx(model: ClipModel, out_dir: str | Path, *, verify: bool = True) -> Path:
    """Write ``out_dir/image.onnx``, ``out_dir/text.onnx`` and ``out_dir/meta.json`` for a
    torch-runtime model; with ``verify``, check ONNX Runtime against PyTorch (max abs error on
    normalized embeddings <= 1e-4, recorded in meta.json as ``parity_max_abs_err``)."""
    from .torch_runtime import TorchClipModel

    torch = require("torch", purpose="ONNX export")
    if not isinstance(model, TorchClipModel):
        raise TypeError(
            f"export_onnx needs a torch-runtime model (load_model(spec, runtime='torch')), got "
            f"{type(model).__name__}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module = model.torch_module
    if str(next(module.parameters()).device) != "cpu":
        module = copy.deepcopy(module).cpu()
    module.eval()
    image_enc, text_enc = _wrappers(model.kind, module)
    gen = torch.Generator().manual_seed(0)
    s = model.input_size
    pixels = torch.randn(2, 3, s, s, generator=gen)
    probe_texts = ["a photo of a red star", "two blue circles on grass", "x"]
    tokens = torch.from_numpy(model.tokenize(probe_texts[:2]))
    _export_one(image_enc, pixels, out_dir / "image.onnx", "pixels")
    _export_one(text_enc, tokens, out_dir / "text.onnx", "tokens")

    meta: dict[str, Any] = {
        "format": "clipguard-onnx",
        "format_version": EXPORT_VERSION,
        "input_size": int(s),
        "mean": [float(v) for v in model.mean],
        "std": [float(v) for v in model.std],
        "logit_scale": float(model.logit_scale),
        "embed_dim": int(model.embed_dim),
        "tokenizer": _tokenizer_meta(model, out_dir),
        "context_length": int(model.context_length),
        "card": model.card,
        # The spec without the exporting machine's folders (an export travels).
        "source": {"spec": _portable_spec(model.spec), "kind": model.kind, "arch": model.arch},
        "opset": OPSET,
        "exported_with": {"torch": torch.__version__},
    }
    if verify:
        meta["parity_max_abs_err"] = _verify(image_enc, text_enc, out_dir, model, s, gen, probe_texts)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _verify(image_enc: Any, text_enc: Any, out_dir: Path, model: Any, s: int, gen: Any,
            texts: list[str]) -> float:
    torch = require("torch")
    from .onnx_runtime import CPU, ort_session

    # A batch size other than the traced one exercises the dynamic axis.
    pixels = torch.randn(3, 3, s, s, generator=gen)
    tokens = torch.from_numpy(model.tokenize(texts))
    with torch.inference_mode():
        ref_i = image_enc(pixels).numpy()
        ref_t = text_enc(tokens).numpy()
    si = ort_session(out_dir / "image.onnx", [CPU], "cpu")
    st = ort_session(out_dir / "text.onnx", [CPU], "cpu")
    got_i = si.run(None, {"pixels": pixels.numpy()})[0]
    got_t = st.run(None, {"tokens": tokens.numpy()})[0]
    err = float(max(np.abs(got_i - ref_i).max(), np.abs(got_t - ref_t).max()))
    if not err <= PARITY_TOL:
        raise RuntimeError(
            f"{out_dir}: ONNX export differs from PyTorch by {err:.3g} (> {PARITY_TOL}); the "
            "export is wrong, not written"
        )
    return err


# --- model folder --------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _portable_spec(spec: str) -> str:
    """``dir:/home/me/runs/m`` -> ``dir:m``: a spec's kind and the file or folder name only."""
    kind, sep, rest = spec.partition(":")
    if not sep:
        return Path(spec).name
    head, colon, path = rest.rpartition(":") if kind == "open_clip" else ("", "", rest)
    return f"{kind}:{head}{colon}{Path(path).name}" if "/" in path or "\\" in path else spec


def _resolve_source(model: Any, card: dict[str, Any], arch: str | None) -> tuple[Any, str, dict, dict]:
    """(module, arch, model_cfg, preprocess_cfg) for what save_model_dir was given."""
    from .onnx_runtime import OnnxClipModel
    from .torch_runtime import TorchClipModel, open_clip_module

    oc = open_clip_module()
    if isinstance(model, OnnxClipModel):
        raise TypeError("save_model_dir needs torch weights; load the model with runtime='torch'")
    if isinstance(model, TorchClipModel):
        if model.kind != "open_clip" or model.model_cfg is None:
            raise TypeError("save_model_dir writes open_clip model folders; this is a "
                            f"{model.kind} model (use export_onnx for an ONNX copy)")
        module, arch = model.torch_module, arch or model.arch or card.get("architecture")
        model_cfg = copy.deepcopy(model.model_cfg)
        pp = dict(model.preprocess_cfg or oc.get_model_preprocess_cfg(module))
    else:
        torch = require("torch")
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "encode_image"):
            raise TypeError(f"save_model_dir needs an open_clip model or a ClipModel, got {type(model).__name__}")
        module = model
        arch = arch or card.get("architecture")
        if not arch:
            raise ValueError("save_model_dir: name the architecture (arch=..., or card['architecture'])")
        model_cfg = oc.get_model_config(arch)
        if model_cfg is None:
            raise ValueError(f"save_model_dir: {arch!r} is not an open_clip architecture")
        pp = dict(oc.get_model_preprocess_cfg(module))
    size: Any = pp.get("size", model_cfg["vision_cfg"].get("image_size"))
    if isinstance(size, (list, tuple)):
        size = size[0]
    preprocess_cfg = {
        "size": int(size),
        "mean": [float(v) for v in pp["mean"]],
        "std": [float(v) for v in pp["std"]],
        # What clipguard does: squash to size x size with bilinear interpolation.
        "interpolation": "bilinear",
        "resize_mode": "squash",
    }
    return module, str(arch), model_cfg, preprocess_cfg


SPARSE_ROWS, SPARSE_VALUES = ".__rows__", ".__values__"


def _sparse_rows(sd: dict[str, Any]) -> dict[str, Any]:
    """Tables of at least 1,024 rows, over half of them zero, as (row indices, rows)."""
    out = {}
    for k, v in sd.items():
        if v.dim() == 2 and v.shape[0] >= 1024 and v.is_floating_point():
            keep = v.abs().sum(dim=1) != 0
            if int(keep.sum()) * 2 <= v.shape[0]:
                out[k + SPARSE_ROWS] = keep.nonzero()[:, 0].contiguous()  # int64
                out[k + SPARSE_VALUES] = v[keep].contiguous()
                continue
        out[k] = v
    return out


def save_model_dir(
    model: Any, out_dir: str | Path, card: dict[str, Any] | None = None, *,
    arch: str | None = None, weights_dtype: str = "float16", with_onnx: bool = True, sparse_rows: bool = False,
) -> Path:
    """Write a clipguard model folder for an open_clip model (an ``nn.Module`` made by
    ``open_clip.create_model``, or a torch-runtime ``ClipModel``).

    ``weights_dtype``: "float16" (default; half the size; tensors float16 cannot hold stay
    float32) or "float32". The ONNX copy is exported from the weights as stored, so the torch and
    ONNX runtimes of the folder agree within 1e-4. ``with_onnx=False`` leaves out ``onnx/``
    (loading with runtime="onnx" then exports into the cache on first use). ``sparse_rows=True``
    stores a large table that is mostly zero rows (a toy model's token embeddings: its vocabulary
    uses a few hundred of 49,408 tokens) as its non-zero rows and their indices -- a fraction of
    the size, read back exactly by clipguard (not by open_clip's own loader).
    """
    torch = require("torch", purpose="saving models")
    st = require("safetensors.torch", purpose="saving models")
    if weights_dtype not in ("float16", "float32"):
        raise ValueError(f"weights_dtype must be 'float16' or 'float32', got {weights_dtype!r}")
    card = dict(card or {})
    module, arch, model_cfg, preprocess_cfg = _resolve_source(model, card, arch)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    sd = {}
    for k, v in module.state_dict().items():
        v = v.detach().to("cpu")
        if weights_dtype == "float16" and v.dtype == torch.float32:
            h = v.half()
            if bool(torch.isfinite(h).all()) or not bool(torch.isfinite(v).all()):
                v = h
        sd[k] = v.contiguous().clone()
    if sparse_rows:
        sd = _sparse_rows(sd)
    weights = out_dir / "open_clip_model.safetensors"
    tmp = weights.with_name(f".{weights.name}.{uuid.uuid4().hex[:8]}.tmp")
    st.save_file(sd, str(tmp), metadata={"format": "pt", "weights_dtype": weights_dtype})
    os.replace(tmp, weights)

    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": preprocess_cfg,
        "clipguard": {"arch": arch, "format_version": EXPORT_VERSION, "weights_dtype": weights_dtype},
    }
    _atomic_write(out_dir / "open_clip_config.json", (json.dumps(config, indent=2) + "\n").encode())
    full_card = normalize_card(card, architecture=arch)
    _atomic_write(out_dir / "card.json", (json.dumps(full_card, indent=2) + "\n").encode())

    onnx_dir = out_dir / "onnx"
    if with_onnx:
        from .torch_runtime import load_model_folder_torch

        # Export what a reader of the folder gets: the stored (possibly float16) weights.
        stored = load_model_folder_torch(out_dir, spec=f"dir:{out_dir}", device="cpu")
        staging = out_dir / f".onnx.{uuid.uuid4().hex[:8]}.tmp"
        try:
            export_onnx(stored, staging)
            if onnx_dir.exists():
                shutil.rmtree(onnx_dir)
            os.replace(staging, onnx_dir)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    elif onnx_dir.exists():
        shutil.rmtree(onnx_dir)
    return out_dir
