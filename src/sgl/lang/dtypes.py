"""``gen(dtype=...)``: the regex that constrains each type, and how its text is parsed."""

from __future__ import annotations

import json
from typing import Any

# Bounded repeats keep a model that "wants" more digits from running to max_tokens.
DTYPE_REGEX = {
    "int": r"-?(0|[1-9][0-9]{0,17})",
    "float": r"-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,15})?",
    "bool": r"(True|False)",
    "str": r'"([^"\\\n]|\\["\\/nt])*"',
}

_ALIASES = {
    int: "int",
    float: "float",
    bool: "bool",
    str: "str",
    "string": "str",
    "integer": "int",
    "boolean": "bool",
}


def normalize_dtype(dtype: Any) -> str | None:
    """``int``/``"int"`` → ``"int"``; None stays None; anything else is a ValueError."""
    if dtype is None:
        return None
    name = _ALIASES.get(dtype, dtype)
    if name not in DTYPE_REGEX:
        raise ValueError(f"unsupported dtype {dtype!r}; expected int, float, str or bool")
    return name


def parse_value(dtype: str, text: str) -> Any:
    """The Python value of generated ``text`` for ``dtype`` (raises ValueError if malformed)."""
    text = text.strip()
    if dtype == "int":
        return int(text)
    if dtype == "float":
        return float(text)
    if dtype == "bool":
        if text not in ("True", "False"):
            raise ValueError(f"not a bool: {text!r}")
        return text == "True"
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError as e:
        raise ValueError(f"not a JSON string: {text!r}") from e
