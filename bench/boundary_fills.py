"""What the C boundary recursion asks Python for, and what answering costs.

Runs ``bench/mask_phases.py`` (an in-process MaskBench walk) with ``NativeBoundaries``
instrumented: the C runs (count, CPU time, what each reported missing), the Python fills
by kind, and the fills of new scans (``python_scans`` mode: what the duplicate-key
grammars ran in before the check moved into the compiled scan, now only with
``boundary.FORCE_PYTHON_SCANS``) split into the parser's scan and the lexer of the new
column. Since h6-subwalk the sub-walks are made inside the C runs (their time is in "C
run"); a "walk" fill is one the C side could not make (a lexer without a C product).
Thread CPU time; the timers add ~0.5 µs per fill. Prints after the phase table.

    SGL_SHARED_DATA=... PYTHONPATH=$PWD/src python bench/boundary_fills.py --limit 5
"""

from __future__ import annotations

import runpy
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ms: Counter = Counter()  # name -> ns
n: Counter = Counter()


class _Runs:
    """The C ``Boundaries`` object with its ``run`` timed and its reports counted."""

    def __init__(self, c):
        self._c = c

    def __getattr__(self, name):
        return getattr(self._c, name)

    def run(self, *a):
        t = time.thread_time_ns()
        got = self._c.run(*a)
        ms["C run"] += time.thread_time_ns() - t
        n["C run"] += 1
        if got:
            n["C run reporting " + "+".join(sorted({i[0] for i in got}))] += 1
        return got


def instrument() -> None:
    from sgl.constrain import boundary

    nb = boundary.NativeBoundaries
    init, fill = nb.__init__, nb._fill

    def timed_init(self, *a, **kw):
        init(self, *a, **kw)
        self._c = _Runs(self._c)

    def timed_fill(self, item, check_budget, walk_rest):
        t = time.thread_time_ns()
        if item[0] != "scan":
            fill(self, item, check_budget, walk_rest)
        else:  # the "scan" branch of _fill, split
            _, col, L, st = item
            column, lexemes = self._parser.columns[col], self._lexers[L].accepts[st]
            known = "known" if lexemes in column.children else "new"
            nxt = self._parser.scan(column, lexemes)
            t2 = time.thread_time_ns()
            if nxt is not None:
                self._c.set_column_lexer(nxt.uid, self.lexer_id(self._lexer.for_lexemes(nxt.allowed)))
            self._c.set_child(col, L, st, -1 if nxt is None else nxt.uid)
            ms[f"fill scan ({known} child): parser.scan"] += t2 - t
            ms[f"fill scan ({known} child): lexer + set"] += time.thread_time_ns() - t2
            n[f"fill scan ({known} child): parser.scan"] += 1
            n[f"fill scan ({known} child): lexer + set"] += 1
        ms["fill " + item[0]] += time.thread_time_ns() - t
        n["fill " + item[0]] += 1

    nb.__init__, nb._fill = timed_init, timed_fill


def main() -> None:
    instrument()
    sys.argv[0] = str(HERE / "mask_phases.py")
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        print("| what | count | CPU ms | µs each |\n|---|--:|--:|--:|")
        for k in sorted(n):
            if k in ms:
                print(f"| {k} | {n[k]:,} | {ms[k] / 1e6:.0f} | {ms[k] / 1e3 / n[k]:.1f} |")
            else:
                print(f"| {k} | {n[k]:,} | | |")


if __name__ == "__main__":
    main()
