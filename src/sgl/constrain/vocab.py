"""Token vocabularies: the exact bytes every token of a model's tokenizer stands for.

Constrained decoding works on bytes, so the matcher needs, for each token id the
model can emit, the bytes that token appends to the output. ``Vocabulary``
extracts them from the common tokenizer formats:

* byte-level BPE (GPT-2's byte<->unicode map: GPT-2, Llama-3, Qwen, SmolLM2, ...),
* SentencePiece-style vocabularies (``▁`` stands for a space, ``<0xNN>`` pieces
  for single bytes when byte fallback is on),
* tiktoken rank files (the tokens are the raw bytes),
* GGUF model files (``tokenizer.ggml.*`` metadata).

Special / control tokens have no bytes (``None``); so do ids past the end of the
tokenizer when the model's logit count (``n_vocab``) is larger.

Nothing here imports the rest of ``sgl``; ``tokenizers`` and ``transformers``
are imported lazily, the latter never (transformers tokenizers are recognised by
their attributes).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .token_formats import (
    CL100K_PATTERN,
    _bytelevel_decode,
    _continuation_patch,
    _is_tiktoken_file,
    _json_token_bytes,
    _ranks_base,
    _read_tiktoken,
    _sentencepiece_decode,
    _tiktoken_preset,
    _tiktoken_tokenizer,
    bytes_to_unicode,
)
from .token_trie import byte_matrix
from .vocab_cache import _atomic_savez, _load_npz, _pack, _pack_lengths, _unpack, cache_dir

__all__ = ["Vocabulary", "WELL_KNOWN_EOS", "bytes_to_unicode", "cache_dir"]
log = logging.getLogger(__name__)


# Bumped whenever the extraction rules change, so stale disk caches are ignored.
_FORMAT_VERSION = 1


# Names that end generation in common chat / base models, used when nothing in
# the tokenizer's own configuration says which token is EOS.
WELL_KNOWN_EOS = (
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|im_end|>",
    "<|endoftext|>",
    "</s>",
    "<|end|>",
    "<eos>",
    "<end_of_turn>",
)


# --------------------------------------------------------------------------- encoders
class _LazyEncoder:
    """Encodes with a ``tokenizers.Tokenizer`` that ``build()`` makes on first use:
    encoding is rare next to mask computation."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._tok: Any = None
        self._lock = threading.Lock()

    def __call__(self, text: str) -> list[int]:
        if self._tok is None:
            with self._lock:
                if self._tok is None:
                    self._tok = self._build()
        return self._tok.encode(text, add_special_tokens=False).ids


def _specials_as_text(tok: Any) -> Any:
    """``tok``, set to read "<|eot_id|>" in a text as text, not as the special token."""
    if hasattr(tok, "encode_special_tokens"):
        tok.encode_special_tokens = True
    return tok


def _tokenizers_encoder(text: Callable[[], str], patch: dict[str, Any]) -> _LazyEncoder:
    def build() -> Any:
        from tokenizers import Tokenizer

        source = text()
        if patch:
            config = json.loads(source)
            config.update(patch)
            source = json.dumps(config)
        return _specials_as_text(Tokenizer.from_str(source))

    return _LazyEncoder(build)


def _no_encoder(text: str) -> list[int]:
    raise RuntimeError("this Vocabulary was built without a tokenizer and cannot encode")


