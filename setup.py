"""Builds the optional C mask kernel; everything else is configured in pyproject.toml.

The extension is optional: without a C compiler the install still succeeds and
``sgl.constrain`` uses its numpy walk (same masks, slower on cache misses).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sgl.constrain._native",
            ["src/sgl/constrain/_native.c", "src/sgl/constrain/_native_product.c",
             "src/sgl/constrain/_native_earley.c", "src/sgl/constrain/_native_earley_keys.c",
             "src/sgl/constrain/_native_words.c", "src/sgl/constrain/_native_boundary.c",
             "src/sgl/constrain/_native_boundary_run.c"],
            depends=["src/sgl/constrain/_native_product.h", "src/sgl/constrain/_native_walk.h",
                     "src/sgl/constrain/_native_earley.h", "src/sgl/constrain/_native_boundary.h"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
