"""``expr_matches`` (enum/const values against a string facet) answers a repeated
character class by length and membership; it must agree with the derivative walk."""

import random

from sgl.constrain.automata.derivatives import ANY_STRING, derivative, nullable
from sgl.constrain.json_schema.common import expr_matches
from sgl.constrain.regex_ast import NOTHING, Chars, Repeat


def _by_derivatives(expr, text: str) -> bool:
    e = expr
    for ch in text:
        e = derivative(e, ord(ch))
        if e == NOTHING:
            return False
    return nullable(e)


def test_repeated_classes_agree_with_derivatives():
    exprs = [
        ANY_STRING,
        Repeat(Chars(((0, 0x10FFFF),)), 2, 5),
        Repeat(Chars(((0x61, 0x7A), (0xD800, 0xDFFF))), 0, None),
        Repeat(Chars(((0x30, 0x39),)), 1, 3),
    ]
    rng = random.Random(0)
    alphabet = "ab9Z\ud800\u00e9\U0001F600 "
    for e in exprs:
        for _ in range(1500):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
            assert expr_matches(e, text) == _by_derivatives(e, text), (e, text)
