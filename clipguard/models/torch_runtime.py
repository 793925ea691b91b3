"""The PyTorch runtime: open_clip models (any architecture, our toy config included) and Hugging
Face ``CLIPModel`` folders, in eval mode under ``torch.inference_mode``. This is the runtime
repair fine-tunes; ``torch_module`` is the ``nn.Module``."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import OPENAI_MEAN, OPENAI_STD, ClipModel, ModelLoadError, normalize_card, require, tokenize_texts
from .safety import load_tensor_file, read_json, unwrap_state_dict

__all__ = [
    "TOY_ARCH",
    "TorchClipModel",
    "load_hf_folder",
    "load_model_folder_torch",
    "load_open_clip_checkpoint",
    "open_clip_module",
    "resolve_torch_device",
]

CONFIG_DIR = Path(__file__).parent / "configs"
TOY_ARCH = "clipguard-toy"
MODEL_CONFIG = "open_clip_config.json"
MODEL_WEIGHTS = "open_clip_model.safetensors"


def open_clip_module() -> Any:
    """``open_clip``, with clipguard's architectures (``clipguard-toy``) registered."""
    oc = require("open_clip", purpose="open_clip models")
    if TOY_ARCH not in oc.list_models():
        oc.add_model_config(CONFIG_DIR)
    return oc


def resolve_torch_device(device: str) -> str:
    torch = require("torch", purpose="the torch runtime")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or re.fullmatch(r"cuda:\d+", device):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but torch sees no CUDA GPU")
        return device
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def image_features(kind: str, module: Any, pixels: Any) -> Any:
    """Unnormalized image embeddings of a torch module (differentiable)."""
    if kind == "hf":
        return module.visual_projection(module.vision_model(pixel_values=pixels).pooler_output)
    return module.encode_image(pixels)


def text_features(kind: str, module: Any, tokens: Any) -> Any:
    """Unnormalized text embeddings of a torch module (differentiable)."""
    if kind == "hf":
        return module.text_projection(module.text_model(input_ids=tokens).pooler_output)
    return module.encode_text(tokens)


class TorchClipModel(ClipModel):
    """A CLIP model run by PyTorch. ``kind`` is "open_clip" or "hf"; ``torch_module`` the model.

    ``image_features``/``text_features`` take torch tensors and keep gradients (for repair); the
    ``encode_*`` methods run under ``torch.inference_mode`` and return NumPy.
    """

    runtime = "torch"

    def __init__(
        self,
        module: Any,
        *,
        kind: str,
        tokenizer: Any,
        tokenizer_kind: str,
        tokenizer_name: str,
        arch: str | None,
        model_cfg: dict[str, Any] | None,
        preprocess_cfg: dict[str, Any] | None,
        source: Path | None,
        spec: str,
        device: str,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        embed_dim: int,
        context_length: int,
        card: dict[str, Any] | None,
    ) -> None:
        module.eval()
        module.to(device)
        self.torch_module = module
        self.kind = kind
        self.arch = arch
        self.model_cfg = model_cfg
        self.preprocess_cfg = preprocess_cfg
        self.source = source
        self.tokenizer = tokenizer
        self.tokenizer_kind = tokenizer_kind
        self.tokenizer_name = tokenizer_name
        super().__init__(
            spec=spec, device=device, input_size=input_size, mean=mean, std=std,
            logit_scale=0.0, embed_dim=embed_dim, context_length=context_length, card=card,
        )

    @property
    def logit_scale(self) -> float:
        return float(self.torch_module.logit_scale.detach().float().exp().cpu())

    def image_features(self, pixels: Any) -> Any:
        return image_features(self.kind, self.torch_module, pixels)

    def text_features(self, tokens: Any) -> Any:
        return text_features(self.kind, self.torch_module, tokens)

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        return tokenize_texts(self.tokenizer, self.tokenizer_kind, list(texts), self.context_length)

    def _run_image(self, pixels: np.ndarray) -> np.ndarray:
        torch = require("torch")
        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(self.device)
            return self.image_features(x).float().cpu().numpy()

    def _run_text(self, tokens: np.ndarray) -> np.ndarray:
        torch = require("torch")
        with torch.inference_mode():
            x = torch.from_numpy(tokens).to(self.device)
            return self.text_features(x).float().cpu().numpy()