# --------------------------------------------------------------------------- Vocabulary
@dataclass(eq=False, repr=False)
class Vocabulary:
    """The bytes of every token id a model can emit, plus its EOS / special ids.

    Build one with ``Vocabulary.from_tokenizer`` (or ``from_gguf``). Attributes:

    * ``token_bytes[i]``: the exact bytes token ``i`` appends to the output,
      ``None`` for special/control tokens and for unused ids; ``len == n_vocab``.
    * ``n_vocab``: the model's logit count (may exceed the tokenizer's size).
    * ``eos_token_ids``: the ids that end generation.
    * ``special_token_ids``: ids of special/control tokens (EOS included).
    * ``special_tokens``: their names -> ids.
    """

    token_bytes: list[bytes | None]
    eos_token_ids: tuple[int, ...]
    special_token_ids: frozenset[int]
    special_tokens: dict[str, int] = field(default_factory=dict)
    _encode_fn: Callable[[str], list[int]] = field(default=_no_encoder)
    _fingerprint: str | None = field(default=None, init=False)
    _matrix: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False)
    _by_bytes: dict[bytes, int] | None = field(default=None, init=False)

    # ----------------------------------------------------------------- basics
    @property
    def n_vocab(self) -> int:
        """The number of token ids (the model's logit count)."""
        return len(self.token_bytes)

    def __len__(self) -> int:
        return len(self.token_bytes)

    def __repr__(self) -> str:
        n_text = sum(t is not None for t in self.token_bytes)
        return (
            f"Vocabulary(n_vocab={self.n_vocab}, text_tokens={n_text}, "
            f"special={len(self.special_token_ids)}, eos={list(self.eos_token_ids)}, "
            f"fingerprint={self.fingerprint[:12]})"
        )

    def encode(self, text: str) -> list[int]:
        """Canonical token ids of ``text`` as a continuation.

        No BOS, no special tokens (special-token names in ``text`` are encoded as
        plain text), no SentencePiece dummy prefix: ``decode(encode(t)) == t``.
        """
        return self._encode_fn(text)

    def decode(self, ids: Iterable[int]) -> bytes:
        """Concatenated bytes of ``ids``; special and unused ids contribute nothing."""
        tb = self.token_bytes
        return b"".join(b for b in (tb[i] for i in ids) if b is not None)

    def token_id(self, text: str | bytes) -> int | None:
        """The id of a special token by name, or of the token whose bytes are ``text``."""
        if isinstance(text, str) and text in self.special_tokens:
            return self.special_tokens[text]
        if self._by_bytes is None:
            by_bytes: dict[bytes, int] = {}
            for i, b in enumerate(self.token_bytes):
                if b is not None:
                    by_bytes.setdefault(b, i)
            self._by_bytes = by_bytes
        key = text.encode("utf-8") if isinstance(text, str) else text
        return self._by_bytes.get(key)

    @property
    def fingerprint(self) -> str:
        """sha256 of the token bytes, n_vocab and the EOS ids (hex)."""
        if self._fingerprint is None:
            lengths, flat = _pack(self.token_bytes)
            h = hashlib.sha256()
            h.update(f"sgl-vocab-v{_FORMAT_VERSION}|{self.n_vocab}|{list(self.eos_token_ids)}|".encode())
            h.update(lengths.astype("<i4").tobytes())
            h.update(flat)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # ----------------------------------------------------------------- byte matrix
    def byte_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """``(bytes uint8[n_vocab, max_len], lengths int32[n_vocab])``, zero-padded.

        Row ``i`` holds ``token_bytes[i]`` (length 0 for None tokens). Computed
        once, kept on the object and in ``cache_dir()/<fingerprint>.npz``.
        Treat the arrays as read-only: they are shared.
        """
        if self._matrix is None:
            path = cache_dir() / f"{self.fingerprint}.npz"
            data = _load_npz(path)
            if data is not None and self._matrix_ok(data):
                mat, lengths = data["bytes"], data["lengths"]
            else:
                mat, lengths = byte_matrix(self.token_bytes)
                _atomic_savez(path, bytes=mat, lengths=lengths)
            mat.flags.writeable = False
            lengths.flags.writeable = False
            self._matrix = mat, lengths
        return self._matrix

    def _matrix_ok(self, data: dict[str, np.ndarray]) -> bool:
        mat, lengths = data.get("bytes"), data.get("lengths")
        return (
            mat is not None and lengths is not None and mat.dtype == np.uint8
            and lengths.dtype == np.int32 and mat.ndim == 2
            and mat.shape[0] == lengths.shape[0] == self.n_vocab
            # cheap content check: a valid npz from an interrupted or foreign writer
            and np.array_equal(lengths, np.maximum(_pack_lengths(self.token_bytes), 0))
        )

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_tokenizer(
        cls,
        tok: Any,
        n_vocab: int | None = None,
        *,
        eos_token_ids: Iterable[int] | None = None,
        special_tokens: Mapping[str, int] | None = None,
        pattern: str | None = None,
        use_cache: bool = True,
    ) -> Vocabulary:
        """Build the vocabulary of ``tok``.

        ``tok`` may be a ``tokenizers.Tokenizer``, a transformers tokenizer (fast
        or slow), a tiktoken-style ``Encoding`` object, or a path to a
        ``tokenizer.json``, a directory holding one, a ``.tiktoken`` rank file
        (optionally ``.gz``) or a ``.gguf`` model. ``n_vocab`` is the model's
        logit count (default: the tokenizer's size); extra ids get ``None``.
        ``eos_token_ids`` overrides EOS detection (tokenizer_config.json /
        generation_config.json next to a tokenizer.json, the tokenizer object's
        own eos, GGUF metadata, else the ``WELL_KNOWN_EOS`` names present).
        ``special_tokens`` and ``pattern`` describe a tiktoken file that is not
        one of the known ones (cl100k, o200k, Qwen, Llama-3). Path inputs are
        cached on disk (keyed by the file's content), see ``cache_dir()``.
        """
        eos = None if eos_token_ids is None else tuple(int(i) for i in eos_token_ids)
        if isinstance(tok, (str, os.PathLike)):
            return _from_path(Path(tok), n_vocab, eos, special_tokens, pattern, use_cache)
        if hasattr(tok, "to_str") and hasattr(tok, "get_vocab_size"):  # tokenizers.Tokenizer
            return _from_source(tok.to_str().encode(), "tokenizer.json", n_vocab, eos,
                                _well_known_eos, None, None, use_cache)
        if hasattr(tok, "backend_tokenizer"):  # transformers fast tokenizer
            return _from_source(tok.backend_tokenizer.to_str().encode(), "tokenizer.json", n_vocab,
                                eos or _transformers_eos(tok), _well_known_eos, None, None, use_cache)
        if hasattr(tok, "encode_ordinary"):  # tiktoken.Encoding and look-alikes
            return _from_tiktoken_encoding(tok, n_vocab, eos)
        if hasattr(tok, "convert_ids_to_tokens"):  # transformers slow tokenizer
            return _from_slow_transformers(tok, n_vocab, eos)
        raise TypeError(f"cannot build a Vocabulary from {type(tok).__name__}")

    @classmethod
    def from_gguf(
        cls, path: str | Path, n_vocab: int | None = None, *,
        eos_token_ids: Iterable[int] | None = None,
    ) -> Vocabulary:
        """The vocabulary of a GGUF model file (its ``tokenizer.ggml.*`` metadata).

        EOS defaults to the file's eos/eot/eom ids. Encoding uses
        ``gguf_tokenizer.load_gguf_tokenizer`` (byte-level "gpt2" GGUFs); for
        SentencePiece ("llama") GGUFs only the token bytes are available and
        ``encode`` raises.
        """
        from .gguf_tokenizer import (
            TOKEN_TYPE_BYTE,
            TOKEN_TYPE_NORMAL,
            TOKEN_TYPE_USER_DEFINED,
            load_gguf_tokenizer,
            read_gguf_vocab,
        )

        gv = read_gguf_vocab(path)
        byte_level = gv.model == "gpt2"
        if not byte_level and gv.model != "llama":
            raise NotImplementedError(f"{path}: GGUF tokenizer model {gv.model!r} is not supported")
        base: list[bytes | None] = []
        specials: dict[str, int] = {}
        for i, (piece, ttype) in enumerate(zip(gv.tokens, gv.token_types.tolist(), strict=True)):
            if ttype == TOKEN_TYPE_USER_DEFINED:
                base.append(piece.encode("utf-8"))  # stored as plain text by llama.cpp
            elif ttype in (TOKEN_TYPE_NORMAL, TOKEN_TYPE_BYTE):
                if byte_level:
                    base.append(_bytelevel_decode(piece))
                else:
                    base.append(_sentencepiece_decode(piece, "\u2581", True))
            else:  # control, unknown, unused
                base.append(None)
                specials.setdefault(piece, i)
        if eos_token_ids is not None:
            eos = tuple(int(i) for i in eos_token_ids)
        else:
            eos = gv.eos_token_ids or _well_known_eos(specials)
        encoder = _LazyEncoder(lambda: _specials_as_text(load_gguf_tokenizer(path))) if byte_level else _no_encoder
        return _finish(base, specials, eos, n_vocab, encoder)


