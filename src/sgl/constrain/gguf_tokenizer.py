"""Tokenizers from GGUF model files, without transformers or llama.cpp.

A GGUF file carries its tokenizer as metadata (``tokenizer.ggml.*``): the token
strings, their types, the BPE merges and the name of llama.cpp's pre-tokenizer.
``read_gguf_metadata`` parses just that header (``gguf.GGUFReader`` also maps
every tensor and takes seconds on a 100 MB model; this takes tens of ms), and
``load_gguf_tokenizer`` turns a byte-level BPE ("gpt2") tokenizer into a
``tokenizers.Tokenizer`` that encodes like the model's original tokenizer.json.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GGUFVocab",
    "TOKEN_TYPE_BYTE",
    "TOKEN_TYPE_CONTROL",
    "TOKEN_TYPE_NORMAL",
    "TOKEN_TYPE_UNKNOWN",
    "TOKEN_TYPE_UNUSED",
    "TOKEN_TYPE_USER_DEFINED",
    "load_gguf_tokenizer",
    "read_gguf_metadata",
    "read_gguf_vocab",
]

# llama.cpp's token types (tokenizer.ggml.token_type).
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
TOKEN_TYPE_UNUSED = 5
TOKEN_TYPE_BYTE = 6

# GGUF value types -> struct format (scalars) ; 8 = string, 9 = array.
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
          10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9

# Pre-tokenizer regexes, as in the models' own tokenizer.json files.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# llama.cpp pre-tokenizer names (tokenizer.ggml.pre) grouped by the regexes
# llama.cpp runs for them (llama-vocab.cpp); each group maps to the equivalent
# tokenizers pre-tokenizer below.
_PRE_GPT2 = {"default", "gpt-2", "gpt2", "mpt", "olmo", "jais"}
_PRE_DIGITS_GPT2 = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
_PRE_LLAMA3 = {"llama-bpe", "llama3", "dbrx", "smaug-bpe", "falcon3", "pixtral"}
_PRE_QWEN2 = {"qwen2", "stablelm2", "deepseek-r1-qwen", "megrez", "hunyuan"}
SUPPORTED_PRE = sorted(_PRE_GPT2 | _PRE_DIGITS_GPT2 | _PRE_LLAMA3 | _PRE_QWEN2)


class _Cursor:
    """Little-endian reader over a buffer (the mmap'ed file)."""

    def __init__(self, buf: Any) -> None:
        self.buf = buf
        self.pos = 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("Q")
        start = self.pos
        self.pos += n
        return bytes(self.buf[start : self.pos]).decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int, keep: bool) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            return self.array(keep)
        return self.scalar(_SCALAR[vtype])

    def array(self, keep: bool) -> Any:
        itype = self.scalar("I")
        count = self.scalar("Q")
        if itype in _NUMPY:
            dtype = np.dtype(_NUMPY[itype])
            nbytes = dtype.itemsize * count
            out = np.frombuffer(self.buf, dtype, count, self.pos).copy() if keep else None
            self.pos += nbytes
            return out
        if itype == _STRING:
            if not keep:  # still have to walk the lengths to find the end
                for _ in range(count):
                    self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]
                return None
            return [self.string() for _ in range(count)]
        return [self.value(itype, keep) for _ in range(count)]


