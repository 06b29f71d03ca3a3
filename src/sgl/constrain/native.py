"""The optional C extension (``_native.c``, ``_native_product.c``, ``_native_earley.c``): mask
walks, the lazy product lexer, the Earley closure. Every user keeps a pure-Python twin with the same results; this module
says whether the compiled one is in use (built at install, and not disabled by
``SGL_NATIVE=0``, which the tests use to compare the two)."""

from __future__ import annotations

import os

try:
    from . import _native
except ImportError:  # no C compiler at install time: the Python implementations do the work
    _native = None

extension = _native  # the compiled module itself, or None (tests call its functions directly)


def native_enabled() -> bool:
    """Is the compiled kernel in use? (built, and not disabled by ``SGL_NATIVE=0``)"""
    return _native is not None and os.environ.get("SGL_NATIVE", "1") != "0"
