"""What the compile thread keeps alive: nothing of a finished compile."""

from __future__ import annotations

import gc
import weakref


def test_compile_thread_keeps_no_result_alive() -> None:
    """The reused compile thread drops its last job: a grammar the caller (and the
    compile cache) let go of is freed then, not inside the next compile."""
    from sgl.constrain import api, compile_json_schema

    cg = compile_json_schema({"type": "array", "items": {"type": "boolean"}})
    api.clear_cache()
    ref = weakref.ref(cg)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del cg
        assert ref() is None
    finally:
        if was_enabled:
            gc.enable()
