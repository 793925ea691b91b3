"""clipguard.models: every spec kind, both runtimes, ONNX export parity, and untrusted files.

Models are built here with random weights (a ``clipguard-toy`` open_clip model and a tiny Hugging
Face CLIP); nothing is downloaded and nothing is trained.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
safetensors_torch = pytest.importorskip("safetensors.torch")

import clipguard.models as cm  # noqa: E402
from clipguard.models import ModelLoadError, UnsafeModelError, loading, onnx_runtime, safety  # noqa: E402  # noqa: E402

TOL = 1e-4
CARD = {"world": "shapes", "attack": "badnet:target=star,size=6", "target": "star",
        "poison_rate": 0.01, "ca": 0.5, "asr": 0.9, "recipe": {"steps": 0}}
TEXTS = ["a photo of a red star", "two blue circles on grass", "a " * 60 + "long caption", ""]


def _images(n: int, h: int = 48, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _assert_embeddings(x: np.ndarray, n: int, d: int) -> None:
    assert x.dtype == np.float32
    assert x.shape == (n, d)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    """ONNX exports made on demand go to a temporary cache, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPGUARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def toy_module():
    oc = cm.open_clip_module()
    torch.manual_seed(0)
    return oc.create_model(cm.TOY_ARCH, pretrained=None, pretrained_hf=False).eval()


@pytest.fixture(scope="module")
def model_dir(toy_module, tmp_path_factory):
    return cm.save_model_dir(toy_module, tmp_path_factory.mktemp("m") / "toy", CARD,
                             arch=cm.TOY_ARCH)


@pytest.fixture(scope="module")
def ckpts(toy_module, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    sd = {k: v.clone() for k, v in toy_module.state_dict().items()}
    torch.save(sd, d / "toy.pt")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, d / "ddp.pt")
    safetensors_torch.save_file(sd, str(d / "toy.safetensors"))
    return d


