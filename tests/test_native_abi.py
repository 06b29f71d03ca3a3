"""A compiled kernel built from other sources than the package's is not used (it would
lack what the Python side calls); the version the C source declares is the one checked."""

import re
import types
from pathlib import Path

from sgl.constrain import native


def test_the_c_source_declares_the_checked_version():
    source = (Path(native.__file__).parent / "_native.c").read_text()
    assert int(re.search(r"#define SGL_NATIVE_ABI (\d+)", source).group(1)) == native.ABI


def test_only_a_module_of_this_version_is_compatible():
    assert native.compatible(types.SimpleNamespace(ABI=native.ABI))
    assert not native.compatible(types.SimpleNamespace(ABI=native.ABI - 1))
    assert not native.compatible(types.SimpleNamespace())  # built before the version existed


def test_a_built_kernel_in_use_is_this_version():
    assert native.extension is None or native.compatible(native.extension)
