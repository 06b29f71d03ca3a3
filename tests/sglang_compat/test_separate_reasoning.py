"""``sgl.separate_reasoning`` with SGLang's reasoning-parser names, on a scripted
backend (the packaged 135M model does not write ``<think>`` blocks). After SGLang's
``test/lang/test_separate_reasoning*.py``."""

from __future__ import annotations

import pytest

import sgl
from sgl.lang.expr import ExprList, SeparateReasoning
from sgl.lang.reasoning import REASONING_FORMATS, split_reasoning


def test_expression_shape_and_names_like_sglang():
    g = sgl.gen("test_var")
    expr = sgl.separate_reasoning(g, model_type="deepseek-r1")
    assert isinstance(expr, ExprList) and len(expr.expr_list) == 2 and expr.expr_list[0] is g
    sep = expr.expr_list[1]
    assert isinstance(sep, SeparateReasoning) and sep.model_type == "deepseek-r1"
    assert sep.name == "test_var_reasoning_content"
    assert sep.process_name_for_reasoning("another") == "another_reasoning_content"
    assert repr(sep) == "SeparateReasoning(model_type=deepseek-r1, name=test_var_reasoning_content)"
    # any model type is accepted when the expression is built, as in SGLang
    assert sgl.separate_reasoning(g, model_type="invalid-model").expr_list[1].model_type == "invalid-model"


@pytest.mark.parametrize(
    ("model_type", "text", "reasoning", "answer"),
    [
        ("deepseek-r1", "<think>Let me think.</think>The answer is 42.", "Let me think.", "The answer is 42."),
        ("deepseek-r1", "No start tag here.</think>42", "No start tag here.", "42"),  # forced
        ("deepseek-r1", "Cut by max_tokens", "Cut by max_tokens", ""),
        ("qwen3", "<think>hmm</think>\n\nParis", "hmm", "\n\nParis"),
        ("qwen3", "Just an answer.", "", "Just an answer."),  # not forced
        ("qwen3-thinking", "thinking...</think>done", "thinking...", "done"),
        ("kimi", "\u25c1think\u25b7a\u25c1/think\u25b7b", "a", "b"),
    ],
)
def test_split_reasoning(model_type, text, reasoning, answer):
    assert split_reasoning(text, model_type) == (reasoning, answer)


def test_unknown_model_type_names_the_known_ones():
    with pytest.raises(ValueError, match="deepseek-r1"):
        split_reasoning("x", "gpt-9")
    assert {"deepseek-r1", "qwen3", "kimi"} <= set(REASONING_FORMATS)


def test_program_splits_variable_text_and_message(scripted):
    @sgl.function
    def prog(s, q):
        s += sgl.user(q)
        s += sgl.assistant(sgl.separate_reasoning(sgl.gen("answer", max_tokens=64), model_type="deepseek-r1"))
        s += sgl.user("Thanks")

    backend = scripted(["<think>2+2 is 4.</think>It is 4."])
    state = prog.run(q="What is 2+2?", backend=backend)
    assert state["answer"] == "It is 4."
    assert state["answer_reasoning_content"] == "2+2 is 4."
    assert "<think>" not in state.text() and "<|assistant|>It is 4.<|end|>" in state.text()
    assert state.messages()[1] == {"role": "assistant", "content": "It is 4."}


def test_select_and_several_gens_in_one_separate_reasoning(scripted):
    @sgl.function
    def prog(s):
        s += sgl.separate_reasoning(sgl.gen("a") + " / " + sgl.gen("b"), model_type="qwen3")

    state = prog.run(backend=scripted(["<think>x</think>A", "B"]))
    assert (state["a"], state["a_reasoning_content"]) == ("A", "x")
    assert (state["b"], state["b_reasoning_content"]) == ("B", "")
    assert state.text() == "<think>x</think>A / B"  # "a" was not the end of the text any more


def test_unknown_model_type_fails_when_run_and_the_checker_says_so_before(scripted):
    @sgl.function
    def prog(s):
        s += sgl.separate_reasoning(sgl.gen("a"), model_type="gpt-9")

    with pytest.raises(sgl.ProgramError, match="gpt-9"):
        prog.run(backend=scripted(["x"]))
    errors = sgl.compile(prog).errors
    assert errors and "model_type" in errors[0].message


def test_checker_knows_the_reasoning_variable(scripted):
    @sgl.function
    def prog(s):
        s += sgl.separate_reasoning(sgl.gen("a"), model_type="deepseek-r1")
        s += "Reasoning was: " + s["a_reasoning_content"]

    assert sgl.compile(prog).ok
    state = prog.run(backend=scripted(["why</think>because"]))
    assert state.text() == "becauseReasoning was: why"


def test_streamed_run_splits_the_variables_and_keeps_the_streamed_text(scripted):
    @sgl.function
    def prog(s):
        s += sgl.separate_reasoning(sgl.gen("a"), model_type="deepseek-r1")

    state = prog.run(backend=scripted(["t</think>ans"]), stream=True)
    assert "".join(state.text_iter()) == "t</think>ans"
    assert (state["a"], state["a_reasoning_content"]) == ("ans", "t")
