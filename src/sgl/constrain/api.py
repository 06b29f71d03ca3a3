"""The public compile functions, with a small cache keyed by content and vocabulary.

Every input is checked here before any frontend sees it: a wrong type, a NaN or an
infinity in a schema, an unknown option, nesting deeper than ``MAX_NESTING`` schema
levels is a ``ConstraintError`` naming what and where (issue 14). Compiles run on a
thread with a large stack and a raised recursion limit, so nesting up to the
documented limits works; nesting beyond what that allows is refused, not crashed.
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from . import gc_policy
from .compiled import CompileBudget, CompiledGrammar, choices_grammar
from .errors import CompileBudgetExceeded, ConstraintError, line_col, set_deadline

if TYPE_CHECKING:
    from .grammar import Grammar
    from .vocab import Vocabulary

_CACHE_SIZE = 64
_CACHE_BYTES = 512 << 20  # lexeme DFA tables of the cached grammars, in all
_cache: OrderedDict = OrderedDict()
_cache_lock = threading.Lock()

MAX_NESTING = 1000  # schema objects inside schema objects (a JSON pointer names the first too deep)
MAX_TEXT_NESTING = 500  # parenthesised groups inside each other in grammar or regex text
_DEEP_STACK_BYTES = 256 << 20  # the compile thread's stack: deep grammars recurse in C too
_DEEP_RECURSION_LIMIT = 20_000
_JSON_OPTIONS = {"any_order": bool, "lenient": object, "whitespace": str, "max_whitespace": int, "warnings": list,
                 "max_fraction_digits": int, "numbers": str}
_SYNTAXES = {"lark": "start", "gbnf": "root", "ebnf": "root", "structural_tag": "start"}

T = TypeVar("T")


def clear_cache() -> None:
    """Forget every compiled grammar kept by content (the next compile builds afresh)."""
    with _cache_lock:
        _cache.clear()


def _cached(key: tuple, build: Callable[[], CompiledGrammar]) -> CompiledGrammar:
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    compiled = build()
    size = getattr(compiled, "nbytes", 0)
    if size > _CACHE_BYTES // 4:
        return compiled  # a huge grammar would push out everything else: not kept
    with _cache_lock:
        _cache[key] = compiled
        total = sum(getattr(c, "nbytes", 0) for c in _cache.values())
        while len(_cache) > _CACHE_SIZE or (total > _CACHE_BYTES and len(_cache) > 1):
            _, old = _cache.popitem(last=False)
            total -= getattr(old, "nbytes", 0)
    return compiled


_deep_lock = threading.Lock()
_deep_active = 0
_saved_limit = 0
_MAX_IDLE_WORKERS = 4  # big-stack threads kept for the next compiles


class _DeepWorker:
    """A thread with a large stack that runs compiles one after another.

    Starting such a thread (a 256 MiB stack mapped and unmapped) cost ~0.5 ms of CPU
    per compile, a tenth of a typical one; idle workers wait for the next compile
    instead (at most ``_MAX_IDLE_WORKERS``; more callers at once start more).
    """

    idle: list[_DeepWorker] = []

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        old_size = threading.stack_size(_DEEP_STACK_BYTES)
        try:
            threading.Thread(target=self.loop, name="sgl-compile", daemon=True).start()
        finally:
            threading.stack_size(old_size)

    def loop(self) -> None:
        while True:
            job = self.jobs.get()
            job()
            # the job's closure holds its result: kept here, the last compiled grammar
            # would live until the next compile, and be freed inside it
            job = None
            with _deep_lock:
                if len(self.idle) >= _MAX_IDLE_WORKERS:
                    return
                self.idle.append(self)

    @classmethod
    def take(cls) -> _DeepWorker | None:
        """An idle worker or a new one (None when no thread with that stack can start).
        Call with ``_deep_lock`` held."""
        if cls.idle:
            return cls.idle.pop()
        try:
            return cls()
        except RuntimeError:  # no room for the stack (an address-space limit)
            return None


def run_deep(fn: Callable[[], T], what: str, budget: CompileBudget | None = None) -> T:
    """``fn()`` on a thread with a large stack and a raised recursion limit.

    Frontends and analyses recurse over the input's nesting; this lets them go as deep
    as the documented limits without touching the caller's stack, and turns a
    ``RecursionError`` beyond that into a ``ConstraintError`` about ``what``. The
    thread's compile deadline (``errors.check_deadline``) is ``budget.seconds`` away.
    """
    global _deep_active, _saved_limit
    out: dict[str, Any] = {}
    done = threading.Event()
    seconds = (budget or CompileBudget()).seconds

    def target() -> None:
        set_deadline(time.monotonic() + seconds)
        try:
            with gc_policy.compiling():
                out["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread below
            out["error"] = e
        finally:
            done.set()

    with _deep_lock:
        if _deep_active == 0:
            _saved_limit = sys.getrecursionlimit()
            sys.setrecursionlimit(max(_saved_limit, _DEEP_RECURSION_LIMIT))
        _deep_active += 1
        worker = _DeepWorker.take()  # never the caller's own: a busy worker is not idle
    try:
        if worker is None:
            target()
        else:
            worker.jobs.put(target)
            done.wait()
    finally:
        with _deep_lock:
            _deep_active -= 1
            if _deep_active == 0:
                sys.setrecursionlimit(_saved_limit)
    # taken out of ``out``, which the job's closure shares: the worker drops the closure
    # only after ``done`` wakes this thread, so a result left there could outlive the
    # caller's last reference to it (a race the compile-thread test lost under load)
    err = out.pop("error", None)
    if isinstance(err, RecursionError):
        raise ConstraintError(f"{what} is nested too deeply to compile") from None
    if err is not None:
        raise err
    return out.pop("value")


def _vocab_key(vocab: Vocabulary | None) -> str:
    return "" if vocab is None else getattr(vocab, "fingerprint", str(id(vocab)))


def _check_budget(budget: object) -> CompileBudget | None:
    if budget is not None and not isinstance(budget, CompileBudget):
        raise ConstraintError(f"budget must be a CompileBudget, not {type(budget).__name__}")
    return budget


def compile_regex(pattern: str, vocab: Vocabulary | None = None, *, budget: CompileBudget | None = None) -> CompiledGrammar:
    """Compile a Python ``re`` pattern (whole-text match, as ``re.fullmatch``).

    ``budget`` (a ``CompileBudget``) overrides the default compile limits.
    """
    from .regex import regex_grammar

    if not isinstance(pattern, str):
        raise ConstraintError(f"regex must be a string, not {type(pattern).__name__}")
    budget = _check_budget(budget)
    check_nesting(pattern, "regex")
    return _cached(
        ("regex", pattern, budget, _vocab_key(vocab)),
        lambda: run_deep(lambda: _regex_or_chars(regex_grammar(pattern), vocab, budget or CompileBudget()),
                         "the regex", budget),
    )


def _regex_or_chars(g: Grammar, vocab: Vocabulary | None, budget: CompileBudget) -> CompiledGrammar:
    """The regex as one lexeme; when its DFA is over a size budget or takes more than
    half the time budget to build, as a grammar of one-character lexemes instead
    (``counters.char_grammar``: the parser runs it as an NFA), or the first refusal if
    that fails too."""
    from .counters import MAX_CHAR_GRAMMAR_NODES, char_grammar

    node = g.terminals["T"].pattern
    if len(g.source) > MAX_CHAR_GRAMMAR_NODES or getattr(node, "words", None) is not None:
        return CompiledGrammar(g, vocab, budget=budget)  # no fallback (see char_grammar): all the time
    start = time.monotonic()
    set_deadline(start + budget.seconds / 2)
    try:
        return CompiledGrammar(g, vocab, budget=budget)
    except CompileBudgetExceeded as e:
        if e.budget == "choice_states":
            raise  # a list of words: one character per lexeme would not be smaller
        set_deadline(start + budget.seconds)
        chars = char_grammar(node, g.source)
        if chars is None:
            raise
        try:
            out = CompiledGrammar(chars, vocab, budget=budget)
        except ConstraintError:
            raise e from None
        if time.monotonic() - start > budget.seconds:  # both attempts together
            raise budget.over("seconds", f"{time.monotonic() - start:.1f}", budget.seconds) from None
        return out
    finally:
        set_deadline(start + budget.seconds)


def compile_json_schema(schema: dict | bool | str | bytes, vocab: Vocabulary | None = None, *,
                        budget: CompileBudget | None = None, **options: Any) -> CompiledGrammar:
    """Compile a JSON Schema (dict, JSON text or bool). See ``json_schema.json_schema_grammar``.

    ``options``: ``any_order``, ``lenient``, ``whitespace``, ``max_whitespace``, ``warnings``,
    ``max_fraction_digits`` (opt-in: numbers spelt with at most that many digits after the point),
    ``numbers`` (``"canonical"``, opt-in: each number in its shortest plain spelling);
    ``budget`` (a ``CompileBudget``) overrides the default compile limits.
    """
    from .json_schema import json_schema_grammar

    for name, value in options.items():
        kind = _JSON_OPTIONS.get(name)
        if kind is None:
            raise ConstraintError(f"unknown JSON Schema option {name!r} (known: {', '.join(_JSON_OPTIONS)})")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConstraintError(f"option {name} must be {kind.__name__}, not {type(value).__name__}")
    budget = _check_budget(budget)

    def build() -> CompiledGrammar:
        tree = _load_schema(schema)
        text = json.dumps(tree, sort_keys=True)  # as long as json.dumps(tree): the size budget's measure
        key = ("json", text, json.dumps(options, sort_keys=True, default=str), budget, _vocab_key(vocab))
        # the parser keeps keys from repeating (grammar.UniqueKeys): optional members in any order
        return _cached(key, lambda: CompiledGrammar(
            json_schema_grammar(tree, track_keys=True, text_size=len(text), **options), vocab, budget=budget))

    return run_deep(build, "the schema", budget)


def _load_schema(schema: object) -> dict | bool:
    """The schema as a checked JSON value: text parsed, NaN/Infinity refused, depth bounded."""
    from .json_schema import MAX_SCHEMA_BYTES

    if isinstance(schema, str):
        if len(schema) > MAX_SCHEMA_BYTES:
            raise CompileBudgetExceeded(f"schema text is larger than {MAX_SCHEMA_BYTES} bytes (budget: schema size)")
        try:
            schema = json.loads(schema, parse_constant=_refuse_constant)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"schema is not valid JSON: {e.msg}", f"line {e.lineno}, column {e.colno}") from e
    if not isinstance(schema, dict | bool):
        raise ConstraintError(f"a schema must be an object or a boolean, not {type(schema).__name__}", "#")
    check_json_value(schema, MAX_NESTING)
    return schema


def _refuse_constant(name: str):
    raise ConstraintError(f"{name} is not a JSON number")


def check_json_value(value: object, max_depth: int) -> None:
    """Refuse what is not plain JSON (NaN, infinities, non-string keys, bytes, sets...) and
    objects nested more than ``max_depth`` deep, naming the JSON pointer. Iterative.

    A node's place is kept as a link to its parent's (``(parent, key)``) with the length
    of its pointer, spelled out only for a message: building every pointer cost ~0.1 ms
    per schema. Strings, integers and null are checked without a trip through the stack.
    """
    stack: list[tuple[Any, Any, int, int]] = [(value, None, 0, 0)]
    push, pop = stack.append, stack.pop
    while stack:
        v, place, depth, plen = pop()
        if isinstance(v, dict):
            if depth >= max_depth:
                raise ConstraintError(f"schema is nested more than {max_depth} objects deep", f"#{_pointer(place)}")
            for k, item in v.items():
                if not isinstance(k, str):
                    raise ConstraintError(f"object key {k!r} is not a string", f"#{_pointer(place)}")
                if not (item is None or isinstance(item, str | int)):
                    push((item, (place, k), depth + 1, plen + 1 + len(k) + k.count("~") + k.count("/")))
        elif isinstance(v, list | tuple):
            if plen > 64 * max_depth:  # lists of lists: bound them the same way
                raise ConstraintError(f"schema is nested more than {max_depth} levels deep", f"#{_pointer(place)[:200]}...")
            for i, item in enumerate(v):
                if not (item is None or isinstance(item, str | int)):
                    push((item, (place, i), depth, plen + 1 + len(str(i))))
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ConstraintError(f"{v} is not a JSON number", f"#{_pointer(place)}")
        elif not (v is None or isinstance(v, str | int)):
            raise ConstraintError(f"a {type(v).__name__} is not a JSON value", f"#{_pointer(place)}")


def _pointer(place: Any) -> str:
    """The JSON pointer of a ``check_json_value`` place (``(parent place, key)`` links)."""
    keys = []
    while place is not None:
        place, key = place
        keys.append(str(key).replace("~", "~0").replace("/", "~1"))
    return "".join("/" + k for k in reversed(keys))


def check_nesting(text: str, syntax: str) -> str:
    """Refuse grammar or regex text whose groups nest deeper than ``MAX_TEXT_NESTING``,
    naming the place (parsers and analyses spend time per level and per nested level).

    Parentheses inside quotes, character classes and Lark ``/regex/`` terminals are
    skipped the way each syntax writes them; an unbalanced text is left to its parser.
    """
    depth, i, n = 0, 0, len(text)
    quotes = "\"'" if syntax != "regex" else ""
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if (syntax == "lark" and text.startswith("//", i)) or (syntax in ("gbnf", "ebnf") and c == "#"):
            end = text.find("\n", i)  # a comment, to the end of its line
            i = n if end < 0 else end + 1
            continue
        if c in quotes or (syntax == "lark" and c == "/" and text[i + 1:i + 2] not in ("/", "")):
            end = text.find(c, i + 1)
            while end > 0 and text[end - 1] == "\\" and text[end - 2:end] != "\\\\":
                end = text.find(c, end + 1)
            i = n if end < 0 else end + 1
            continue
        if c == "[":
            end = text.find("]", i + 2)
            i = n if end < 0 else end + 1
            continue
        if c == "(":
            depth += 1
            if depth > MAX_TEXT_NESTING:
                raise ConstraintError(f"groups nest more than {MAX_TEXT_NESTING} deep", line_col(text, i))
        elif c == ")":
            depth = max(0, depth - 1)
        i += 1
    return text


def compile_grammar(
    text: str, vocab: Vocabulary | None = None, syntax: str = "lark", start: str | None = None, *, budget: CompileBudget | None = None
) -> CompiledGrammar:
    """Compile a context-free grammar in Lark, GBNF (llama.cpp) or EBNF syntax, or a
    structural tag (``syntax="structural_tag"``: its JSON text; see ``structural_tag``).

    ``budget`` (a ``CompileBudget``) overrides the default compile limits.
    """
    if not isinstance(text, str):
        raise ConstraintError(f"grammar text must be a string, not {type(text).__name__}")
    if not isinstance(syntax, str) or syntax not in _SYNTAXES:
        raise ConstraintError(f"unknown grammar syntax {syntax!r} (use 'lark', 'gbnf', 'ebnf' or 'structural_tag')")
    if start is not None and not isinstance(start, str):
        raise ConstraintError(f"start must be a rule name, not {type(start).__name__}")
    budget = _check_budget(budget)
    if syntax == "lark":
        from .lark_grammar import lark_grammar as frontend
    elif syntax == "gbnf":
        from .gbnf import gbnf_grammar as frontend
    elif syntax == "structural_tag":
        from .structural_tag import structural_tag_grammar as frontend
    else:
        from .gbnf import ebnf_grammar as frontend
    start = start or _SYNTAXES[syntax]
    key = ("grammar", syntax, text, start, budget, _vocab_key(vocab))
    return _cached(
        key, lambda: run_deep(
            lambda: CompiledGrammar(frontend(check_nesting(text, syntax), start=start), vocab, budget=budget),
            "the grammar", budget,
        )
    )


def compile_choices(choices: Sequence[str], vocab: Vocabulary | None = None, *, budget: CompileBudget | None = None) -> CompiledGrammar:
    """Compile a list of alternative strings; the output is exactly one of them.

    Any number of choices compiles through one trie (100,000 in a few seconds);
    ``budget`` (a ``CompileBudget``) overrides the default compile limits.
    """
    if not isinstance(choices, list | tuple):
        raise ConstraintError(f"choices must be a list of strings, not {type(choices).__name__}")
    for i, c in enumerate(choices):
        if not isinstance(c, str):
            raise ConstraintError(f"choice {i} is a {type(c).__name__}, not a string", f"choice {i}")
    budget = _check_budget(budget)
    items = tuple(choices)
    return _cached(
        ("choices", items, budget, _vocab_key(vocab)),
        lambda: run_deep(lambda: CompiledGrammar(choices_grammar(list(items)), vocab, budget=budget), "the choices", budget),
    )


_SPEC_KINDS = ("json_schema", "regex", "grammar", "choices")


def schema_of(schema: Any) -> dict | str | bool | None:
    """A JSON Schema from a dict, JSON text, a bool or a pydantic model class."""
    if schema is None or isinstance(schema, dict | str | bool):
        return schema
    to_schema = getattr(schema, "model_json_schema", None)
    if callable(to_schema):
        return to_schema()
    raise ConstraintError(
        f"json_schema must be a dict, a JSON string or a pydantic model class, not {type(schema).__name__}"
    )


def compile_spec(
    spec: Any, vocab: Vocabulary | None = None, *, budget: CompileBudget | None = None, json_options: dict | None = None
) -> CompiledGrammar | None:
    """Compile a constraint spec (``sgl.types.ConstraintSpec`` or any object with its
    fields) for ``vocab``: the one place a spec becomes a grammar.

    Exactly one of ``json_schema`` (a dict, JSON text, a bool or a pydantic model
    class), ``regex``, ``grammar`` (in ``grammar_syntax``) or ``choices`` may be set;
    none set (or ``spec`` None) gives None. Compiles are cached, bounded in entries and
    bytes, by content and vocabulary.
    """
    if spec is None:
        return None
    given = [k for k in _SPEC_KINDS if getattr(spec, k, None) is not None]
    if not given:
        return None
    if len(given) > 1:
        raise ConstraintError(f"give one constraint, not {' and '.join(given)}")
    kind = given[0]
    value = getattr(spec, kind)
    if kind == "json_schema":
        return compile_json_schema(schema_of(value), vocab, budget=budget, **dict(json_options or {}))
    if kind == "regex":
        return compile_regex(value, vocab, budget=budget)
    if kind == "grammar":
        return compile_grammar(value, vocab, syntax=getattr(spec, "grammar_syntax", "lark"), budget=budget)
    if isinstance(value, str):
        raise ConstraintError("choices must be a list of strings, not one string")
    return compile_choices(list(value), vocab, budget=budget)
