"""How tokenizer formats spell their tokens' bytes: byte-level BPE, SentencePiece,
tiktoken rank files and their presets, ``tokenizer.json`` parsing.

Used by ``vocab`` to build a ``Vocabulary``; imports nothing else from ``sgl``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------- patterns
# tiktoken's own pattern, except `\p{N}{1,3}+`: in Oniguruma (which `tokenizers`
# uses) `{n,m}+` is not possessive but "one or more times", so it is dropped
# (possessiveness makes no difference there).
CL100K_PATTERN = (
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"
)


O200K_PATTERN = "|".join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
])


LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


QWEN35_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _llama3_specials() -> dict[str, int]:
    named = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 6: "<|start_header_id|>",
             7: "<|end_header_id|>", 9: "<|eot_id|>"}
    out, reserved = {}, 0
    for i in range(256):
        if i in named:
            out[named[i]] = 128000 + i
        else:
            out[f"<|reserved_special_token_{reserved}|>"] = 128000 + i
            reserved += 1
    return out


_QWEN35_NAMES = (
    "<|endoftext|> <|im_start|> <|im_end|> <|object_ref_start|> <|object_ref_end|> <|box_start|> "
    "<|box_end|> <|quad_start|> <|quad_end|> <|vision_start|> <|vision_end|> <|vision_pad|> "
    "<|image_pad|> <|video_pad|> <tool_call> </tool_call> <|fim_prefix|> <|fim_middle|> "
    "<|fim_suffix|> <|fim_pad|> <|repo_name|> <|file_sep|> <tool_response> </tool_response> "
    "<think> </think> <|audio_start|> <|audio_end|> <tts_pad> <tts_text_bos> <tts_text_eod> "
    "<tts_text_bos_single> <|audio_pad|>"
).split()


@dataclass(frozen=True)
class _TiktokenPreset:
    pattern: str
    specials: Callable[[], dict[str, int]]
    nfc: bool = False


# tiktoken rank files say nothing about their split regex or special tokens;
# these presets supply them for the well-known files (matched on the file name,
# or for Llama-3's tokenizer.model on its 128,000 ranks).
_TIKTOKEN_PRESETS: dict[str, _TiktokenPreset] = {
    "cl100k": _TiktokenPreset(CL100K_PATTERN, lambda: {
        "<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276}),
    "o200k": _TiktokenPreset(O200K_PATTERN, lambda: {"<|endoftext|>": 199999,
                                                     "<|endofprompt|>": 200018}),
    "qwen3": _TiktokenPreset(QWEN35_PATTERN, lambda: {
        name: 248044 + i for i, name in enumerate(_QWEN35_NAMES)}, nfc=True),
    "qwen": _TiktokenPreset(QWEN_PATTERN, lambda: {
        name: 151643 + i for i, name in enumerate(
            ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{k}|>" for k in range(205)])
    }, nfc=True),
    "llama3": _TiktokenPreset(LLAMA3_PATTERN, _llama3_specials),
}


# --------------------------------------------------------------------------- byte-level map
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are moved,
    in order, to code points 256 and up.
    """
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return dict(sorted(table.items()))


_BYTE_TO_CHAR = bytes_to_unicode()


# str.translate table: byte-level char -> its byte (as a Latin-1 code point).
# Latin-1 chars that are NOT byte-level chars go to U+0100+, so that the
# following .encode("latin-1") fails on any string that is not byte-level.
_CHAR_TO_BYTE = {ord(c): b for b, c in _BYTE_TO_CHAR.items()}
_CHAR_TO_BYTE.update({b: 0x100 for b in range(256) if b not in _CHAR_TO_BYTE})


_TO_BYTELEVEL = {b: ord(c) for b, c in _BYTE_TO_CHAR.items()}


