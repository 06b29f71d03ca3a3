"""Prebuilt lexemes of the JSON Schema ``format``s, shipped with the package (issue 9).

A format's decoded language (``json_formats.format_node``), its JSON string lexeme
(``json_strings.json_string_node``) and that lexeme's minimal DFA are the same in every
process, yet building them took a process's first schema using the format 5 ms
(``date``) to 100 ms (``iri``: escaping 40 ms, a subset construction of 411 states
60 ms; ``regex`` 140 ms). ``format_lexemes.bin`` holds them, one compressed entry per
format, read on the format's first use; ``python -m sgl.constrain.format_lexemes``
writes it again. The file names a fingerprint of the format regexes and is ignored when
they changed; a test rebuilds every entry and compares it with the file, so a change to
the lowering (escaping, DFA construction) that the fingerprint cannot see fails there.

The prebuilt pieces are only used where they are exactly what would be built: the
lexeme for ``json_string_node``'s default limits, the DFA for ``terminal_dfa``'s
default budget (the caller passes whether the limits are the default ones).
"""

from __future__ import annotations

import hashlib
import pickle
import threading
import zlib
from pathlib import Path

import numpy as np

from .automata.dfa import ByteDFA
from .regex_ast import Node

DATA = Path(__file__).with_name("format_lexemes.bin")
LEXEME_LIMITS = (2000, 20_000)  # json_string_node's default max_states, max_size

_lock = threading.Lock()
_entries: dict[str, bytes] | None = None
_lexeme_of: dict[Node, Node] = {}  # decoded format language -> its JSON string lexeme
_dfa_of: dict[Node, ByteDFA] = {}  # lexeme -> its minimal DFA
_decoded_of: dict[str, Node] = {}  # format name -> its decoded language, as read first


def fingerprint(regexes: dict[str, str]) -> str:
    """What the file was built from: the format regexes (name and text)."""
    return hashlib.sha256(repr(sorted(regexes.items())).encode()).hexdigest()


def _load(regexes: dict[str, str]) -> dict[str, bytes]:
    global _entries
    if _entries is None:
        entries: dict[str, bytes] = {}
        try:
            stored = pickle.loads(DATA.read_bytes())
            if stored.get("fingerprint") == fingerprint(regexes):
                entries = stored["formats"]
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, AttributeError, TypeError):
            pass  # no usable file: every format is built as before
        _entries = entries
    return _entries


def shipped_format(name: str, regexes: dict[str, str]) -> Node | None:
    """The decoded language of format ``name`` from the file (None if it has none), its
    lexeme and DFA registered for ``lexeme_for`` and ``dfa_for``."""
    with _lock:
        got = _decoded_of.get(name)
        if got is not None:
            return got
        blob = _load(regexes).get(name)
        if blob is None:
            return None
        decoded, lexeme, table, accepting = pickle.loads(zlib.decompress(blob))
        _lexeme_of.setdefault(decoded, lexeme)
        if lexeme not in _dfa_of:
            _dfa_of[lexeme] = ByteDFA(np.ascontiguousarray(table, dtype=np.int32),
                                      np.ascontiguousarray(accepting, dtype=bool))
        # one object per format: unpickling it again for every subschema with the
        # format (and hashing the fresh tree) was ~4% of a p90 schema's frontend
        _decoded_of[name] = decoded
        return decoded


def lexeme_for(decoded: Node) -> Node | None:
    """The shipped lexeme of a format's decoded language (default limits), or None."""
    return _lexeme_of.get(decoded)


def dfa_for(lexeme: Node) -> ByteDFA | None:
    """The shipped DFA of a format's lexeme (default budget), or None."""
    return _dfa_of.get(lexeme)


def loaded_count() -> int:
    """How many shipped DFAs this process has loaded (one per format used so far)."""
    return len(_dfa_of)


def forget_file() -> None:
    """Drop what was read from the file, so the next use reads ``DATA`` again."""
    global _entries
    with _lock:
        _entries = None
        _decoded_of.clear()


def build_entry(name: str) -> tuple[Node, Node, np.ndarray, np.ndarray]:
    """Format ``name``'s (decoded language, lexeme, DFA table, accepting), built afresh."""
    from .automata.compiler import to_dfa
    from .json_formats import FORMAT_REGEXES
    from .json_strings import build_json_string_node
    from .regex import parse_regex

    decoded = parse_regex(FORMAT_REGEXES[name])
    lexeme = build_json_string_node(decoded, *LEXEME_LIMITS)
    dfa = to_dfa(lexeme)
    return decoded, lexeme, dfa.table, dfa.accepting


def write(path: Path = DATA) -> None:
    """Build every format's entry and write the file."""
    from .json_formats import FORMAT_REGEXES

    formats = {name: zlib.compress(pickle.dumps(build_entry(name), protocol=5), 9) for name in FORMAT_REGEXES}
    path.write_bytes(pickle.dumps({"fingerprint": fingerprint(FORMAT_REGEXES), "formats": formats}, protocol=5))


if __name__ == "__main__":
    write()
    print(f"wrote {DATA} ({DATA.stat().st_size} bytes)")