# --------------------------------------------------------------------------- assembly
def _well_known_eos(specials: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(specials[name] for name in WELL_KNOWN_EOS if name in specials)


def _finish(
    base: list[bytes | None],
    specials: Mapping[str, int],
    eos: Sequence[int],
    n_vocab: int | None,
    encoder: Callable[[str], list[int]],
) -> Vocabulary:
    size = len(base)
    n = size if n_vocab is None else int(n_vocab)
    if n < size:
        # A model with fewer logits than tokenizer entries can only drop ids it
        # could never emit anyway; dropping text tokens would break encode().
        if any(b is not None for b in base[n:]):
            raise ValueError(f"n_vocab={n} is smaller than the tokenizer ({size} tokens)")
        base = base[:n]
    elif n > size:
        base = base + [None] * (n - size)
    specials = {name: i for name, i in specials.items() if 0 <= i < n}
    eos_ids = tuple(dict.fromkeys(int(i) for i in eos))
    bad = [i for i in eos_ids if not 0 <= i < n]
    if bad:
        raise ValueError(f"EOS ids {bad} are outside the vocabulary (n_vocab={n})")
    if not eos_ids:
        log.warning("no EOS token found; pass eos_token_ids=")
    special_ids = frozenset(specials.values()) | frozenset(eos_ids)
    return Vocabulary(
        token_bytes=base,
        eos_token_ids=eos_ids,
        special_token_ids=special_ids,
        special_tokens=dict(specials),
        _encode_fn=encoder,
    )


def _config_file_eos(folder: Path, specials: Mapping[str, int]) -> tuple[int, ...]:
    """EOS ids from generation_config.json and tokenizer_config.json in ``folder``."""
    ids: list[int] = []
    try:
        gen = json.loads((folder / "generation_config.json").read_text())
        value = gen.get("eos_token_id")
        ids += [value] if isinstance(value, int) else [int(v) for v in value or []]
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    try:
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        value = cfg.get("eos_token")
        name = value.get("content") if isinstance(value, dict) else value
        if isinstance(name, str) and name in specials:
            ids.append(specials[name])
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return tuple(dict.fromkeys(ids))


def _from_tiktoken_encoding(enc: Any, n_vocab: int | None, eos: tuple[int, ...] | None) -> Vocabulary:
    ranks = getattr(enc, "_mergeable_ranks", None) or getattr(enc, "_ranks", None)
    specials = getattr(enc, "_special_tokens", None) or getattr(enc, "_special", None) or {}
    if ranks is None:
        raise TypeError(f"{type(enc).__name__} has encode_ordinary but no mergeable ranks")
    specials = dict(specials)
    if eos is None:
        eos = _well_known_eos(specials)
    return _finish(_ranks_base(ranks, specials), specials, eos, n_vocab, enc.encode_ordinary)


# --------------------------------------------------------------------------- transformers
def _transformers_eos(tok: Any) -> tuple[int, ...] | None:
    eos = getattr(tok, "eos_token_id", None)
    if isinstance(eos, int):
        return (eos,)
    if isinstance(eos, (list, tuple)) and eos:
        return tuple(int(i) for i in eos)
    return None


def _from_slow_transformers(tok: Any, n_vocab: int | None, eos: tuple[int, ...] | None) -> Vocabulary:
    """Python ("slow") transformers tokenizers: tiktoken ranks, GPT-2 byte map or SentencePiece."""
    special_ids = set(getattr(tok, "all_special_ids", []) or [])
    added = getattr(tok, "added_tokens_decoder", {}) or {}
    special_ids |= {i for i, a in added.items() if getattr(a, "special", False)}
    size = len(tok)
    pieces = tok.convert_ids_to_tokens(list(range(size)))
    ranks = getattr(tok, "mergeable_ranks", None)
    decoder = getattr(tok, "byte_decoder", None)
    is_sp = hasattr(tok, "sp_model")
    base: list[bytes | None] = []
    specials: dict[str, int] = {}
    inverse_ranks = {r: b for b, r in ranks.items()} if isinstance(ranks, dict) else None
    for i, piece in enumerate(pieces):
        if i in special_ids or piece is None:
            base.append(None)
            if isinstance(piece, str):
                specials.setdefault(piece, i)
        elif isinstance(piece, bytes):
            base.append(piece)
        elif inverse_ranks is not None and i in inverse_ranks:
            base.append(inverse_ranks[i])
        elif i in added:
            base.append(str(added[i]).encode("utf-8"))
        elif decoder is not None:
            base.append(_bytelevel_decode(piece))
        elif is_sp:
            base.append(_sentencepiece_decode(piece, "\u2581", True))
        else:
            base.append(piece.encode("utf-8"))
    if eos is None:
        eos = _transformers_eos(tok) or _well_known_eos(specials)

    def encode(text: str) -> list[int]:
        ids = list(tok.encode(text, add_special_tokens=False))
        if is_sp and not text.startswith(" ") and ids:
            # SentencePiece adds a dummy prefix space; encode after a sentinel
            # token and drop it so the ids spell exactly ``text``.
            sentinel = list(tok.encode("\n", add_special_tokens=False))
            both = list(tok.encode("\n" + text, add_special_tokens=False))
            if both[: len(sentinel)] == sentinel:
                ids = both[len(sentinel):]
        return ids

    return _finish(base, specials, eos, n_vocab, encode)


# --------------------------------------------------------------------------- sources
def _from_path(
    path: Path,
    n_vocab: int | None,
    eos: tuple[int, ...] | None,
    special_tokens: Mapping[str, int] | None,
    pattern: str | None,
    use_cache: bool,
) -> Vocabulary:
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.suffix.lower() == ".gguf":
        return Vocabulary.from_gguf(path, n_vocab, eos_token_ids=eos)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)

    def default_eos(specials: Mapping[str, int]) -> tuple[int, ...]:
        return _config_file_eos(path.parent, specials) or _well_known_eos(specials)

    return _from_source(data, path.name, n_vocab, eos, default_eos, special_tokens, pattern,
                        use_cache)


