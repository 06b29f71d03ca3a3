"""The optional C extension (``_native.c``, ``_native_product.c``, ``_native_earley.c``): mask
walks, the lazy product lexer, the Earley closure. Every user keeps a pure-Python twin with the same results; this module
says whether the compiled one is in use (built at install, and not disabled by
``SGL_NATIVE=0``, which the tests use to compare the two)."""

from __future__ import annotations

import os
import warnings

# The compiled module's interface this package calls (``SGL_NATIVE_ABI`` in _native.c).
ABI = 2


def compatible(module: object) -> bool:
    """Was ``module`` (the compiled kernel) built from sources with this package's
    interface? One left from an older checkout (an editable install not rebuilt after a
    pull) lacks what the Python side calls, and would fail in the middle of a mask."""
    return getattr(module, "ABI", None) == ABI


try:
    from . import _native
except ImportError:  # no C compiler at install time: the Python implementations do the work
    _native = None
if _native is not None and not compatible(_native):
    warnings.warn(f"sgl's compiled kernel {_native.__file__} is older than its sources; the Python "
                  "implementation is used. Rebuild it: pip install -e . (or python setup.py build_ext "
                  "--inplace)", RuntimeWarning, stacklevel=2)
    _native = None

extension = _native  # the compiled module itself, or None (tests call its functions directly)


def native_enabled() -> bool:
    """Is the compiled kernel in use? (built, and not disabled by ``SGL_NATIVE=0``)"""
    return _native is not None and os.environ.get("SGL_NATIVE", "1") != "0"
