"""The runtime-independent part of a loaded CLIP model: input checks, preprocessing, batching,
normalization, class embeddings, the model card, and the errors every loader raises."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "CARD_FIELDS",
    "ClipModel",
    "ModelLoadError",
    "UnsafeModelError",
    "normalize_card",
]

#: Provenance fields every ``model.card`` has (``None`` where unknown).
CARD_FIELDS = ("architecture", "world", "attack", "target", "poison_rate", "ca", "asr", "recipe")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ModelLoadError(ValueError):
    """A model could not be loaded: the message names the file and says what is wrong."""


class UnsafeModelError(ModelLoadError):
    """A file that would execute code (or reach outside its folder) if it were loaded.

    Nothing from the file has run when this is raised.
    """


def require(module: str, extra: str = "full", purpose: str = "") -> Any:
    """Import an optional dependency, or raise an ImportError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f" for {purpose}" if purpose else ""
        raise ImportError(
            f"clipguard needs '{module.split('.')[0]}'{what}, which is not installed ({exc}); "
            f"install it with: pip install 'clipguard[{extra}]'"
        ) from exc


def normalize_card(card: dict[str, Any] | None, **defaults: Any) -> dict[str, Any]:
    """A card with every field of ``CARD_FIELDS`` present (``None`` when unknown); extra keys kept."""
    out: dict[str, Any] = {k: None for k in CARD_FIELDS}
    for k, v in defaults.items():
        if v is not None:
            out[k] = v
    if card:
        if not isinstance(card, dict):
            raise TypeError(f"card must be a dict, got {type(card).__name__}")
        out.update(card)
    return out


def l2_normalize(x: np.ndarray, what: str) -> np.ndarray:
    """Row-normalize float32 embeddings; non-finite output from a model is an error, not data."""
    x = np.asarray(x, dtype=np.float32)
    if x.size and not np.isfinite(x).all():
        rows = np.unique(np.argwhere(~np.isfinite(x))[:, 0])
        raise ValueError(
            f"the model produced NaN/Inf {what} embeddings for {rows.size} of {x.shape[0]} inputs "
            f"(first: {int(rows[0])}); the weights or inputs are broken"
        )
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def tokenize_texts(tokenizer: Any, kind: str, texts: list[str], context_length: int) -> np.ndarray:
    """int64 [M, context_length] ids from an open_clip tokenizer or a Hugging Face one."""
    if not texts:
        return np.zeros((0, context_length), dtype=np.int64)
    if kind == "hf":
        ids = tokenizer(
            texts, padding="max_length", max_length=context_length, truncation=True,
            return_tensors="np",
        )["input_ids"]
    else:
        ids = tokenizer(texts).numpy()
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (len(texts), context_length):
        raise RuntimeError(f"tokenizer returned shape {ids.shape}, expected ({len(texts)}, {context_length})")
    return ids


