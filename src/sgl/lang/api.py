"""The functions a program calls: ``sgl.gen``, ``sgl.select``, roles (``sgl.function``
is `sgl.runtime.function.function`: a decorated program runs on the interpreter).

Names follow SGLang's ``sglang/api.py`` so SGLang programs run unchanged; SGLang's
later additions to ``gen`` (``n``, penalties, ``ignore_eos``, logprob settings) are
keyword-only here, so SGL's positional order (``name, max_tokens, min_tokens, stop, ...``)
stays as it was (docs/sglang_compat.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .choices import ChoicesSamplingMethod, token_length_normalized
from .expr import ExprList, GenExpr, RoleBegin, RoleEnd, SelectExpr, SeparateReasoning, SglExpr


def gen(
    name: str | None = None,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    stop: str | Sequence[str] | None = None,
    stop_token_ids: Sequence[int] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    *,
    seed: int | None = None,
    regex: str | None = None,
    json_schema: Any = None,
    grammar: str | None = None,
    grammar_syntax: str = "lark",
    choices: Sequence[str] | None = None,
    choices_method: ChoicesSamplingMethod | str | None = None,
    dtype: type | str | None = None,
    timeout: float | None = None,
    sampler: Any = None,
    n: int | None = None,
    frequency_penalty: float | None = None,
    presence_penalty: float | None = None,
    ignore_eos: bool | None = None,
    repetition_penalty: float | None = None,
    stop_regex: str | Sequence[str] | None = None,
    return_logprob: bool | None = None,
    logprob_start_len: int | None = None,
    top_logprobs_num: int | None = None,
    return_text_in_logprobs: bool | None = None,
) -> SglExpr:
    """Generate text into variable ``name``.

    At most one constraint: ``regex``, ``json_schema`` (dict, JSON string or pydantic
    model class: the variable is the text, ``state.parsed(name)`` the parsed value or
    model instance), ``grammar`` (``grammar_syntax`` "lark", "gbnf" or "ebnf") or
    ``dtype`` (int, float, str, bool or a pydantic model class: the parsed value is stored). ``choices`` makes
    this a ``select`` (as in SGLang). ``timeout`` bounds this one call in seconds.
    ``sampler`` (e.g. ``sgl.OptimalSampler``) generates instead of the backend: any object
    with ``generate_one(prompt, params, constraint)`` returning a ``GenerateResult``.

    SGLang's options (keyword-only here): ``n`` samples (the variable becomes a list of
    ``n`` values, the text gets the first), ``frequency_penalty`` / ``presence_penalty``
    (in [-2, 2]), ``repetition_penalty`` (in (0, 2]; HF's rule over the prompt and the
    output), ``stop_regex`` (stop at the first match of a Python regex in the output,
    which is cut where the match starts), ``ignore_eos``, and ``return_logprob`` with ``logprob_start_len``,
    ``top_logprobs_num``, ``return_text_in_logprobs`` (the logprobs go to the
    variable's meta info, as SGLang's ``meta_info``). ``max_tokens=0`` only reads the
    prompt (its logprobs, the prefix cache).
    """
    fields = dict(locals())  # every parameter but the two of select is a GenExpr field
    if choices is not None:
        return select(
            name,
            choices,
            0.0 if temperature is None else temperature,
            choices_method or token_length_normalized,
            seed=seed,
            timeout=timeout,
        )
    del fields["choices"], fields["choices_method"]
    return GenExpr(**fields)


def gen_int(
    name: str | None = None,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    **kwargs: Any,
) -> SglExpr:
    """``gen(..., dtype=int)``: an integer, stored as ``int``."""
    return gen(name, max_tokens, min_tokens, dtype=int, **kwargs)


def gen_string(
    name: str | None = None,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    **kwargs: Any,
) -> SglExpr:
    """``gen(..., dtype=str)``: a double-quoted string; the unquoted value is stored."""
    return gen(name, max_tokens, min_tokens, dtype=str, **kwargs)


def select(
    name: str | None = None,
    choices: Sequence[str] | None = None,
    temperature: float = 0.0,
    choices_method: ChoicesSamplingMethod | str = token_length_normalized,
    *,
    seed: int | None = None,
    timeout: float | None = None,
) -> SglExpr:
    """Choose one of ``choices`` (scored by ``choices_method``) into variable ``name``.

    ``temperature`` 0 takes the best-scoring choice; above 0 samples with
    probabilities ∝ exp(score / temperature).
    """
    return SelectExpr(name, choices, temperature, choices_method, seed, timeout)


def _role(role: str, expr: Any = None) -> ExprList:
    if expr is None:
        return ExprList([RoleBegin(role), RoleEnd(role)])
    return ExprList([RoleBegin(role)]) + expr + RoleEnd(role)


def system(expr: Any = None) -> ExprList:
    """``expr`` as a system message."""
    return _role("system", expr)


def user(expr: Any = None) -> ExprList:
    """``expr`` as a user message."""
    return _role("user", expr)


def assistant(expr: Any = None) -> ExprList:
    """``expr`` as an assistant message."""
    return _role("assistant", expr)


def system_begin() -> RoleBegin:
    return RoleBegin("system")


def system_end() -> RoleEnd:
    return RoleEnd("system")


def user_begin() -> RoleBegin:
    return RoleBegin("user")


def user_end() -> RoleEnd:
    return RoleEnd("user")


def assistant_begin() -> RoleBegin:
    return RoleBegin("assistant")


def assistant_end() -> RoleEnd:
    return RoleEnd("assistant")


def image(*args: Any, **kwargs: Any) -> SglExpr:
    """Refused: SGL runs text-only models."""
    raise NotImplementedError("sgl.image is not supported: SGL runs text-only models")


def video(*args: Any, **kwargs: Any) -> SglExpr:
    """Refused: SGL runs text-only models."""
    raise NotImplementedError("sgl.video is not supported: SGL runs text-only models")


def separate_reasoning(expr: SglExpr | None = None, model_type: str | None = None) -> ExprList:
    """``expr`` (a gen or select, or a list of them), then split each value into the
    answer (kept in its variable and the text) and the reasoning, stored as
    ``<name>_reasoning_content``. ``model_type`` is one of SGLang's reasoning parser
    names (``deepseek-r1``, ``qwen3``, ... see `sgl.lang.reasoning.REASONING_FORMATS`);
    an unknown one is an error when the program runs, as in SGLang."""
    if expr is None:
        raise ValueError("separate_reasoning needs the gen or select whose output it splits")
    return ExprList([expr, SeparateReasoning(model_type, expr)])
