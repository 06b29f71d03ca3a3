"""Schema references: ``Sub``/``SAnd``/``SNot`` handles and ``$id``/``$anchor``/``$ref`` resolution."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urldefrag, urljoin

from .common import LIST_KEYWORDS, MAP_KEYWORDS, SCHEMA_KEYWORDS, _ptr_escape

# ---------------------------------------------------------------------------
# Schema references


class Sub:
    """A schema of the document: the JSON node, its base URI and its JSON pointer."""

    __slots__ = ("node", "base", "ptr", "uri", "key", "_hash")

    def __init__(self, node, base: str, ptr: str, uri: str = ""):
        self.node, self.base, self.ptr, self.uri = node, base, ptr, uri
        # identity of the node, computed once: subschemas are memo keys everywhere
        self.key = ("b", node) if isinstance(node, bool) else ("s", id(node))
        self._hash = hash(self.key)

    def __eq__(self, other):
        return isinstance(other, Sub) and self.key == other.key

    def __hash__(self):
        return self._hash

    def __repr__(self):
        return f"Sub({self.ptr or '#'})"


@dataclass(frozen=True)
class SAnd:
    items: tuple

    @property
    def key(self):
        return ("and",) + tuple(i.key for i in self.items)


@dataclass(frozen=True)
class SNot:
    item: object

    @property
    def key(self):
        return ("not", self.item.key)


TRUE = Sub(True, "", "")
FALSE = Sub(False, "", "")


def mk_sand(*refs):
    flat: dict = {}
    for r in refs:
        if isinstance(r, SAnd):
            for i in r.items:
                flat[i.key] = i
        elif isinstance(r, Sub) and r.node is True:
            continue
        elif isinstance(r, Sub) and r.node is False:
            return FALSE
        else:
            flat[r.key] = r
    if len(flat) < 2:  # (most calls: no sort, no repr of a key)
        return next(iter(flat.values())) if flat else TRUE
    # ordered by where the pieces are in the document, not by the nodes' ids: the same
    # schema gives the same grammar in every process (ids only break ties)
    return SAnd(tuple(sorted(flat.values(), key=lambda r: (_place(r), repr(r.key)))))


def _place(ref) -> tuple:
    """Where ``ref`` is in the document (its base URI and pointer), the same in every run."""
    if isinstance(ref, SNot):
        return ("not", _place(ref.item))
    if isinstance(ref, SAnd):
        return ("and", *map(_place, ref.items))
    if isinstance(ref.node, bool):
        return ("b", str(ref.node))
    return ("s", ref.base or "", ref.ptr or "")


def mk_snot(ref):
    if isinstance(ref, SNot):
        return ref.item
    if isinstance(ref, Sub) and isinstance(ref.node, bool):
        return FALSE if ref.node else TRUE
    return SNot(ref)


def is_true(ref) -> bool:
    return isinstance(ref, Sub) and ref.node is True


def is_false(ref) -> bool:
    return isinstance(ref, Sub) and ref.node is False


def split_ref(base: str, ref: str) -> tuple[str, str]:
    """``urldefrag(urljoin(base, ref))``. A fragment-only reference (``#/$defs/x``, most
    of them) keeps the base's resource whatever its fragment (RFC 3986 5.2.2): that part
    is worked out once per base, and the fragment is the text after the ``#``; the
    URL parsing per reference was ~3% of a p90 schema's frontend."""
    if len(ref) > 1 and ref[0] == "#":
        return _fragment_base(base), ref[1:]
    return _split_any(base, ref)


@lru_cache(maxsize=1024)
def _fragment_base(base: str) -> str:
    """The resource a fragment-only reference from ``base`` names (a non-empty fragment:
    ``urldefrag`` answers an empty one without normalising the URL)."""
    return urldefrag(urljoin(base, "#x"))[0]


@lru_cache(maxsize=4096)
def _split_any(base: str, ref: str) -> tuple[str, str]:
    """``urldefrag(urljoin(base, ref))``, memoised: a pure function of two strings, and
    the same few references are resolved from many places (and schemas)."""
    return tuple(urldefrag(urljoin(base, ref)))


