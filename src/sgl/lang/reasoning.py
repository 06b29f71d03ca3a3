"""``sgl.separate_reasoning``: split a reasoning model's ``<think>…</think>`` from its answer.

The model names are SGLang's reasoning-parser names; each says which markers the model
writes and whether its output starts inside the reasoning (``forced``: DeepSeek-R1
writes its thoughts first and may omit ``<think>``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReasoningFormat:
    start: str
    end: str
    forced: bool  # the text is reasoning until ``end`` even without ``start``


REASONING_FORMATS = {
    "deepseek-r1": ReasoningFormat("<think>", "</think>", forced=True),
    "deepseek-v3": ReasoningFormat("<think>", "</think>", forced=False),
    "qwen3": ReasoningFormat("<think>", "</think>", forced=False),
    "qwen3-thinking": ReasoningFormat("<think>", "</think>", forced=True),
    "glm45": ReasoningFormat("<think>", "</think>", forced=False),
    "kimi": ReasoningFormat("\u25c1think\u25b7", "\u25c1/think\u25b7", forced=False),
    "step3": ReasoningFormat("<think>", "</think>", forced=True),
    "minimax": ReasoningFormat("<think>", "</think>", forced=True),
}
REASONING_SUFFIX = "_reasoning_content"


def reasoning_format(model_type: str | None) -> ReasoningFormat:
    """The markers of ``model_type``; ValueError naming the known ones otherwise."""
    if model_type is None:
        raise ValueError("separate_reasoning needs model_type (e.g. 'deepseek-r1', 'qwen3')")
    fmt = REASONING_FORMATS.get(model_type)
    if fmt is None:
        raise ValueError(
            f"unsupported reasoning model type {model_type!r}; known: {', '.join(REASONING_FORMATS)}"
        )
    return fmt


def split_reasoning(text: str, model_type: str | None) -> tuple[str, str]:
    """``(reasoning, answer)`` of a complete output, as SGLang's parser splits it.

    Text without reasoning (and without ``forced``) is all answer; reasoning whose end
    marker never came (cut by max_tokens) is all reasoning.
    """
    fmt = reasoning_format(model_type)
    if not (fmt.forced or fmt.start in text):
        return "", text
    rest = text
    while rest.startswith(fmt.start):
        rest = rest[len(fmt.start):]
    if fmt.end not in rest:
        return rest, ""
    reasoning, answer = rest.split(fmt.end, 1)
    return reasoning, answer
