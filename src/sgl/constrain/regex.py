"""Python ``re`` syntax -> ``regex_ast`` (work in progress)."""

from __future__ import annotations

from .regex_ast import Node


def parse_regex(pattern: str, flags: int = 0) -> Node:
    raise NotImplementedError


def regex_grammar(pattern: str):
    raise NotImplementedError