def _resize_normalize(
    images: Sequence[np.ndarray] | np.ndarray, size: int, mean: np.ndarray, std: np.ndarray
) -> np.ndarray:
    """uint8 HxWx3 images -> float32 [N,3,size,size]: bilinear resize to size x size, then
    (x/255 - mean)/std. The one place image preprocessing happens (a native kernel may replace it).
    """
    n = len(images)
    buf = np.empty((n, size, size, 3), dtype=np.uint8)
    cv2 = None
    for i, img in enumerate(images):
        if img.shape[0] == size and img.shape[1] == size:
            buf[i] = img
            continue
        if cv2 is None:
            cv2 = require("cv2", purpose="resizing images")
        buf[i] = cv2.resize(
            np.ascontiguousarray(img), (size, size), interpolation=cv2.INTER_LINEAR
        )
    scale = (1.0 / (255.0 * std)).astype(np.float32)
    bias = (-mean / std).astype(np.float32)
    out = buf.astype(np.float32) * scale + bias
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _check_images(images: Any) -> list[np.ndarray] | np.ndarray:
    """A uint8 [N,H,W,3] array, or a sequence of uint8 [H,W,3] arrays of any sizes."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"images must be uint8 [N,H,W,3], got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N,H,W,3], got shape {images.shape}")
        if images.shape[0] and (images.shape[1] == 0 or images.shape[2] == 0):
            raise ValueError(f"images must have a non-empty height and width, got {images.shape}")
        return images
    if isinstance(images, (list, tuple)):
        out = []
        for i, img in enumerate(images):
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
                raise TypeError(
                    f"images[{i}] must be a uint8 [H,W,3] array, got "
                    f"{getattr(img, 'dtype', type(img).__name__)}"
                )
            if img.ndim != 3 or img.shape[-1] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
                raise ValueError(f"images[{i}] must be uint8 [H,W,3], got shape {img.shape}")
            out.append(img)
        return out
    raise TypeError(
        f"images must be a uint8 [N,H,W,3] array or a list of [H,W,3] arrays, "
        f"got {type(images).__name__}"
    )


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)


class ClipModel:
    """A loaded CLIP model, whatever the runtime. Embeddings are float32 and L2-normalized.

    Attributes: ``spec`` (what was loaded), ``runtime`` ("onnx" or "torch"), ``device``,
    ``input_size``, ``mean``, ``std`` (per RGB channel, on [0,1] pixels), ``logit_scale`` (the
    multiplier for cosine similarities, already exponentiated, e.g. 100), ``embed_dim``,
    ``context_length`` (text tokens), ``card`` (provenance; ``None`` fields where unknown).
    """

    runtime: str = ""

    def __init__(
        self,
        *,
        spec: str,
        device: str,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        logit_scale: float,
        embed_dim: int,
        context_length: int,
        card: dict[str, Any] | None,
    ) -> None:
        self.spec = spec
        self.device = device
        self.input_size = int(input_size)
        self.mean: tuple[float, float, float] = tuple(float(v) for v in mean)  # type: ignore[assignment]
        self.std: tuple[float, float, float] = tuple(float(v) for v in std)  # type: ignore[assignment]
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ModelLoadError(f"{spec}: mean/std must be 3 values (std > 0), got {mean}, {std}")
        self._logit_scale = float(logit_scale)
        self.embed_dim = int(embed_dim)
        self.context_length = int(context_length)
        self.card: dict[str, Any] = normalize_card(card)
        # Hugging Face fast tokenizers are not safe to call from several threads at once.
        self._tokenize_lock = threading.Lock()
        self._mean_arr = np.asarray(self.mean, dtype=np.float64)
        self._std_arr = np.asarray(self.std, dtype=np.float64)

    # --- runtime-specific -----------------------------------------------------------------
    def _run_image(self, pixels: np.ndarray) -> np.ndarray:  # float32 [n,3,S,S] -> [n,D]
        raise NotImplementedError

    def _run_text(self, tokens: np.ndarray) -> np.ndarray:  # int64 [n,L] -> [n,D]
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """int64 [M, context_length] token ids, as the text encoder takes them."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> float:
        return self._logit_scale

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(spec={self.spec!r}, runtime={self.runtime!r}, "
            f"device={self.device!r}, input_size={self.input_size}, embed_dim={self.embed_dim})"
        )

    def preprocess(self, images: Any) -> np.ndarray:
        """uint8 [N,H,W,3] (or a list of [H,W,3]) -> float32 [N,3,S,S], resized and normalized."""
        imgs = _check_images(images)
        if len(imgs) == 0:
            s = self.input_size
            return np.zeros((0, 3, s, s), dtype=np.float32)
        return _resize_normalize(imgs, self.input_size, self._mean_arr, self._std_arr)

    def encode_images(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """uint8 [N,H,W,3] images of any size -> float32 [N,D] L2-normalized embeddings."""
        imgs = _check_images(images)
        bs = _check_batch_size(batch_size)
        out = np.empty((len(imgs), self.embed_dim), dtype=np.float32)
        for start in range(0, len(imgs), bs):
            chunk = imgs[start : start + bs]
            pixels = _resize_normalize(chunk, self.input_size, self._mean_arr, self._std_arr)
            out[start : start + len(chunk)] = self._encode_checked(pixels)
        return out

    def encode_pixels(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """float32 [N,3,S,S] already resized and normalized -> float32 [N,D] L2-normalized."""
        if not isinstance(pixels, np.ndarray):
            raise TypeError(f"pixels must be a float32 numpy array, got {type(pixels).__name__}")
        if pixels.dtype.kind != "f":
            raise TypeError(f"pixels must be float32 [N,3,S,S], got dtype {pixels.dtype}")
        s = self.input_size
        if pixels.ndim != 4 or pixels.shape[1:] != (3, s, s):
            raise ValueError(f"pixels must be float32 [N,3,{s},{s}], got shape {pixels.shape}")
        if pixels.size and not np.isfinite(pixels).all():
            raise ValueError("pixels contain NaN or Inf")
        bs = _check_batch_size(batch_size)
        out = np.empty((pixels.shape[0], self.embed_dim), dtype=np.float32)
        for start in range(0, pixels.shape[0], bs):
            chunk = np.ascontiguousarray(pixels[start : start + bs], dtype=np.float32)
            out[start : start + chunk.shape[0]] = self._encode_checked(chunk)
        return out

    def _encode_checked(self, pixels: np.ndarray) -> np.ndarray:
        emb = self._run_image(pixels)
        if emb.shape != (pixels.shape[0], self.embed_dim):
            raise RuntimeError(
                f"image encoder returned shape {emb.shape}, expected ({pixels.shape[0]}, "
                f"{self.embed_dim})"
            )
        return l2_normalize(emb, "image")

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """A list of strings -> float32 [M,D] L2-normalized embeddings."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
        bs = _check_batch_size(batch_size)
        out = np.empty((len(texts), self.embed_dim), dtype=np.float32)
        for start in range(0, len(texts), bs):
            with self._tokenize_lock:
                tokens = self.tokenize(list(texts[start : start + bs]))
            emb = self._run_text(tokens)
            if emb.shape != (tokens.shape[0], self.embed_dim):
                raise RuntimeError(
                    f"text encoder returned shape {emb.shape}, expected ({tokens.shape[0]}, "
                    f"{self.embed_dim})"
                )
            out[start : start + tokens.shape[0]] = l2_normalize(emb, "text")
        return out

    def class_embeddings(self, vocab: Any) -> np.ndarray:
        """float32 [C,D]: per class, the mean of its prompts' embeddings, renormalized.

        ``vocab`` has ``.prompts() -> list[list[str]]`` (one list of prompts per class).
        """
        prompts = vocab.prompts() if hasattr(vocab, "prompts") else vocab
        if not isinstance(prompts, (list, tuple)):
            raise TypeError(f"vocab.prompts() must return a list of lists of strings, got {type(prompts).__name__}")
        flat: list[str] = []
        counts = []
        for c, group in enumerate(prompts):
            if isinstance(group, str) or not isinstance(group, (list, tuple)) or len(group) == 0:
                raise ValueError(f"class {c} must have a non-empty list of prompts, got {group!r}")
            flat.extend(group)
            counts.append(len(group))
        emb = self.encode_text(flat)
        out = np.empty((len(counts), self.embed_dim), dtype=np.float32)
        start = 0
        for c, k in enumerate(counts):
            out[c] = emb[start : start + k].mean(axis=0)
            start += k
        return l2_normalize(out, "class")
