"""The ONNX Runtime: a folder with ``image.onnx``, ``text.onnx`` and ``meta.json``.

Execution providers are chosen explicitly and checked on the session: ``device="cuda"`` fails
unless the session really runs on CUDA; ``"auto"`` asks for CUDA only where a GPU is visible and
warns when the session silently fell back to the CPU.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import ClipModel, ModelLoadError, normalize_card, require, tokenize_texts
from .safety import check_onnx_file, read_json

__all__ = ["META_KEYS", "PRECISIONS", "OnnxClipModel", "choose_providers", "int8_image_encoder", "ort_session", "read_meta"]

META_KEYS = ("input_size", "mean", "std", "logit_scale", "embed_dim", "tokenizer", "context_length")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
PRECISIONS = ("fp32", "int8")


def _gpu_visible() -> bool:
    """Whether a CUDA GPU is visible, without asking ONNX Runtime (which cannot tell)."""
    try:
        from clipguard._backend import cuda_device_count

        if cuda_device_count() > 0:
            return True
    except Exception:  # native core not built/importable: ask torch instead
        pass
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def choose_providers(device: str) -> tuple[list[Any], str]:
    """(providers for InferenceSession, what was asked: "cpu" or "cuda")."""
    ort = require("onnxruntime", purpose="the ONNX runtime")
    if device == "cpu":
        return [CPU], "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m:
        if CUDA not in ort.get_available_providers():
            raise RuntimeError(
                f"device {device!r} requested but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {ort.get_available_providers()}); install onnxruntime-gpu"
            )
        return [(CUDA, {"device_id": int(m.group(1) or 0)}), CPU], "cuda"
    if device == "auto":
        if _gpu_visible():
            if CUDA in ort.get_available_providers():
                return [(CUDA, {"device_id": 0}), CPU], "auto-cuda"
            warnings.warn(
                "a CUDA GPU is visible but this onnxruntime has no CUDAExecutionProvider; "
                "running ONNX models on the CPU (install onnxruntime-gpu)",
                RuntimeWarning,
                stacklevel=3,
            )
        return [CPU], "cpu"
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _threads() -> int:
    env = os.environ.get("CLIPGUARD_ORT_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def ort_session(path: Path, providers: list[Any], asked: str) -> Any:
    """An InferenceSession on ``providers``, checked against what was asked for."""
    ort = require("onnxruntime", purpose="the ONNX runtime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = _threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ORT threads must not spin: the native kernels and other sessions share the cores.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if asked != "cpu" and hasattr(ort, "preload_dlls"):
        try:  # CUDA/cuDNN from the pip wheels torch brings, when the system has none
            ort.preload_dlls()
        except Exception:  # nothing to preload: the provider check below reports it
            pass
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        raise ModelLoadError(f"{path}: ONNX Runtime cannot load it ({str(exc)[:300]})") from None
    used = sess.get_providers()
    if asked in ("cuda", "auto-cuda") and CUDA not in used:
        msg = f"{path}: asked for CUDA but the session runs on {used}"
        if asked == "cuda":
            raise RuntimeError(msg + " (CUDA/cuDNN libraries missing or no GPU?)")
        warnings.warn(msg + "; falling back to the CPU", RuntimeWarning, stacklevel=3)
    return sess


def int8_image_encoder(path: Path) -> Path:
    """The image encoder with its weights quantized to int8 and its activations quantized per batch
    (ONNX Runtime's dynamic quantization), cached under the fp32 file's SHA-256: a CPU path that
    uses the processor's int8 dot products (VNNI). Its top-1 labels are checked against fp32 by
    ``benchmarks/bench_scale.py``."""
    import uuid

    from .loading import _digest, cache_dir

    target = cache_dir() / "int8" / f"{_digest([path], 'int8-reduce-range')}.onnx"
    if not target.is_file():
        quantization = require("onnxruntime.quantization", purpose="int8 encoders")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:8]}.tmp.onnx")
        try:
            # Matrix multiplies only (a ViT's compute), weights per output channel: convolutions
            # quantized too cost small conv nets 2-3% of their top-1 labels. Weights in 7 bits:
            # without VNNI (AVX2 only) the 8-bit dot products saturate their 16-bit sums (measured
            # on an AVX2 machine: 95% of ViT-B/32 region labels kept with 8 bits).
            quantization.quantize_dynamic(str(path), str(staging), weight_type=quantization.QuantType.QInt8,
                                          op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                                          reduce_range=True)
            os.replace(staging, target)
        except Exception as exc:
            raise ModelLoadError(f"{path}: int8 quantization failed ({str(exc)[:300]})") from None
        finally:
            staging.unlink(missing_ok=True)
    return target


def read_meta(path: Path) -> dict[str, Any]:
    meta = read_json(path, "ONNX model metadata")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ModelLoadError(f"{path}: missing keys {missing} (needs {', '.join(META_KEYS)})")
    try:
        ok = (
            int(meta["input_size"]) > 0
            and len(meta["mean"]) == 3
            and len(meta["std"]) == 3
            and all(float(s) > 0 for s in meta["std"])
            and float(meta["logit_scale"]) > 0
            and int(meta["embed_dim"]) > 0
            and int(meta["context_length"]) > 0
            and isinstance(meta["tokenizer"], str)
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ModelLoadError(
            f"{path}: invalid values (input_size/embed_dim/context_length positive ints, mean/std "
            "3 numbers with std > 0, logit_scale > 0, tokenizer a string)"
        )
    if meta.get("card") is not None and not isinstance(meta["card"], dict):
        raise ModelLoadError(f"{path}: 'card' must be an object")
    return meta


def _load_tokenizer(folder: Path, name: str, context_length: int) -> tuple[Any, str]:
    if name.startswith("hf:"):
        sub = name[3:]
        tdir = (folder / sub).resolve()
        if not sub or ".." in Path(sub).parts or Path(sub).is_absolute() or not tdir.is_dir():
            raise ModelLoadError(f"{folder / 'meta.json'}: tokenizer folder {sub!r} not found in {folder}")
        tf = require("transformers", extra="hf", purpose="Hugging Face tokenizers")
        try:
            tok = tf.AutoTokenizer.from_pretrained(str(tdir), local_files_only=True,
                                                   trust_remote_code=False)
        except Exception as exc:
            raise ModelLoadError(f"{tdir}: cannot load tokenizer ({exc})") from None
        return tok, "hf"
    if ":" in name or "/" in name or not name:
        # 'local-dir:' or 'hf-hub:' would make open_clip read other folders or the network.
        raise ModelLoadError(
            f"{folder / 'meta.json'}: tokenizer must be an open_clip model name or 'hf:SUBDIR', "
            f"got {name!r}"
        )
    from .torch_runtime import open_clip_module

    try:
        return open_clip_module().get_tokenizer(name, context_length=context_length), "open_clip"
    except Exception as exc:
        raise ModelLoadError(f"{folder / 'meta.json'}: cannot load tokenizer {name!r} ({exc})") from None


class OnnxClipModel(ClipModel):
    """A CLIP model run by ONNX Runtime from a folder with image.onnx, text.onnx, meta.json.
    ``precision="int8"`` runs the image encoder quantized (:func:`int8_image_encoder`, CPU only);
    the text encoder, run once per vocabulary, stays fp32."""

    runtime = "onnx"

    def __init__(
        self, folder: str | Path, *, spec: str, device: str = "auto",
        card: dict[str, Any] | None = None, precision: str = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "int8" and device not in ("auto", "cpu"):
            raise ValueError(f"precision 'int8' is a CPU path (ONNX Runtime's dynamic quantization); "
                             f"got device {device!r}: use fp32 on a GPU")
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelLoadError(f"{folder}: ONNX model folder not found")
        meta = read_meta(folder / "meta.json")
        image_path, text_path = folder / "image.onnx", folder / "text.onnx"
        check_onnx_file(image_path, folder)
        check_onnx_file(text_path, folder)
        providers, asked = choose_providers("cpu" if precision == "int8" else device)
        self.precision = precision
        self._image_sess = ort_session(int8_image_encoder(image_path) if precision == "int8" else image_path,
                                       providers, asked)
        self._text_sess = ort_session(text_path, providers, asked)
        self.providers = list(self._image_sess.get_providers())
        self.source = folder
        self.meta = meta
        size = int(meta["input_size"])
        self._image_in, self._image_out = self._check_io(self._image_sess, image_path, 4, size)
        self._text_in, self._text_out = self._check_io(self._text_sess, text_path, 2, None)
        self._text_dtype = (
            np.int32 if self._text_sess.get_inputs()[0].type == "tensor(int32)" else np.int64
        )
        context_length = int(meta["context_length"])
        self.tokenizer, self.tokenizer_kind = _load_tokenizer(folder, meta["tokenizer"], context_length)
        self.tokenizer_name = meta["tokenizer"]
        used_cuda = CUDA in self.providers
        super().__init__(
            spec=spec, device="cuda" if used_cuda else "cpu", input_size=size, mean=meta["mean"],
            std=meta["std"], logit_scale=float(meta["logit_scale"]),
            embed_dim=int(meta["embed_dim"]), context_length=context_length,
            card=card if card is not None else normalize_card(meta.get("card")),
        )

    @staticmethod
    def _check_io(sess: Any, path: Path, rank: int, size: int | None) -> tuple[str, str]:
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise ModelLoadError(
                f"{path}: expected one input and an embedding output, got inputs "
                f"{[i.name for i in inputs]} and outputs {[o.name for o in outputs]}"
            )
        shape = inputs[0].shape
        if len(shape) != rank:
            raise ModelLoadError(f"{path}: input {inputs[0].name!r} has shape {shape}, expected rank {rank}")
        if size is not None:
            want = [3, size, size]
            got = shape[1:]
            if any(isinstance(g, int) and g != w for g, w in zip(got, want)):
                raise ModelLoadError(f"{path}: input shape {shape} does not fit meta.json input_size {size}")
        return inputs[0].name, outputs[0].name

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        return tokenize_texts(self.tokenizer, self.tokenizer_kind, list(texts), self.context_length)

    def _run_image(self, pixels: np.ndarray) -> np.ndarray:
        (out,) = self._image_sess.run([self._image_out], {self._image_in: pixels})
        return np.asarray(out, dtype=np.float32)

    def _run_text(self, tokens: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(tokens, dtype=self._text_dtype)
        (out,) = self._text_sess.run([self._text_out], {self._text_in: feed})
        return np.asarray(out, dtype=np.float32)
