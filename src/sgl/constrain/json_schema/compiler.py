"""The JSON Schema compiler: one class assembled from the concern mixins of this package."""

from __future__ import annotations

import time
import warnings as _warnings
from urllib.parse import urldefrag, urljoin

from ..errors import CompileBudgetExceeded, ConstraintError, check_deadline
from ..grammar import Grammar, GrammarBuilder, UniqueKeys, prune
from .common import DEFAULT_BASE, MAX_SCHEMA_ORDER_RULES, MAX_SECONDS, Options
from .emit_arrays import ArrayEmitter
from .emit_objects import ObjectEmitter
from .emit_scalars import ScalarEmitter
from .facets import FacetAlgebra
from .keywords import KeywordFacets
from .refs import RefResolver
from .values import ValueSets

# ---------------------------------------------------------------------------
# The compiler


class JsonSchemaCompiler(RefResolver, KeywordFacets, ValueSets, FacetAlgebra, ScalarEmitter, ArrayEmitter, ObjectEmitter):
    """Compiles one schema document; see ``json_schema_grammar``."""

    def __init__(self, schema, opts: Options):
        self.opts = opts
        self.t0 = time.perf_counter()
        self._ticks = 0  # check_time calls
        self.root = schema
        self.draft = self._draft(schema)
        self.resources: dict[str, tuple] = {}  # uri (no fragment) -> (node, ptr)
        self.anchors: dict[str, tuple] = {}  # uri#anchor -> (node, base, ptr)
        self.dynamic_anchors: dict[str, int] = {}
        self.base_of: dict[int, str] = {}
        self.ptr_of: dict[int, str] = {}
        self.resolved: dict[tuple[str, str], tuple] = {}  # (base, $ref) -> (node, base, ptr)
        self.root_base = DEFAULT_BASE
        if isinstance(schema, dict) and isinstance(schema.get("$id"), str):
            self.root_base = urldefrag(urljoin(DEFAULT_BASE, schema["$id"]))[0]
        self.resources[DEFAULT_BASE] = (schema, "")
        self._scan(schema, self.root_base, "", root=True)
        self.facets_memo: dict = {}
        self.in_progress: dict = {}  # schema key -> negations around it when entered
        self.negations = 0  # not / oneOf / if around the schema being computed
        self.cut_at = 1 << 30  # a cycle was cut at this depth of in_progress (keywords.any_of_branch)
        self.b = GrammarBuilder()
        self.value_memo: dict = {}
        self.validators: dict = {}
        self._punct: dict[str, str] = {}
        self._terms: dict[int, tuple] = {}
        self._strings: dict = {}  # string expression -> lexeme node
        self._keys: dict[str, str] = {}  # property name -> key terminal
        self._extra_keys: dict = {}  # (declared, patterns...) -> key terminal for other keys
        self.order_rules_left = MAX_SCHEMA_ORDER_RULES * (3 if opts.any_order else 1)
        self.loose_keys: set[str] = set()  # key lexemes of members the grammar lets repeat (track_keys)
        self.string_keys: set[str] = set()  # every key lexeme (UniqueKeys.strings)

    # -- errors ------------------------------------------------------------------
    def refuse(self, message: str, ptr: str, keyword: str | None = None) -> None:
        """Raise, or with ``lenient`` record a warning and let the caller drop the keyword."""
        if not self.lenient_about(keyword):
            raise ConstraintError(message, ptr or "#", keyword=keyword)
        text = f"{message} (at {ptr or '#'}); keyword ignored, output may not satisfy it"
        if self.opts.warnings is not None:
            self.opts.warnings.append(text)
        _warnings.warn(text, stacklevel=3)

    def lenient_about(self, keyword: str | None) -> bool:
        """Does a refusal of ``keyword`` become a warning? (``lenient``: True or a set of keywords)"""
        lenient = self.opts.lenient
        return lenient is True or (isinstance(lenient, frozenset) and keyword in lenient)

    def note(self, message: str, ptr: str) -> None:
        """Record a documented deviation that is not a refusal: a sound restriction (output
        still valid, fewer outputs allowed) or a documented over-approximation (format "regex")."""
        text = f"{message} (at {ptr or '#'})"
        if self.opts.warnings is not None and text not in self.opts.warnings:
            self.opts.warnings.append(text)

    def malformed(self, message: str, ptr: str, keyword: str | None = None):
        return ConstraintError(f"malformed schema: {message}", ptr or "#", keyword=keyword)

    def check_time(self) -> None:
        # every 8th call reads the clocks: calls come per subschema and member (~20 in
        # a median compile, thousands in a large one), microseconds apart, and the two
        # clock reads were ~2% of a median compile
        self._ticks += 1
        if self._ticks & 7:
            return
        check_deadline("compiling the schema")
        if time.perf_counter() - self.t0 > MAX_SECONDS:
            raise CompileBudgetExceeded(f"JSON schema compilation exceeded {MAX_SECONDS:.0f} s")

    def _unique_keys(self) -> UniqueKeys | None:
        """The parser's duplicate-key check for the members the grammar lets repeat."""
        if not self.loose_keys:
            return None
        p = self._punct.get
        return UniqueKeys(tuple(filter(None, [p("{")])), tuple(filter(None, [p("[")])),
                          tuple(filter(None, [p("}"), p("]")])), tuple(filter(None, [p(",")])),
                          tuple(filter(None, [p(":")])), frozenset(self.loose_keys), frozenset(self.string_keys))

    # -- entry --------------------------------------------------------------------------
    def build(self) -> Grammar:
        meta = self.root.get("$schema") if isinstance(self.root, dict) else None
        if isinstance(meta, str) and "json-schema.org" not in meta:
            self.refuse(f"unknown meta-schema {meta!r}: its vocabularies cannot be checked", "/$schema", "$schema")
        root = self.root_sub()
        start = self.value_nt(root)
        if start is None:
            raise ConstraintError("the schema matches no JSON value", "#")
        # states of the unrolled counters may have no rules (dead ends): prune, then validate
        return prune(
            Grammar(start, self.b.rules, self.b.terminals, [], "json_schema", self._unique_keys()),
            refusal=ConstraintError("the schema matches no JSON value", "#"),
        )