class RefResolver:
    """Documents, ``$id`` resources, anchors and ``$ref`` resolution (a mixin of ``JsonSchemaCompiler``)."""

    # -- documents, $id, $anchor, $ref ------------------------------------------------
    @staticmethod
    def _draft(schema) -> int:
        if isinstance(schema, dict):
            s = schema.get("$schema", "")
            if isinstance(s, str):
                for d in ("draft-03", "draft-04", "draft-06", "draft-07"):
                    if d in s:
                        return int(d[-2:])
                if "2019-09" in s:
                    return 2019
        return 2020

    def _scan(self, node, base: str, ptr: str, root: bool = False) -> None:
        """Register ``$id`` resources and anchors; remember each schema's base and pointer."""
        if not isinstance(node, dict):
            return
        sid = node.get("$id")
        if isinstance(sid, str) and not (self.draft < 2019 and "$ref" in node):
            uri, frag = urldefrag(urljoin(base, sid))
            if frag and not uri.rstrip("#"):
                uri = base
            if frag and self.draft < 2019:  # draft-07 "$id": "#foo" is an anchor
                self.anchors[f"{urldefrag(base)[0]}#{frag}"] = (node, base, ptr)
            else:
                base = uri
                self.resources.setdefault(uri, (node, ptr))
        elif root:
            self.resources.setdefault(base, (node, ptr))
        self.base_of[id(node)] = base
        self.ptr_of[id(node)] = ptr
        for key in ("$anchor", "$dynamicAnchor"):
            a = node.get(key)
            if isinstance(a, str):
                self.anchors[f"{base}#{a}"] = (node, base, ptr)
                if key == "$dynamicAnchor":
                    self.dynamic_anchors[a] = self.dynamic_anchors.get(a, 0) + 1
        for kw, val in node.items():
            # the pointer is spelled only for keywords that hold subschemas
            if kw in MAP_KEYWORDS or (kw == "dependencies" and isinstance(val, dict)):
                if isinstance(val, dict):
                    p = f"{ptr}/{_ptr_escape(kw)}"
                    for k, v in val.items():
                        if isinstance(v, dict):
                            self._scan(v, base, f"{p}/{_ptr_escape(k)}")
            elif kw in LIST_KEYWORDS or (kw == "items" and isinstance(val, list)):
                if isinstance(val, list):
                    p = f"{ptr}/{_ptr_escape(kw)}"
                    for i, v in enumerate(val):
                        if isinstance(v, dict):
                            self._scan(v, base, f"{p}/{i}")
            elif kw in SCHEMA_KEYWORDS and isinstance(val, dict):
                self._scan(val, base, f"{ptr}/{_ptr_escape(kw)}")

    def sub(self, node, parent: Sub | None, ptr: str) -> Sub:
        """A handle for a child schema (its base is known from the scan)."""
        if isinstance(node, bool):
            return TRUE if node else FALSE
        base = self.base_of.get(id(node), parent.base if parent is not None else self.root_base)
        return Sub(node, base, self.ptr_of.get(id(node), ptr))

    def member_sub(self, node, parent: Sub, keyword: str, name: str) -> Sub:
        """``sub`` for the schema ``parent.node[keyword][name]`` (``properties``...): its
        pointer is spelled only if the scan did not record one (it records every object
        schema under those keywords), not for every member of every object."""
        if isinstance(node, bool):
            return TRUE if node else FALSE
        base = self.base_of.get(id(node), parent.base)
        ptr = self.ptr_of.get(id(node))
        if ptr is None:
            ptr = f"{parent.ptr}/{keyword}/{_ptr_escape(name)}"
        return Sub(node, base, ptr)

    def root_sub(self) -> Sub:
        return self.sub(self.root, None, "")

    def resolve(self, ref: str, at: Sub, keyword: str = "$ref") -> Sub | None:
        """The schema a ``$ref`` points to; None (after ``refuse``) when unresolvable."""
        # resolved targets by (base, ref): a definition is referenced from many places
        # (the URL parsing and the pointer walk were ~9% of a large schema's frontend);
        # a refusal is not kept (its message names the place of each reference)
        memo = self.resolved
        got = memo.get((at.base, ref))
        if got is None:
            got = self._resolve(ref, at, keyword)
            if got is None:
                return None
            memo[(at.base, ref)] = got
        node, base, ptr = got
        if isinstance(node, bool):
            return TRUE if node else FALSE
        return Sub(node, base, ptr)

    def _resolve(self, ref: str, at: Sub, keyword: str) -> tuple | None:
        """``resolve``'s target as (node, base, ptr); None after ``refuse``."""
        uri, frag = split_ref(at.base, ref)
        if not uri:
            uri = at.base
        if frag and not frag.startswith("/"):
            got = self.anchors.get(f"{uri}#{frag}")
            if got is None:
                self.refuse(f"$ref {ref!r}: anchor not found", at.ptr, keyword)
                return None
            return got
        res = self.resources.get(uri)
        if res is None:
            self.refuse(f"remote $ref {ref!r} is not supported (only references inside the schema)", at.ptr, keyword)
            return None
        node, ptr = res
        base = uri
        if frag:
            for raw in frag.split("/")[1:]:
                tok = unquote(raw).replace("~1", "/").replace("~0", "~")
                if isinstance(node, dict) and tok in node:
                    node = node[tok]
                elif isinstance(node, list) and tok.isdigit() and int(tok) < len(node):
                    node = node[int(tok)]
                else:
                    self.refuse(f"$ref {ref!r}: JSON pointer does not resolve", at.ptr, keyword)
                    return None
                ptr = f"{ptr}/{_ptr_escape(tok)}"
                if isinstance(node, dict) and id(node) in self.base_of:
                    base = self.base_of[id(node)]
        if isinstance(node, bool):
            return node, "", ""
        if not isinstance(node, dict):
            self.refuse(f"$ref {ref!r} does not point to a schema", at.ptr, keyword)
            return None
        return node, self.base_of.get(id(node), base), self.ptr_of.get(id(node), ptr)

    def _static_dynamic_ref(self, ref: str) -> bool:
        frag = urldefrag(ref)[1]
        return not frag or frag.startswith("/") or self.dynamic_anchors.get(frag, 0) <= 1
