"""The collector policy around masks: what a mask miss leaves is frozen (no full
collection inside later masks), and frozen cyclic garbage is still reclaimed once it
outgrows its bound."""

import gc
import weakref

import numpy as np
import pytest

import sgl.constrain as sc
from sgl.constrain import gc_policy


def _young() -> int:
    return sum(len(gc.get_objects(generation=g)) for g in range(3))


class _Node:
    pass


def _cycle() -> weakref.ref:
    """A two-object cycle nobody refers to: only the cyclic collector can free it."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def policy_enabled(monkeypatch):
    if not gc.isenabled():
        pytest.skip("the collector is disabled in this process")
    monkeypatch.delenv("SGL_GC_FREEZE", raising=False)
    gc_policy.read_environment()
    yield
    monkeypatch.undo()
    gc_policy.read_environment()


def test_a_mask_miss_leaves_nothing_for_the_collector_to_scan(llama3_vocab, policy_enabled):
    g = sc.compile_json_schema({"type": "object", "properties": {"a": {"type": "integer"}}}, llama3_vocab)
    m = sc.Matcher(g)
    out = sc.allocate_bitmask(1, llama3_vocab.n_vocab)
    for _ in range(3):
        m.fill_bitmask(out, 0)  # a miss: columns and walks made, then frozen
        young = _young()
        assert young < 20, young  # only what the test itself made since (91 without the policy)
        words = np.asarray(out[0]).view(np.uint32)
        allowed = np.flatnonzero(np.unpackbits(words.view(np.uint8), bitorder="little"))
        assert allowed.size
        assert m.advance(int(allowed[0]))


@pytest.mark.parametrize("after", ["after_mask_miss", "after_compile"])
def test_frozen_cycles_are_collected_once_they_outgrow_the_bound(monkeypatch, policy_enabled, after):
    """Compiles and mask misses share the bound (compiles collected in full every 64 before)."""
    monkeypatch.setattr(gc_policy, "FROZEN_GROWTH_FLOOR", 1_000)
    monkeypatch.setattr(gc_policy, "heap_after_full", 0)
    monkeypatch.setattr(gc_policy, "frozen_since_full", 0)
    freeze = getattr(gc_policy, after)
    first = _cycle()
    freeze()  # frozen: the cycle survives ...
    assert first() is not None
    gc.collect()  # ... even a full collection does not see frozen objects
    assert first() is not None
    keep = []
    for _ in range(20):  # ... until enough has been frozen: then a full collection
        keep.append([_Node() for _ in range(200)])
        freeze()
        if first() is None:
            break
    assert first() is None
    assert gc_policy.frozen_since_full < 1_000


def test_young_objects_are_counted_without_listing_them(policy_enabled):
    """Between a freeze and the next collection, the collector's own count is the
    number of young objects (what after_mask_miss adds to the frozen total); after a
    collection they are listed instead."""
    gc_policy.freeze()
    junk = [[i] for i in range(300)]  # < 700 allocations: no collection runs
    if gc_policy.collected_since_freeze():
        pytest.skip("a collection ran anyway")
    assert abs(gc_policy.young_objects() - _young()) <= 20  # net: frozen objects that die count against it
    gc.collect(0)
    assert gc_policy.collected_since_freeze()
    assert gc_policy.young_objects() == _young()
    del junk


@pytest.fixture
def environment(monkeypatch):
    """``monkeypatch`` for ``SGL_GC_FREEZE``: read again after the test's changes, and
    after they are undone."""
    yield monkeypatch
    monkeypatch.undo()
    gc_policy.read_environment()


def test_off_switch_leaves_the_collector_alone(environment):
    environment.setenv("SGL_GC_FREEZE", "0")
    gc_policy.read_environment()
    junk = [_Node() for _ in range(100)]
    gc_policy.after_mask_miss()
    gc_policy.after_compile()
    # The nodes are still in the collector's generations: not frozen. (Not the freeze
    # count: objects frozen earlier may die meanwhile, on any thread, and lower it.)
    tracked = {id(o) for o in gc.get_objects()}
    assert all(id(node) in tracked for node in junk)
    del junk


def test_no_collection_runs_inside_a_compile(policy_enabled, monkeypatch):
    """A compile runs with the collector paused (gc_policy.compiling): no young
    collection scans its allocations, and what it leaves is counted in O(1) and frozen;
    the collector is on again afterwards, and a cycle it dropped is still reclaimed by
    a full collection."""
    collections = []

    def count(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    seen_inside = []
    real = gc_policy.after_compile

    def after_compile():
        seen_inside.append((gc.isenabled(), gc_policy.collected_since_freeze()))
        real()

    monkeypatch.setattr(gc_policy, "after_compile", after_compile)
    gc.callbacks.append(count)
    try:
        props = {f"p{i}": {"type": "string", "maxLength": i + 1} for i in range(60)}
        sc.compile_json_schema({"type": "object", "properties": props, "additionalProperties": False})
    finally:
        gc.callbacks.remove(count)
    assert gc.isenabled()
    assert seen_inside == [(False, False)], seen_inside  # paused, and nothing collected
    assert collections == [], collections


def test_compiling_pauses_nest_and_respect_a_disabled_collector(policy_enabled):
    with gc_policy.compiling():
        assert not gc.isenabled()
        with gc_policy.compiling():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer compile still runs
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_policy.compiling():
            assert not gc.isenabled()
        assert not gc.isenabled()  # left as it was found
    finally:
        gc.enable()