# --- open_clip -----------------------------------------------------------------------------------


class _DropRandomInitNotice(logging.Filter):
    """open_clip announces 'initialized randomly' on the root logger; we load weights next."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")


def _create_open_clip(name: str, where: str) -> Any:
    """An open_clip model with random weights (nothing downloaded) for ``name``."""
    oc = open_clip_module()
    notice = _DropRandomInitNotice()
    root = logging.getLogger()
    root.addFilter(notice)
    try:
        return oc.create_model(name, pretrained=None, load_weights=False, pretrained_hf=False,
                               device="cpu")
    except RuntimeError as exc:
        if "not found" in str(exc) and not name.startswith("local-dir:"):
            known = oc.list_models()
            raise ModelLoadError(
                f"{where}: unknown open_clip architecture {name!r} ({len(known)} known, e.g. "
                f"{', '.join(known[:6])}, {TOY_ARCH}; see open_clip.list_models())"
            ) from None
        raise ModelLoadError(f"{where}: cannot build open_clip model {name!r}: {exc}") from None
    except Exception as exc:  # open_clip raises many types (and asserts) for bad configs
        raise ModelLoadError(f"{where}: cannot build open_clip model {name!r}: {exc}") from None
    finally:
        root.removeFilter(notice)


def _adapt_open_clip_state_dict(module: Any, sd: dict[str, Any]) -> dict[str, Any]:
    """open_clip's own key conversions (legacy text layout, scalar logit_scale), never resizing."""
    try:
        from open_clip.convert import convert_state_dict

        sd = convert_state_dict(module, sd)
    except ImportError:
        pass
    if "positional_embedding" in sd and not hasattr(module, "positional_embedding"):
        from open_clip.model import convert_to_custom_text_state_dict

        sd = convert_to_custom_text_state_dict(sd)
    for key in ("logit_scale", "logit_bias"):
        param = getattr(module, key, None)
        if key in sd and param is not None and sd[key].numel() == param.numel():
            sd[key] = sd[key].reshape(param.shape)
    sd.pop("text.transformer.embeddings.position_ids", None)
    return sd


def check_state_dict(expected: dict[str, Any], sd: dict[str, Any], path: Path, arch: str) -> None:
    """Raise ModelLoadError unless ``sd`` has exactly the ``expected`` keys and shapes, all finite."""
    torch = require("torch")
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:4])})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:3])})")
    if problems:
        raise ModelLoadError(
            f"{path}: does not match architecture {arch!r}: {'; '.join(problems)}. Is it a "
            "checkpoint of this architecture?"
        )
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelLoadError(f"{path}: NaN/Inf values in {len(bad)} tensors (e.g. {bad[:3]})")


def _open_clip_model(
    module: Any, *, arch: str, model_cfg: dict[str, Any], tokenizer_source: str, spec: str,
    device: str, card: dict[str, Any] | None, source: Path,
) -> TorchClipModel:
    oc = open_clip_module()
    pp = dict(oc.get_model_preprocess_cfg(module))
    size: Any = pp.get("size", getattr(module.visual, "image_size", None))
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise ModelLoadError(f"{spec}: non-square input size {size} is not supported")
        size = size[0]
    context_length = int(getattr(module, "context_length", model_cfg["text_cfg"].get("context_length", 77)))
    try:
        tokenizer = oc.get_tokenizer(tokenizer_source, context_length=context_length)
    except Exception as exc:  # e.g. a Hugging Face tokenizer that is neither cached nor reachable
        raise ModelLoadError(f"{spec}: cannot load the tokenizer of {arch!r} ({exc})") from None
    embed_dim = int(model_cfg["embed_dim"])
    return TorchClipModel(
        module, kind="open_clip", tokenizer=tokenizer, tokenizer_kind="open_clip",
        tokenizer_name=arch, arch=arch, model_cfg=model_cfg, preprocess_cfg=pp, source=source,
        spec=spec, device=device, input_size=int(size), mean=pp.get("mean", OPENAI_MEAN),
        std=pp.get("std", OPENAI_STD), embed_dim=embed_dim, context_length=context_length,
        card=card,
    )