def _bytelevel_decode(piece: str) -> bytes:
    """Bytes of a byte-level BPE token string; a piece that is not one (a token kept as
    plain text) as its UTF-8."""
    try:
        return piece.translate(_CHAR_TO_BYTE).encode("latin-1")
    except UnicodeEncodeError:
        return piece.encode("utf-8")


def _bytelevel_encode(data: bytes) -> str:
    return data.decode("latin-1").translate(_TO_BYTELEVEL)


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _sentencepiece_decode(piece: str, space: str, byte_fallback: bool) -> bytes:
    if byte_fallback and len(piece) == 6:
        m = _BYTE_PIECE.fullmatch(piece)
        if m:
            return bytes([int(m.group(1), 16)])
    return piece.replace(space, " ").encode("utf-8")


def _walk(cfg: Any) -> Iterator[dict[str, Any]]:
    """Every component of a (possibly nested Sequence) tokenizer.json config."""
    if isinstance(cfg, dict):
        yield cfg
        for key in ("normalizers", "pretokenizers", "decoders", "processors"):
            for sub in cfg.get(key) or ():
                yield from _walk(sub)


def _strip_prefix_space(cfg: Any) -> Any:
    """A normalizer / pre-tokenizer config that no longer prepends a space."""
    if not isinstance(cfg, dict):
        return cfg
    cfg = dict(cfg)
    kind = cfg.get("type")
    if kind == "Sequence":
        for key in ("normalizers", "pretokenizers"):
            if key in cfg:
                subs = [_strip_prefix_space(sub) for sub in cfg[key]]
                cfg[key] = [sub for sub in subs if sub is not None]
    elif kind == "Prepend":
        return None
    elif kind == "Metaspace":
        cfg["prepend_scheme"] = "never"
        if "add_prefix_space" in cfg:
            cfg["add_prefix_space"] = False
    elif kind == "ByteLevel":
        cfg["add_prefix_space"] = False
    return cfg


def _continuation_patch(config: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer.json entries to replace so that text is tokenized as a continuation.

    SentencePiece-style tokenizers add a dummy prefix space (``Prepend("▁")`` or
    ``Metaspace(prepend_scheme="always")``), some byte-level ones
    ``add_prefix_space``; ``encode("x")`` must give the tokens of exactly "x".
    Empty when the tokenizer needs no change.
    """
    patch = {}
    for key in ("normalizer", "pre_tokenizer"):
        old = config.get(key)
        new = _strip_prefix_space(old)
        if new != old:
            patch[key] = new
    return patch


def _tiktoken_merges(ranks: Mapping[bytes, int], strings: Mapping[int, str]) -> list[tuple[str, str]]:
    """BPE merges equivalent to tiktoken's rule (merge the adjacent pair whose
    concatenation has the lowest rank): every split of every token into two
    tokens, ordered by the rank of the merged token. ``strings`` maps rank ->
    byte-level string."""
    get = ranks.get
    found = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left = get(token[:i])
            if left is not None:
                right = get(token[i:])
                if right is not None:
                    found.append((rank, left, right))
    found.sort()
    return [(strings[left], strings[right]) for _, left, right in found]


def _tiktoken_tokenizer(ranks: Mapping[bytes, int], pattern: str, nfc: bool) -> Any:
    """A tokenizers.Tokenizer that encodes like tiktoken with these ranks and split regex."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    strings = {r: _bytelevel_encode(b) for b, r in ranks.items()}
    vocab = {text: r for r, text in strings.items()}
    merges = _tiktoken_merges(ranks, strings)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    if nfc:  # Qwen's tiktoken tokenizer NFC-normalises before splitting
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def _detect_style(config: dict[str, Any]) -> tuple[str, str, bool]:
    """("bytelevel" | "sentencepiece" | "plain", the ▁ replacement char, byte_fallback)."""
    decoders = list(_walk(config.get("decoder")))
    others = list(_walk(config.get("pre_tokenizer"))) + list(_walk(config.get("normalizer")))
    byte_fallback = bool((config.get("model") or {}).get("byte_fallback")) or any(
        c.get("type") == "ByteFallback" for c in decoders
    )
    if any(c.get("type") == "ByteLevel" for c in decoders):
        return "bytelevel", "", byte_fallback
    for c in decoders + others:
        kind = c.get("type")
        if kind == "Metaspace":
            return "sentencepiece", c.get("replacement", "\u2581"), byte_fallback
        if kind == "Replace":
            replaced = ((c.get("pattern") or {}).get("String"), c.get("content"))
            if replaced in (("\u2581", " "), (" ", "\u2581")):  # either way round
                return "sentencepiece", "\u2581", byte_fallback
    if any(c.get("type") == "ByteLevel" for c in others):
        return "bytelevel", "", byte_fallback
    return "plain", "", byte_fallback


