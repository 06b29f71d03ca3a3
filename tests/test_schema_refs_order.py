"""``allOf``-style conjunctions of subschemas are ordered by place in the document, not by
object identity, so one schema compiles to one grammar in every process."""

from __future__ import annotations

from sgl.constrain.json_schema.refs import Sub, mk_sand, mk_snot


def _pair(first_made_last: bool):
    """Two subschema nodes at /allOf/0 and /allOf/1, made in either order (so their ids,
    which follow allocation, can come in either order)."""
    if first_made_last:
        b = {"minLength": 2}
        a = {"maxLength": 5}
    else:
        a = {"maxLength": 5}
        b = {"minLength": 2}
    return Sub(a, "", "/allOf/0"), Sub(b, "", "/allOf/1")


def test_conjunction_order_follows_pointers_not_ids():
    seen, mixed = set(), set()
    for flip in (False, True) * 20:
        x, y = _pair(flip)
        seen.add(id(x.node) < id(y.node))
        for args in ((x, y), (y, x)):
            assert [i.ptr for i in mk_sand(*args).items] == ["/allOf/0", "/allOf/1"]
        mixed.add(tuple(type(i).__name__ for i in mk_sand(mk_snot(y), x).items))
        mixed.add(tuple(type(i).__name__ for i in mk_sand(x, mk_snot(y)).items))
    assert len(mixed) == 1
    assert seen == {True, False}, "the nodes' ids never came in both orders: the test proves nothing"


def test_negated_conjunction_has_a_place():
    x, y = _pair(False)
    z = Sub({"pattern": "a"}, "", "/not")
    got = mk_sand(z, mk_snot(mk_sand(x, y)))
    assert len(got.items) == 2