def load_open_clip_checkpoint(
    arch: str, path: str | Path, *, spec: str, device: str = "auto"
) -> TorchClipModel:
    """``open_clip:ARCH:PATH``: a local checkpoint (.pt/.bin/.pth/.safetensors) of an open_clip
    architecture, loaded without running code and checked key by key."""
    path = Path(path)
    dev = resolve_torch_device(device)
    if not path.is_file():
        raise ModelLoadError(f"{path}: checkpoint file not found")
    sd = unwrap_state_dict(load_tensor_file(path), path)
    module = _create_open_clip(arch, spec)
    sd = _adapt_open_clip_state_dict(module, sd)
    check_state_dict(module.state_dict(), sd, path, arch)
    module.load_state_dict(sd, strict=True)
    model_cfg = open_clip_module().get_model_config(arch)
    return _open_clip_model(
        module, arch=arch, model_cfg=model_cfg, tokenizer_source=arch, spec=spec, device=dev,
        card=normalize_card(None, architecture=arch), source=path,
    )


def read_model_folder_card(folder: Path, arch: str | None) -> dict[str, Any]:
    card_path = folder / "card.json"
    card = read_json(card_path, "model card") if card_path.is_file() else None
    return normalize_card(card, architecture=arch)


def folder_arch(cfg: dict[str, Any]) -> str | None:
    meta = cfg.get("clipguard")
    return meta.get("arch") if isinstance(meta, dict) else None


def _expand_sparse_rows(sd: dict[str, Any], expected: dict[str, Any], path: Path) -> dict[str, Any]:
    """Tables stored as (row indices, rows) by ``save_model_dir(sparse_rows=True)``, made dense
    again; indices are checked (a hostile file cannot write outside the table)."""
    from .export import SPARSE_ROWS, SPARSE_VALUES

    torch = require("torch")
    out = {k: v for k, v in sd.items() if not k.endswith((SPARSE_ROWS, SPARSE_VALUES))}
    for k in sd:
        if not k.endswith(SPARSE_ROWS):
            continue
        name = k[: -len(SPARSE_ROWS)]
        rows, values = sd[k], sd.get(name + SPARSE_VALUES)
        if name not in expected or values is None or expected[name].dim() != 2:
            raise ModelLoadError(f"{path}: sparse table {name!r} is not a 2-D table of this model, or has no values")
        n, d = expected[name].shape
        if (rows.dtype != torch.int64 or rows.dim() != 1 or tuple(values.shape) != (len(rows), d)
                or (len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= n))
                or len(torch.unique(rows)) != len(rows)):
            raise ModelLoadError(f"{path}: sparse table {name!r}: row indices must be unique int64 in [0, {n}) "
                                 f"with one {d}-wide row each")
        dense = torch.zeros(n, d, dtype=values.dtype)
        dense[rows] = values
        out[name] = dense
    return out


def load_model_folder_torch(folder: str | Path, *, spec: str, device: str = "auto") -> TorchClipModel:
    """A clipguard model folder (``open_clip_config.json`` + ``open_clip_model.safetensors``)."""
    folder = Path(folder)
    dev = resolve_torch_device(device)
    cfg_path = folder / MODEL_CONFIG
    cfg = read_json(cfg_path, "open_clip config")
    model_cfg = cfg.get("model_cfg")
    if not isinstance(model_cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(model_cfg):
        raise ModelLoadError(
            f"{cfg_path}: needs 'model_cfg' with embed_dim, vision_cfg and text_cfg (open_clip's "
            "local-dir format)"
        )
    weights = folder / MODEL_WEIGHTS
    if not weights.is_file():
        raise ModelLoadError(f"{weights}: weights file not found in model folder")
    arch = folder_arch(cfg) or "custom"
    sd = unwrap_state_dict(load_tensor_file(weights), weights)
    module = _create_open_clip(f"local-dir:{folder}", str(cfg_path))
    sd = _expand_sparse_rows(sd, module.state_dict(), weights)
    sd = _adapt_open_clip_state_dict(module, sd)
    check_state_dict(module.state_dict(), sd, weights, arch)
    module.load_state_dict(sd, strict=True)
    return _open_clip_model(
        module, arch=arch, model_cfg=model_cfg, tokenizer_source=f"local-dir:{folder}",
        spec=spec, device=dev, card=read_model_folder_card(folder, arch), source=folder,
    )


# --- Hugging Face ----------------------------------------------------------------------------------

_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "pytorch_model.bin.index.json")