def read_gguf_metadata(path: str | Path, prefix: str = "") -> dict[str, Any]:
    """Read the key/value metadata of a GGUF file (not its tensors).

    Only keys starting with ``prefix`` are kept (others are skipped without
    decoding). Numeric arrays come back as numpy arrays, string arrays as lists.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        cur = _Cursor(mm)
        cur.pos = 4
        version = cur.scalar("I")
        if version not in (2, 3):
            # v1 used 32-bit lengths; a byte-swapped version means a big-endian file.
            raise ValueError(f"{path}: unsupported GGUF version {version}")
        cur.scalar("Q")  # tensor count
        n_kv = cur.scalar("Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            vtype = cur.scalar("I")
            keep = key.startswith(prefix)
            value = cur.value(vtype, keep)
            if keep:
                meta[key] = value
        return meta


@dataclass
class GGUFVocab:
    """The tokenizer metadata of a GGUF file."""

    model: str  # "gpt2" (byte-level BPE), "llama" (SentencePiece), ...
    pre: str  # llama.cpp pre-tokenizer name
    tokens: list[str]
    token_types: np.ndarray  # int32, TOKEN_TYPE_*
    merges: list[str]
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]  # eos, plus eot/eom where the file names them
    add_bos_token: bool


def _opt_int(meta: dict[str, Any], key: str) -> int | None:
    value = meta.get(key)
    return None if value is None else int(value)


def read_gguf_vocab(path: str | Path) -> GGUFVocab:
    """Read a GGUF file's tokenizer metadata."""
    meta = read_gguf_metadata(path, prefix="tokenizer.ggml.")
    if "tokenizer.ggml.tokens" not in meta:
        raise ValueError(f"{path}: no tokenizer.ggml.tokens in the GGUF metadata")
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type")
    if types is None:
        types = np.full(len(tokens), TOKEN_TYPE_NORMAL, dtype=np.int32)
    eos: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        tid = _opt_int(meta, "tokenizer.ggml." + key)
        if tid is not None and 0 <= tid < len(tokens) and tid not in eos:
            eos.append(tid)
    return GGUFVocab(
        model=str(meta.get("tokenizer.ggml.model", "")),
        pre=str(meta.get("tokenizer.ggml.pre", "default")),
        tokens=tokens,
        token_types=np.asarray(types, dtype=np.int32),
        merges=list(meta.get("tokenizer.ggml.merges") or []),
        bos_token_id=_opt_int(meta, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(eos),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
    )


def _pre_tokenizer(pre: str) -> tuple[Any, bool]:
    """The tokenizers pre-tokenizer equivalent to llama.cpp's ``pre``, and ignore_merges."""
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in _PRE_GPT2:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), False
    if pre in _PRE_DIGITS_GPT2:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]), False
    if pre in _PRE_LLAMA3:
        split = pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False)
        return pre_tokenizers.Sequence([split, byte_level]), True
    if pre in _PRE_QWEN2:
        split = pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False)
        return pre_tokenizers.Sequence([split, byte_level]), False
    raise ValueError(
        f"unsupported GGUF pre-tokenizer {pre!r}; known: {', '.join(SUPPORTED_PRE)} "
        "(pass pre=... to pick the closest one)"
    )


def load_gguf_tokenizer(path: str | Path, pre: str | None = None) -> Any:
    """Build a ``tokenizers.Tokenizer`` from a GGUF file's byte-level BPE tokenizer.

    Uses ``tokenizer.ggml.tokens``/``merges``/``token_type`` and maps llama.cpp's
    pre-tokenizer name (or ``pre``) to the equivalent tokenizers pre-tokenizer.
    Control tokens become special added tokens (single tokens, skipped by
    ``decode``), user-defined tokens plain added tokens. A BOS template is
    installed when the file asks for one (``tokenizer.ggml.add_bos_token``), so
    ``encode(text)`` matches llama.cpp and ``add_special_tokens=False`` gives the bare text.
    Only the "gpt2" tokenizer model is supported (SentencePiece GGUFs raise).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    gv = read_gguf_vocab(path)
    if gv.model != "gpt2":
        raise NotImplementedError(
            f"{path}: GGUF tokenizer model {gv.model!r} is not supported (only byte-level 'gpt2')"
        )
    pre_tok, ignore_merges = _pre_tokenizer(pre or gv.pre)
    vocab: dict[str, int] = {}
    for i, tok in enumerate(gv.tokens):
        vocab.setdefault(tok, i)  # duplicate strings (rare padding entries) keep the first id
    merges = [tuple(m.split(" ", 1)) for m in gv.merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    tokenizer.pre_tokenizer = pre_tok
    tokenizer.decoder = decoders.ByteLevel()
    specials = [
        AddedToken(gv.tokens[i], special=True, normalized=False)
        for i in np.flatnonzero(gv.token_types == TOKEN_TYPE_CONTROL)
    ]
    user = [
        AddedToken(gv.tokens[i], special=False, normalized=False)
        for i in np.flatnonzero(gv.token_types == TOKEN_TYPE_USER_DEFINED)
    ]
    # The contents are already in the BPE vocab, so the added tokens keep their ids.
    tokenizer.add_special_tokens(specials)
    tokenizer.add_tokens(user)
    if gv.add_bos_token and gv.bos_token_id is not None:
        bos = gv.tokens[gv.bos_token_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, gv.bos_token_id)]
        )
    return tokenizer