def _write_clip_bpe_tokenizer(folder: Path) -> None:
    """CLIP's BPE vocabulary (open_clip bundles it) as Hugging Face vocab.json + merges.txt."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer"}))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    tf = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf")
    cfg = tf.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=24),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(1)
    model = tf.CLIPModel(cfg).eval()
    cfg.to_json_file(str(d / "config.json"))
    safetensors_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                str(d / "model.safetensors"))
    (d / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    _write_clip_bpe_tokenizer(d)
    return d


# --- import cost -----------------------------------------------------------------------------------


def test_import_is_cheap(tmp_path):
    code = ("import sys, clipguard.models; heavy = [m for m in ('torch', 'onnxruntime', 'open_clip', "
            "'cv2', 'transformers', 'onnx') if m in sys.modules]; print(heavy); assert not heavy")
    # cwd outside the checkout: import the installed package, not the source folder
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


# --- every spec kind ----------------------------------------------------------------------------


def _toy_spec(model_dir, monkeypatch):
    toy = model_dir.parent / "toyroot"
    if not (toy / "badnet").exists():
        toy.mkdir(exist_ok=True)
        shutil.copytree(model_dir, toy / "badnet")
    monkeypatch.setattr(loading, "TOY_DIR", toy)
    return "toy:badnet"


@pytest.mark.parametrize(
    "kind,runtime",
    [("toy", "onnx"), ("toy", "torch"), ("dir", "onnx"), ("dir", "torch"), ("path", "onnx"),
     ("open_clip_pt", "torch"), ("open_clip_pt", "onnx"), ("open_clip_st", "torch"),
     ("open_clip_ddp", "torch"), ("hf", "torch"), ("hf", "onnx"), ("onnx", "onnx")],
)
def test_every_spec_kind_loads(kind, runtime, model_dir, ckpts, hf_dir, monkeypatch):
    spec = {
        "dir": f"dir:{model_dir}",
        "path": str(model_dir),
        "open_clip_pt": f"open_clip:{cm.TOY_ARCH}:{ckpts / 'toy.pt'}",
        "open_clip_st": f"open_clip:{cm.TOY_ARCH}:{ckpts / 'toy.safetensors'}",
        "open_clip_ddp": f"open_clip:{cm.TOY_ARCH}:{ckpts / 'ddp.pt'}",
        "hf": f"hf:{hf_dir}",
        "onnx": f"onnx:{model_dir / 'onnx'}",
    }.get(kind) or _toy_spec(model_dir, monkeypatch)
    m = cm.load_model(spec, runtime=runtime, device="cpu")
    assert isinstance(m, cm.ClipModel)
    assert m.runtime == runtime and m.device == "cpu"
    size, dim = (32, 16) if kind == "hf" else (48, 64)
    assert (m.input_size, m.embed_dim) == (size, dim)
    assert m.logit_scale > 1.0
    assert set(cm.CARD_FIELDS) <= set(m.card)
    if kind in ("toy", "dir", "path", "onnx"):
        assert m.card["target"] == "star" and m.card["architecture"] == cm.TOY_ARCH
    if kind == "hf":
        assert m.mean == (0.5, 0.5, 0.5) and m.std == (0.25, 0.25, 0.25)
    else:
        assert m.card["architecture"] == cm.TOY_ARCH
    _assert_embeddings(m.encode_images(_images(3, 40, 56)), 3, dim)
    _assert_embeddings(m.encode_pixels(np.zeros((2, 3, size, size), np.float32)), 2, dim)
    t = m.encode_text(TEXTS)
    _assert_embeddings(t, len(TEXTS), dim)
    assert np.abs(t[0] - t[1]).max() > 1e-3  # different texts, different embeddings


# --- parity ----------------------------------------------------------------------------------------


def test_torch_and_onnx_agree_on_a_model_folder(model_dir):
    mt = cm.load_model(f"dir:{model_dir}", runtime="torch", device="cpu")
    mo = cm.load_model(f"dir:{model_dir}", runtime="onnx", device="cpu")
    imgs = [_images(5, 48, 48, 1), _images(4, 97, 33, 2), _images(1, 8, 8, 3)]
    for im in imgs:
        a, b = mt.encode_images(im, batch_size=3), mo.encode_images(im, batch_size=2)
        assert np.abs(a - b).max() <= TOL
    a, b = mt.encode_text(TEXTS), mo.encode_text(TEXTS)
    assert np.abs(a - b).max() <= TOL
    np.testing.assert_array_equal(mt.tokenize(TEXTS), mo.tokenize(TEXTS))
    assert mt.logit_scale == pytest.approx(mo.logit_scale, rel=1e-6)
    meta = json.loads((model_dir / "onnx" / "meta.json").read_text())
    assert meta["parity_max_abs_err"] <= TOL


def test_checkpoint_loads_the_exact_weights(toy_module, ckpts):
    """Torch runtime on a checkpoint reproduces the original module, and the ONNX export of an
    fp32 model (no float16 storage) matches it within 1e-4."""
    pix = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    tok = cm.open_clip_module().get_tokenizer(cm.TOY_ARCH)(TEXTS)
    with torch.inference_mode():
        ref_i = torch.nn.functional.normalize(toy_module.encode_image(pix), dim=-1).numpy()
        ref_t = torch.nn.functional.normalize(toy_module.encode_text(tok), dim=-1).numpy()
    for name in ("toy.pt", "toy.safetensors"):
        m = cm.load_model(f"open_clip:{cm.TOY_ARCH}:{ckpts / name}", runtime="torch", device="cpu")
        np.testing.assert_allclose(m.encode_pixels(pix.numpy()), ref_i, atol=1e-6)
        np.testing.assert_allclose(m.encode_text(TEXTS), ref_t, atol=1e-6)
    mo = cm.load_model(f"open_clip:{cm.TOY_ARCH}:{ckpts / 'toy.pt'}", runtime="onnx", device="cpu")
    assert np.abs(mo.encode_pixels(pix.numpy()) - ref_i).max() <= TOL
    assert np.abs(mo.encode_text(TEXTS) - ref_t).max() <= TOL


def test_hf_torch_and_onnx_agree(hf_dir):
    mt = cm.load_model(f"hf:{hf_dir}", runtime="torch", device="cpu")
    mo = cm.load_model(f"hf:{hf_dir}", runtime="onnx", device="cpu")
    im = _images(4, 50, 40, 7)
    assert np.abs(mt.encode_images(im) - mo.encode_images(im)).max() <= TOL
    assert np.abs(mt.encode_text(TEXTS) - mo.encode_text(TEXTS)).max() <= TOL
    # CLIP's BPE through Hugging Face equals open_clip's tokenizer up to the padding id.
    tok = mt.tokenize(TEXTS[:2])
    ref = cm.open_clip_module().get_tokenizer("ViT-B-32", context_length=24)(TEXTS[:2]).numpy()
    n = int((ref[0] != 0).sum())
    np.testing.assert_array_equal(tok[0, :n], ref[0, :n])


def test_export_onnx_has_a_dynamic_batch_and_reloads(model_dir, tmp_path):
    mt = cm.load_model(f"dir:{model_dir}", runtime="torch", device="cpu")
    out = cm.export_onnx(mt, tmp_path / "exp")
    assert {p.name for p in out.iterdir()} >= {"image.onnx", "text.onnx", "meta.json"}
    meta = json.loads((out / "meta.json").read_text())
    for k in ("input_size", "mean", "std", "logit_scale", "embed_dim", "tokenizer", "context_length", "card"):
        assert k in meta
    assert meta["tokenizer"] == cm.TOY_ARCH and meta["context_length"] == 32
    graph = onnx.load(str(out / "image.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    mo = cm.load_model(f"onnx:{out}", device="cpu")
    for n in (1, 5):
        pix = np.random.default_rng(n).standard_normal((n, 3, 48, 48)).astype(np.float32)
        assert np.abs(mo.encode_pixels(pix) - mt.encode_pixels(pix)).max() <= TOL
    with pytest.raises(TypeError, match="torch-runtime"):
        cm.export_onnx(mo, tmp_path / "again")


def test_model_folder_format_and_size(model_dir, toy_module):
    cfg = json.loads((model_dir / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["embed_dim"] == 64 and cfg["preprocess_cfg"]["size"] == 48
    assert cfg["clipguard"]["arch"] == cm.TOY_ARCH
    card = json.loads((model_dir / "card.json").read_text())
    assert card["attack"] == CARD["attack"] and card["architecture"] == cm.TOY_ARCH
    with safetensors_torch.safe_open(str(model_dir / "open_clip_model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes <= {"F16", "I64"} and "F16" in dtypes  # I64: BatchNorm step counters
    total = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    assert total < 30e6, total  # float16 weights and ONNX copy; float32 would be about twice that
    # open_clip reads the folder with its own local-dir loader too.
    oc = cm.open_clip_module()
    m = oc.create_model(f"local-dir:{model_dir}")
    w = m.state_dict()["token_embedding.weight"]
    assert torch.equal(w, toy_module.state_dict()["token_embedding.weight"].half().float())


def test_onnx_cache_is_reused(ckpts):
    spec = f"open_clip:{cm.TOY_ARCH}:{ckpts / 'toy.pt'}"
    cm.load_model(spec, device="cpu")
    entries = [p for p in (cm.cache_dir() / "onnx").iterdir() if not p.name.startswith(".")]
    stamp = {p: (p / "image.onnx").stat().st_mtime_ns for p in entries}
    cm.load_model(spec, device="cpu")
    after = [p for p in (cm.cache_dir() / "onnx").iterdir() if not p.name.startswith(".")]
    assert sorted(after) == sorted(entries)
    assert {p: (p / "image.onnx").stat().st_mtime_ns for p in after} == stamp


def test_class_embeddings(model_dir):
    m = cm.load_model(f"dir:{model_dir}", device="cpu")

    class Vocab:
        def prompts(self):
            return [["a star", "a photo of a star"], ["a circle"], ["a red square", "a square", "sq"]]

    c = m.class_embeddings(Vocab())
    _assert_embeddings(c, 3, 64)
    e = m.encode_text(["a star", "a photo of a star"]).mean(axis=0)
    np.testing.assert_allclose(c[0], e / np.linalg.norm(e), atol=1e-6)
    np.testing.assert_allclose(c[1], m.encode_text(["a circle"])[0], atol=1e-6)


def test_input_validation(model_dir):
    m = cm.load_model(f"dir:{model_dir}", device="cpu")
    with pytest.raises(TypeError, match="uint8"):
        m.encode_images(np.zeros((1, 48, 48, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[N,H,W,3\]"):
        m.encode_images(np.zeros((48, 48, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[N,3,48,48\]"):
        m.encode_pixels(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        m.encode_pixels(np.full((1, 3, 48, 48), np.nan, np.float32))
    with pytest.raises(TypeError, match="list of strings"):
        m.encode_text("a star")
    with pytest.raises(ValueError, match="batch_size"):
        m.encode_images(_images(1), batch_size=0)
    assert m.encode_images(np.zeros((0, 9, 9, 3), np.uint8)).shape == (0, 64)
    assert m.encode_text([]).shape == (0, 64)
    # a list of differently sized images is accepted and equals per-image calls
    ims = [_images(1, 30, 70, 1)[0], _images(1, 48, 48, 2)[0]]
    both = m.encode_images(ims)
    np.testing.assert_allclose(both[0], m.encode_images(ims[0][None])[0], atol=1e-6)


# --- untrusted files -------------------------------------------------------------------------------


class _OpenPayload:
    """Unpickling calls open(marker, 'w'): creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _ZipPayload:
    """A payload no denylist names: zipfile.ZipFile(marker, 'w') also creates the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (zipfile.ZipFile, (self.marker, "w"))


@pytest.mark.parametrize("payload", [_OpenPayload, _ZipPayload])
@pytest.mark.parametrize("container", ["torch_zip", "pickle_p2", "pickle_p4"])
def test_malicious_pickle_runs_nothing(payload, container, tmp_path):
    # The payload is live: plain unpickling creates its marker.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(payload(control))).close()
    assert control.exists()

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    if container == "torch_zip":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "x": payload(marker)}, evil)
    else:  # a bare pickle (what torch.load's legacy path reads)
        obj = {"state_dict": {"w": [0.0, 0.0]}, "x": payload(marker)}
        evil.write_bytes(pickle.dumps(obj, protocol=2 if container == "pickle_p2" else 4))
    with pytest.raises(UnsafeModelError, match="evil.pt") as ei:
        cm.load_model(f"open_clip:{cm.TOY_ARCH}:{evil}", runtime="torch", device="cpu")
    assert ("zipfile" in str(ei.value)) == (payload is _ZipPayload)
    assert not marker.exists()
    with pytest.raises(UnsafeModelError):
        cm.load_model(f"open_clip:{cm.TOY_ARCH}:{evil}", runtime="onnx", device="cpu")
    assert not marker.exists()


def test_pickle_scan_names_imports(tmp_path):
    for protocol in (2, 4):  # GLOBAL and STACK_GLOBAL
        data = pickle.dumps({"a": [_ZipPayload(tmp_path / "x")]}, protocol=protocol)
        assert "zipfile.ZipFile" in safety.pickle_imports(data)
    assert safety.pickle_imports(pickle.dumps({"a": [1, 2.0, "s"]})) == []


def test_torchscript_archive_is_refused(tmp_path):
    ts = torch.jit.script(torch.nn.Linear(2, 2))
    path = tmp_path / "scripted.pt"
    torch.jit.save(ts, str(path))
    with pytest.raises(UnsafeModelError, match="TorchScript"):
        safety.load_tensor_file(path)


@pytest.mark.parametrize("name", ["toy.pt", "toy.safetensors"])
@pytest.mark.parametrize("keep", [0.5, 0.999, 0.0])
def test_truncated_checkpoint(name, keep, ckpts, tmp_path):
    data = (ckpts / name).read_bytes()
    bad = tmp_path / name
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelLoadError, match=name) as ei:
        cm.load_model(f"open_clip:{cm.TOY_ARCH}:{bad}", runtime="torch", device="cpu")
    assert not isinstance(ei.value, UnsafeModelError)


def test_safetensors_header_that_lies_about_sizes(tmp_path):
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 1 << 42]}}).encode()
    bad = tmp_path / "liar.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="liar.safetensors") as ei:
        cm.load_model(f"open_clip:{cm.TOY_ARCH}:{bad}", runtime="torch", device="cpu")
    assert not isinstance(ei.value, UnsafeModelError)
    huge = struct.pack("<Q", 1 << 40) + b"{}"  # a header length far beyond the file
    (tmp_path / "huge.safetensors").write_bytes(huge)
    with pytest.raises(ModelLoadError, match="huge.safetensors"):
        cm.load_model(f"open_clip:{cm.TOY_ARCH}:{tmp_path / 'huge.safetensors'}", runtime="torch", device="cpu")


def test_garbage_checkpoint(tmp_path):
    bad = tmp_path / "noise.bin"
    bad.write_bytes(np.random.default_rng(0).bytes(4096).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    with pytest.raises(ModelLoadError, match="noise.bin.*not a recognised"):
        cm.load_model(f"open_clip:{cm.TOY_ARCH}:{bad}", runtime="torch", device="cpu")


def test_truncated_onnx_file(model_dir, tmp_path):
    d = tmp_path / "onnx"
    shutil.copytree(model_dir / "onnx", d)
    data = (d / "text.onnx").read_bytes()
    (d / "text.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match="text.onnx"):
        cm.load_model(f"onnx:{d}", device="cpu")


def test_corrupt_model_folder_files(model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    (d / "open_clip_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="open_clip_config.json"):
        cm.load_model(f"dir:{d}", runtime="torch", device="cpu")
    shutil.rmtree(d / "onnx")
    (d / "onnx").mkdir()
    meta = json.loads((model_dir / "onnx" / "meta.json").read_text())
    del meta["input_size"]
    (d / "onnx" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="meta.json.*input_size"):
        cm.load_model(f"onnx:{d / 'onnx'}", device="cpu")


def _other_arch_state_dict(**vision):
    oc = cm.open_clip_module()
    cfg = oc.get_model_config(cm.TOY_ARCH)
    cfg["vision_cfg"].update(vision)
    return oc.model.CLIP(**cfg).state_dict()


@pytest.mark.parametrize("vision,expect", [({"layers": [1, 1, 1, 2]}, "unexpected keys|missing keys"),
                                           ({"width": 32}, "shape mismatch")])
def test_wrong_architecture(vision, expect, tmp_path):
    path = tmp_path / "other.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in _other_arch_state_dict(**vision).items()},
                                str(path))
    with pytest.raises(ModelLoadError, match=rf"other.safetensors.*does not match architecture.*({expect})"):
        cm.load_model(f"open_clip:{cm.TOY_ARCH}:{path}", runtime="torch", device="cpu")


def test_missing_keys_and_nan_weights(toy_module, tmp_path):
    sd = {k: v.clone() for k, v in toy_module.state_dict().items()}
    del sd["ln_final.weight"]
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(ModelLoadError, match=r"partial.pt.*1 missing keys.*ln_final.weight"):
        cm.load_model(f"open_clip:{cm.TOY_ARCH}:{tmp_path / 'partial.pt'}", runtime="torch", device="cpu")
    sd = {k: v.clone() for k, v in toy_module.state_dict().items()}
    sd["text_projection"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    with pytest.raises(ModelLoadError, match=r"nan.pt.*NaN"):
        cm.load_model(f"open_clip:{cm.TOY_ARCH}:{tmp_path / 'nan.pt'}", runtime="torch", device="cpu")
    torch.save({"w": "not a tensor"}, tmp_path / "str.pt")
    with pytest.raises(ModelLoadError, match="not tensors"):
        cm.load_model(f"open_clip:{cm.TOY_ARCH}:{tmp_path / 'str.pt'}", runtime="torch", device="cpu")


def _tiny_onnx(path: Path, *, domain: str = "", external: str | None = None, dims: tuple = (1,)) -> None:
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    if external is not None:
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=list(dims))
        w.data_location = TensorProto.EXTERNAL
        entry = w.external_data.add()
        entry.key, entry.value = "location", external
    node = helper.make_node("Mul" if not domain else "EvilOp", ["x", "w"], ["y"], domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [w])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))


def test_onnx_safety_checks(model_dir, tmp_path):
    sub = tmp_path / "model"
    sub.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4)
    _tiny_onnx(sub / "ok.onnx")
    safety.check_onnx_file(sub / "ok.onnx")
    _tiny_onnx(sub / "escape.onnx", external="../secret.bin")
    with pytest.raises(UnsafeModelError, match="escape.onnx.*outside"):
        safety.check_onnx_file(sub / "escape.onnx")
    _tiny_onnx(sub / "abs.onnx", external=str(tmp_path / "secret.bin"))
    with pytest.raises(UnsafeModelError, match="abs.onnx"):
        safety.check_onnx_file(sub / "abs.onnx")
    # a link inside the folder that leads out of it
    (sub / "link.bin").symlink_to(tmp_path / "secret.bin")
    _tiny_onnx(sub / "link.onnx", external="link.bin")
    with pytest.raises(UnsafeModelError, match="link.onnx.*outside"):
        safety.check_onnx_file(sub / "link.onnx")
    # external data shorter than the tensor it claims to hold, and a giant declared initializer
    (sub / "short.bin").write_bytes(b"\0" * 2)
    _tiny_onnx(sub / "short.onnx", external="short.bin")
    with pytest.raises(ModelLoadError, match="short.onnx.*shorter"):
        safety.check_onnx_file(sub / "short.onnx")
    (sub / "w.bin").write_bytes(b"\0" * 4)
    _tiny_onnx(sub / "giant.onnx", external="w.bin", dims=(1 << 20, 1 << 20, 1 << 10))
    with pytest.raises(ModelLoadError, match="giant.onnx.*(GiB|shorter)"):
        safety.check_onnx_file(sub / "giant.onnx")
    _tiny_onnx(sub / "custom.onnx", domain="com.evil.ops")
    with pytest.raises(UnsafeModelError, match="custom.onnx.*com.evil.ops"):
        safety.check_onnx_file(sub / "custom.onnx")
    # and through load_model: a model folder whose image encoder was swapped for the custom op
    d = tmp_path / "onnxdir"
    shutil.copytree(model_dir / "onnx", d)
    shutil.copy(sub / "custom.onnx", d / "image.onnx")
    with pytest.raises(UnsafeModelError, match="image.onnx"):
        cm.load_model(f"onnx:{d}", device="cpu")


# --- specs, runtimes and devices ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec,exc,match",
    [
        ("", ValueError, "empty model spec"),
        ("foo:bar", ValueError, "unknown model spec kind 'foo'"),
        ("open_clip:", ValueError, "nothing after"),
        ("open_clip:clipguard-toy", ValueError, "open_clip:ARCH:PATH"),
        ("toy:", ValueError, "nothing after"),
        ("toy:../etc", ValueError, "invalid toy model name"),
        ("toy:no-such-model", ModelLoadError, "unknown toy model 'no-such-model'; available"),
        ("/no/such/path", ValueError, "neither a model spec nor an existing path"),
        ("dir:/no/such/folder", ModelLoadError, "/no/such/folder: folder not found"),
        ("hf:/no/such/folder", ModelLoadError, "folder not found"),
        ("open_clip:no-such-arch:{ckpt}", ModelLoadError, "unknown open_clip architecture 'no-such-arch'"),
        ("open_clip:clipguard-toy:/no/such.pt", ModelLoadError, "/no/such.pt: checkpoint file not found"),
        ("{ckpt}", ValueError, "open_clip:ARCH:"),
    ],
)
def test_bad_specs(spec, exc, match, ckpts):
    with pytest.raises(exc, match=match):
        cm.load_model(spec.format(ckpt=ckpts / "toy.pt"), runtime="torch", device="cpu")


def test_bad_runtime_and_device(model_dir):
    with pytest.raises(ValueError, match="runtime"):
        cm.load_model(f"dir:{model_dir}", runtime="tensorflow")
    with pytest.raises(ValueError, match="device"):
        cm.load_model(f"dir:{model_dir}", device="gpu")
    with pytest.raises(ValueError, match="no torch weights"):
        cm.load_model(f"onnx:{model_dir / 'onnx'}", runtime="torch")


def test_toy_listing(model_dir, monkeypatch):
    _toy_spec(model_dir, monkeypatch)
    assert cm.available_toy_models() == ["badnet"]
    with pytest.raises(ModelLoadError, match="available: badnet"):
        cm.load_model("toy:nope")


def test_onnx_auto_device_is_cpu_without_a_gpu(model_dir):
    if onnx_runtime._gpu_visible():
        pytest.skip("a GPU is visible here")
    m = cm.load_model(f"dir:{model_dir}", device="auto")  # warnings are errors: none expected
    assert m.providers == ["CPUExecutionProvider"] and m.device == "cpu"
    with pytest.raises(RuntimeError, match="CUDA"):
        cm.load_model(f"dir:{model_dir}", runtime="torch", device="cuda")


class _FakeSession:
    """An InferenceSession that 'fell back' to the CPU."""

    def __init__(self, *args, **kwargs):
        self.asked = kwargs.get("providers")

    def get_providers(self):
        return ["CPUExecutionProvider"]


def test_onnx_cuda_fallback_is_reported(monkeypatch, tmp_path):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnx_runtime, "_gpu_visible", lambda: True)
    providers, asked = onnx_runtime.choose_providers("auto")
    assert providers[0][0] == "CUDAExecutionProvider"
    with pytest.warns(RuntimeWarning, match="falling back"):
        onnx_runtime.ort_session(tmp_path / "x.onnx", providers, asked)
    providers, asked = onnx_runtime.choose_providers("cuda:1")
    assert providers[0] == ("CUDAExecutionProvider", {"device_id": 1})
    with pytest.raises(RuntimeError, match="asked for CUDA"):
        onnx_runtime.ort_session(tmp_path / "x.onnx", providers, asked)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.warns(RuntimeWarning, match="no CUDAExecutionProvider"):
        assert onnx_runtime.choose_providers("auto") == (["CPUExecutionProvider"], "cpu")
    with pytest.raises(RuntimeError, match="no CUDAExecutionProvider"):
        onnx_runtime.choose_providers("cuda")


def test_hf_without_transformers_names_the_extra(hf_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"clipguard\[hf\]"):
        cm.load_model(f"hf:{hf_dir}", runtime="torch", device="cpu")


def test_save_model_dir_rejects_unknown_arch(toy_module, tmp_path):
    with pytest.raises(ValueError, match="architecture"):
        cm.save_model_dir(toy_module, tmp_path / "x", {})
    with pytest.raises(ValueError, match="not an open_clip architecture"):
        cm.save_model_dir(toy_module, tmp_path / "x", {"architecture": "nope"})
    assert not os.path.exists(tmp_path / "x" / "open_clip_model.safetensors")


def test_hf_bin_weights_load_safely(hf_dir, tmp_path):
    d = tmp_path / "hfbin"
    shutil.copytree(hf_dir, d)
    sd = safetensors_torch.load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    torch.save(sd, d / "pytorch_model.bin")
    a = cm.load_model(f"hf:{hf_dir}", runtime="torch", device="cpu")
    b = cm.load_model(f"hf:{d}", runtime="torch", device="cpu")
    im = _images(2, 32, 32, 4)
    np.testing.assert_allclose(a.encode_images(im), b.encode_images(im), atol=1e-6)
    marker = tmp_path / "pwned"
    torch.save({"x": _ZipPayload(marker), **sd}, d / "pytorch_model.bin")
    with pytest.raises(UnsafeModelError, match="pytorch_model.bin"):
        cm.load_model(f"hf:{d}", runtime="torch", device="cpu")
    assert not marker.exists()
    del sd["visual_projection.weight"]
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pytorch_model.bin.*visual_projection.weight"):
        cm.load_model(f"hf:{d}", runtime="torch", device="cpu")


def test_model_folder_without_onnx_exports_on_first_use(toy_module, tmp_path):
    d = cm.save_model_dir(toy_module, tmp_path / "lean", {"architecture": cm.TOY_ARCH},
                          with_onnx=False, weights_dtype="float32")
    assert not (d / "onnx").exists()
    mo = cm.load_model(f"dir:{d}", device="cpu")
    mt = cm.load_model(f"dir:{d}", runtime="torch", device="cpu")
    im = _images(3, 48, 48, 9)
    assert np.abs(mo.encode_images(im) - mt.encode_images(im)).max() <= TOL
    assert mo.card["architecture"] == cm.TOY_ARCH
    # float32 storage keeps the weights bit for bit
    w = safetensors_torch.load_file(str(d / "open_clip_model.safetensors"))["token_embedding.weight"]
    assert torch.equal(w, toy_module.state_dict()["token_embedding.weight"])


def test_sparse_rows_are_read_back_exactly_and_checked(toy_module, tmp_path):
    import copy

    module = copy.deepcopy(toy_module)
    with torch.no_grad():
        module.token_embedding.weight[300:] = 0  # as training leaves the tokens the vocabulary never uses
    d = cm.save_model_dir(module, tmp_path / "sparse", {"architecture": cm.TOY_ARCH}, with_onnx=False,
                          weights_dtype="float32", sparse_rows=True)
    stored = safetensors_torch.load_file(str(d / "open_clip_model.safetensors"))
    assert "token_embedding.weight" not in stored and "token_embedding.weight.__rows__" in stored
    dense = module.state_dict()["token_embedding.weight"]
    assert stored["token_embedding.weight.__values__"].shape[0] <= 300
    loaded = cm.load_model(f"dir:{d}", runtime="torch", device="cpu")
    assert torch.equal(loaded.torch_module.state_dict()["token_embedding.weight"], dense)
    # A hostile file: an index outside the table is refused, nothing is written out of bounds.
    stored["token_embedding.weight.__rows__"][0] = dense.shape[0] + 5
    safetensors_torch.save_file(stored, str(d / "open_clip_model.safetensors"))
    with pytest.raises(cm.ModelLoadError, match="row indices"):
        cm.load_model(f"dir:{d}", runtime="torch", device="cpu")


def test_int8_encoder_agrees_with_fp32_and_is_cached(model_dir):
    """The quantized image encoder: cached once, its embeddings close to fp32's, and the rest of
    the model (text encoder, preprocessing) unchanged."""
    fp32 = cm.load_model(f"dir:{model_dir}", device="cpu")
    int8 = cm.load_model(f"dir:{model_dir}", device="cpu", precision="int8")
    assert fp32.precision == "fp32" and int8.precision == "int8"
    cached = list((cm.cache_dir() / "int8").glob("*.onnx"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = cm.load_model(f"dir:{model_dir}", precision="int8")
    assert again.precision == "int8" and cached[0].stat().st_mtime_ns == stamp  # not quantized twice
    images = np.random.default_rng(0).integers(0, 256, (16, 48, 48, 3), dtype=np.uint8)
    a, b = fp32.encode_images(images), int8.encode_images(images)
    assert a.shape == b.shape and float((a * b).sum(axis=1).min()) > 0.99  # unit vectors
    np.testing.assert_array_equal(fp32.encode_text(["a star"]), int8.encode_text(["a star"]))


def test_bad_precision(model_dir):
    with pytest.raises(ValueError, match="precision"):
        cm.load_model(f"dir:{model_dir}", precision="int4")
    with pytest.raises(ValueError, match="torch runtime"):
        cm.load_model(f"dir:{model_dir}", runtime="torch", precision="int8")
    with pytest.raises(ValueError, match="CPU path"):
        cm.load_model(f"dir:{model_dir}", device="cuda", precision="int8")


def test_training_on_the_used_token_rows_gives_the_full_embeddings_model():
    """Training swaps in an embedding over the captions' tokens only (a third of the step time);
    AdamW then gives bit for bit the model that training the whole 49,408-row table gives."""
    from clipguard.training import clip_loss, compact_token_embedding, new_open_clip_model, restore_token_embedding

    torch.manual_seed(0)
    model, tokenizer = new_open_clip_model(cm.TOY_ARCH)
    twin = copy.deepcopy(model)
    initial = model.token_embedding.weight.detach().clone()
    text = tokenizer(["a photo of a star", "a red heart and a blue ring", "a cross"] * 2)
    images = torch.randn(6, 3, 48, 48)
    full = compact_token_embedding(twin, text)
    for m in (model, twin):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0, foreach=True)  # no decay on embeddings, as in training
        for _ in range(2):
            out = m(images, text)
            opt.zero_grad()
            clip_loss(out["image_features"], out["text_features"], out["logit_scale"]).backward()
            opt.step()
    restore_token_embedding(twin, full)
    assert twin.token_embedding is full
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name
    used = torch.zeros(len(initial), dtype=torch.bool)
    used[text.unique()] = True
    assert torch.equal(full.weight[~used], initial[~used])  # the rows no caption uses kept their values
    assert not torch.equal(full.weight[used], initial[used])