def _hf_weight_files(folder: Path) -> list[Path]:
    for name in _HF_WEIGHTS:
        p = folder / name
        if not p.is_file():
            continue
        if not name.endswith(".index.json"):
            return [p]
        index = read_json(p, "weights index")
        wmap = index.get("weight_map")
        if not isinstance(wmap, dict) or not wmap:
            raise ModelLoadError(f"{p}: no 'weight_map' in weights index")
        files = []
        for shard in sorted(set(wmap.values())):
            if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard in ("", ".", ".."):
                raise ModelLoadError(f"{p}: shard name {shard!r} is not a file in the folder")
            files.append(folder / shard)
        return files
    raise ModelLoadError(
        f"{folder}: no weights found (expected one of {', '.join(_HF_WEIGHTS)})"
    )


def load_hf_folder(folder: str | Path, *, spec: str, device: str = "auto") -> TorchClipModel:
    """``hf:DIR``: a Hugging Face ``CLIPModel`` folder (config.json + safetensors or .bin
    weights + tokenizer files), weights read without running code."""
    folder = Path(folder)
    tf = require("transformers", extra="hf", purpose="hf: model folders")
    torch = require("torch")
    dev = resolve_torch_device(device)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: Hugging Face model folder not found")
    cfg_path = folder / "config.json"
    raw = read_json(cfg_path, "Hugging Face config")
    if raw.get("model_type") != "clip":
        raise ModelLoadError(
            f"{cfg_path}: model_type is {raw.get('model_type')!r}; hf: loads CLIPModel folders "
            "(model_type 'clip')"
        )
    try:
        config = tf.CLIPConfig.from_dict(raw)
        config._attn_implementation = "eager"  # plain ops: exportable, same numbers everywhere
        module = tf.CLIPModel(config)
    except Exception as exc:
        raise ModelLoadError(f"{cfg_path}: cannot build a CLIPModel from this config ({exc})") from None
    files = _hf_weight_files(folder)
    sd: dict[str, Any] = {}
    for f in files:
        sd.update(unwrap_state_dict(load_tensor_file(f), f))
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    expected = {k: v for k, v in module.state_dict().items() if not k.endswith("position_ids")}
    check_state_dict(expected, sd, files[0] if len(files) == 1 else folder, "CLIPModel")
    module.load_state_dict(sd, strict=False)
    module = module.to(torch.float32)

    pp_path = folder / "preprocessor_config.json"
    pp = read_json(pp_path, "preprocessor config") if pp_path.is_file() else {}
    mean = pp.get("image_mean", OPENAI_MEAN)
    std = pp.get("image_std", OPENAI_STD)
    size = int(config.vision_config.image_size)
    context_length = int(config.text_config.max_position_embeddings)

    if any((folder / n).is_file() for n in ("tokenizer.json", "vocab.json")):
        try:
            tokenizer = tf.AutoTokenizer.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False
            )
        except Exception as exc:
            raise ModelLoadError(f"{folder}: cannot load its tokenizer ({exc})") from None
        tok_kind, tok_name = "hf", "hf"
    elif int(config.text_config.vocab_size) == 49408:
        # No tokenizer files: CLIP's own BPE vocabulary (open_clip's SimpleTokenizer) fits.
        tokenizer = open_clip_module().get_tokenizer("ViT-B-32", context_length=context_length)
        tok_kind, tok_name = "open_clip", "ViT-B-32"
    else:
        raise ModelLoadError(
            f"{folder}: no tokenizer files (tokenizer.json or vocab.json + merges.txt) and a "
            f"non-CLIP vocabulary size {config.text_config.vocab_size}"
        )
    return TorchClipModel(
        module, kind="hf", tokenizer=tokenizer, tokenizer_kind=tok_kind, tokenizer_name=tok_name,
        arch="hf-clip", model_cfg=None, preprocess_cfg=None, source=folder, spec=spec,
        device=dev, input_size=size, mean=mean, std=std,
        embed_dim=int(config.projection_dim), context_length=context_length,
        card=normalize_card(None, architecture="hf-clip"),
    )