def _json_token_bytes(config: dict[str, Any]) -> tuple[list[bytes | None], dict[str, int]]:
    """Token bytes and special tokens of a parsed tokenizer.json."""
    model = config.get("model") or {}
    kind = model.get("type") or ("BPE" if "merges" in model else "")
    vocab = model.get("vocab")
    if kind in ("WordPiece", "WordLevel"):
        raise ValueError(f"{kind} tokenizers are not supported for generation (no byte mapping)")
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        pieces: Iterable[tuple[str, int]] = ((p[0], i) for i, p in enumerate(vocab))
        n_model = len(vocab)
    elif isinstance(vocab, dict):
        pieces = vocab.items()
        n_model = max(vocab.values(), default=-1) + 1
    else:
        raise ValueError("tokenizer.json has no model vocabulary")
    added = config.get("added_tokens") or []
    size = max([n_model] + [a["id"] + 1 for a in added])
    style, space, byte_fallback = _detect_style(config)
    base: list[bytes | None] = [None] * size
    model_piece: dict[int, str] = {}
    for piece, i in pieces:
        model_piece[i] = piece
        if style == "bytelevel":
            base[i] = _bytelevel_decode(piece)
        elif style == "sentencepiece":
            base[i] = _sentencepiece_decode(piece, space, byte_fallback)
        else:
            base[i] = piece.encode("utf-8")
    specials: dict[str, int] = {}
    for a in added:
        i, content = a["id"], a["content"]
        if a.get("special"):
            base[i] = None
            specials.setdefault(content, i)
        elif model_piece.get(i) != content:
            base[i] = content.encode("utf-8")  # added text token: decodes to its content
    unk = model.get("unk_token")
    unk_id = model.get("unk_id") if isinstance(vocab, list) else (vocab or {}).get(unk)
    if isinstance(unk_id, int) and 0 <= unk_id < size:
        base[unk_id] = None  # <unk> stands for "some unknown text": never emit it
        specials.setdefault(unk if isinstance(unk, str) else model_piece.get(unk_id, "<unk>"), unk_id)
    return base, specials


# --------------------------------------------------------------------------- tiktoken
def _read_tiktoken(data: bytes) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _is_tiktoken_file(data: bytes) -> bool:
    first = data[:200].split(b"\n", 1)[0].split()
    return len(first) == 2 and first[1].isdigit() and re.fullmatch(rb"[A-Za-z0-9+/=]+", first[0]) is not None


def _tiktoken_preset(name: str, n_ranks: int) -> _TiktokenPreset | None:
    name = name.lower()
    for key, preset in _TIKTOKEN_PRESETS.items():
        if key in name:
            return preset
    if n_ranks == 128000:
        return _TIKTOKEN_PRESETS["llama3"]
    return None


def _ranks_base(ranks: Mapping[bytes, int], specials: Mapping[str, int]) -> list[bytes | None]:
    size = max([max(ranks.values(), default=-1) + 1] + [i + 1 for i in specials.values()])
    base: list[bytes | None] = [None] * size
    for token, rank in ranks.items():
        base[rank] = token
    for i in specials.values():
        base[i] = None
    return base