def _from_source(
    data: bytes,
    name: str,
    n_vocab: int | None,
    eos: tuple[int, ...] | None,
    default_eos: Callable[[Mapping[str, int]], tuple[int, ...]],
    special_tokens: Mapping[str, int] | None,
    pattern: str | None,
    use_cache: bool,
) -> Vocabulary:
    """A vocabulary from tokenizer.json text or a tiktoken rank file, through the disk cache."""
    key = None
    if use_cache:
        h = hashlib.sha256(data)
        params = (_FORMAT_VERSION, name, n_vocab, eos, sorted((special_tokens or {}).items()), pattern)
        h.update(repr(params).encode())
        key = h.hexdigest()
        cached = _load_source_cache(key, data)
        if cached is not None:
            return cached
    ranks = None
    if data.lstrip()[:1] == b"{":
        config = json.loads(data)
        base, specials = _json_token_bytes(config)
        spec: dict[str, Any] = {"kind": "json", "patch": _continuation_patch(config)}
    elif _is_tiktoken_file(data):
        ranks = _read_tiktoken(data)
        preset = _tiktoken_preset(name, len(ranks))
        specials = dict(special_tokens) if special_tokens is not None else (
            preset.specials() if preset else {})
        spec = {"kind": "tiktoken", "pattern": pattern or (preset.pattern if preset else CL100K_PATTERN),
                "nfc": bool(preset and preset.nfc)}
        base = _ranks_base(ranks, specials)
    else:
        raise ValueError(f"{name}: not a tokenizer.json, tiktoken rank file or GGUF model")
    vocab = _finish(base, specials, eos if eos is not None else default_eos(specials), n_vocab,
                    _source_encoder(spec, data, ranks))
    if key is not None:
        _save_source_cache(key, vocab, spec)
    return vocab


def _source_encoder(spec: dict[str, Any], data: bytes, ranks: Mapping[bytes, int] | None) -> _LazyEncoder:
    if spec["kind"] == "json":
        return _tokenizers_encoder(lambda: data.decode("utf-8"), spec.get("patch") or {})
    return _LazyEncoder(lambda: _tiktoken_tokenizer(ranks or _read_tiktoken(data), spec["pattern"], spec["nfc"]))


def _save_source_cache(key: str, vocab: Vocabulary, spec: dict[str, Any]) -> None:
    lengths, flat = _pack(vocab.token_bytes)
    meta = {"spec": spec, "specials": vocab.special_tokens, "eos": list(vocab.eos_token_ids),
            "fingerprint": vocab.fingerprint}
    _atomic_savez(
        cache_dir() / f"src-{key}.npz",
        lengths=lengths,
        flat=np.frombuffer(flat, dtype=np.uint8),
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
    )


def _load_source_cache(key: str, data: bytes) -> Vocabulary | None:
    arrays = _load_npz(cache_dir() / f"src-{key}.npz")
    if arrays is None:
        return None
    try:
        meta = json.loads(arrays["meta"].tobytes())
        base = _unpack(arrays["lengths"], arrays["flat"].tobytes())
        specials = {str(k): int(v) for k, v in meta["specials"].items()}
        eos = tuple(int(i) for i in meta["eos"])
        encoder = _source_encoder(meta["spec"], data, None)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    vocab = _finish(base, specials, eos, None, encoder)
    vocab._fingerprint = meta.get("fingerprint")
    return vocab
