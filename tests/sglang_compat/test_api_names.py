"""SGLang's frontend names with only the import changed (``import sgl as sgl``):
constants, global_config, choices methods as callables, trace(), compile().run(),
cache(), text_async_iter. A scripted backend: no model is needed to show these."""

from __future__ import annotations

import asyncio
import re

import pytest

import sgl
from sgl.lang.choices import ChoicesDecision


def test_regex_constants_import_from_lang_ir_and_match():
    from sgl.lang.ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR

    assert re.fullmatch(REGEX_INT, "-42 ")
    assert re.fullmatch(REGEX_FLOAT, "3.14")
    assert re.fullmatch(REGEX_BOOL, "False")
    assert re.fullmatch(REGEX_STR, '"Paris France"')
    assert not re.fullmatch(REGEX_INT, "4.2")


def test_regex_constants_constrain_a_gen(scripted):
    from sgl.lang.ir import REGEX_INT

    @sgl.function
    def prog(s):
        s += "n: " + sgl.gen("n", regex=REGEX_INT, stop=[" ", "\n"])

    backend = scripted(["12"])
    prog.run(backend=backend)
    assert backend.requests[0].constraint.regex == REGEX_INT


def test_global_config_default_backend_is_set_default_backend(scripted):
    backend = scripted(["x"])
    before = sgl.global_config.default_backend
    try:
        sgl.set_default_backend(backend)
        assert sgl.global_config.default_backend is backend
        sgl.global_config.default_backend = None
        assert sgl.global_config.default_backend is None
        sgl.global_config.default_backend = backend
        assert sgl.get_default_backend() is backend
    finally:
        sgl.set_default_backend(before)


def test_flush_cache_and_server_info_without_backend_and_on_a_plain_backend(scripted):
    before = sgl.global_config.default_backend
    try:
        sgl.set_default_backend(None)
        assert sgl.flush_cache() is False
        assert sgl.get_server_info() is None
        backend = scripted()
        assert sgl.flush_cache(backend) is False  # nothing cached by an HTTP-style backend
        assert sgl.get_server_info(backend) == {"backend": "ScriptedBackend"}
    finally:
        sgl.set_default_backend(before)


def test_token_usage_counts_and_resets(scripted):
    @sgl.function
    def prog(s):
        s += "abc" + sgl.gen("a") + sgl.gen("b")

    backend = scripted(["xy", "z"])
    usage = backend.token_usage
    prog.run(backend=backend)
    assert (usage.prompt_tokens, usage.completion_tokens) == (3 + 5, 3)
    usage.reset()
    assert (usage.prompt_tokens, usage.completion_tokens) == (0, 0)


def test_choices_methods_are_callable_as_in_sglang():
    tokens = [[(-0.1, 5, "Pa"), (-2.0, 6, "ris")], [(-0.5, 7, "London")]]
    kwargs = dict(choices=["Paris", "London"], normalized_prompt_logprobs=[-1.05, -0.5],
                  input_token_logprobs=tokens, output_token_logprobs=[[], []])
    d = sgl.token_length_normalized(**kwargs)
    assert isinstance(d, ChoicesDecision) and d.decision == "London"
    assert d.meta_info["normalized_prompt_logprobs"] == [-1.05, -0.5]
    assert d.meta_info["input_token_logprobs"] == [list(t) for t in tokens]
    g = sgl.greedy_token_selection(**kwargs)
    assert g.decision == "Paris"  # -0.1 beats -0.5 at the first position
    assert g.meta_info["greedy_logprob_matrix"] == [[-0.1, -2.0], [-0.5, -0.5]]
    with pytest.raises(ValueError, match="unconditional"):
        sgl.unconditional_likelihood_normalized(**kwargs)
    u = sgl.unconditional_likelihood_normalized(
        **kwargs, unconditional_token_logprobs=[[(None, 5, "Pa"), (-1.0, 6, "ris")], [(None, 7, "London")]])
    # Paris: mean(-0.1 - 0, -2.0 + 1.0) = -0.55; London: -0.5
    assert u.decision == "London"
    assert u.meta_info["normalized_unconditional_prompt_logprobs"] == pytest.approx([-0.55, -0.5])


def test_choices_method_objects_select_by_name(scripted):
    @sgl.function
    def prog(s):
        s += sgl.select("x", ["a", "b"], choices_method=sgl.greedy_token_selection)

    backend = scripted()
    state = prog.run(backend=backend)
    assert state.get_meta_info("x")["method"] == "greedy_token_selection"


def test_trace_records_without_any_model_call(scripted):
    @sgl.function
    def few_shot_qa(s, prompt, question):
        s += prompt
        s += "Q: What is the capital of France?\nA: Paris\n"
        s += "Q: " + question + "\n"
        s += "A:" + sgl.gen("answer", stop="\n")

    bound = few_shot_qa.bind(prompt="The following are questions with answers.\n\n")
    before = sgl.global_config.default_backend
    backend = scripted()  # no outputs: any generate call would fail
    try:
        sgl.set_default_backend(backend)
        tracer = bound.trace()
    finally:
        sgl.set_default_backend(before)
    assert backend.requests == []
    graph = tracer.last_node.print_graph_dfs()
    assert "Argument('question')" in graph and "Gen('answer')" in graph
    assert bound.prefix() == "The following are questions with answers.\n\nQ: What is the capital of France?\nA: Paris\nQ: "


def test_trace_of_an_f_string_with_an_argument_is_a_type_error():
    @sgl.function
    def wrong(s, question):
        s += f"I want to ask {question}"

    with pytest.raises(TypeError):
        wrong.trace()


def test_trace_stops_where_a_generated_value_is_needed():
    @sgl.function
    def react(s):
        s += "Action: " + sgl.select("action", ["Search", "Finish"])
        if s["action"] == "Search":
            s += "searching"

    trace = react.trace()
    assert trace.stopped and "action" in trace.stopped
    assert [type(e).__name__ for e in trace.expressions()] == ["Constant", "SelectExpr"]


def test_trace_of_forks_roles_and_nested_functions():
    @sgl.function
    def expand(s, tip):
        s += "Expand: " + tip + "\n" + sgl.gen("detailed_tip")

    @sgl.function
    def tips(s, topic):
        s += sgl.user("Tips for " + topic)
        s += sgl.assistant("1." + sgl.gen("tip_1", stop="\n"))
        branch = expand(tip=s["tip_1"])
        s += "Tip: " + branch["detailed_tip"]
        forks = s.fork(2)
        forks += lambda i: f"fork {i}: " + sgl.gen("x")
        forks.join()

    pretty = tips.trace().pretty()
    for piece in ("RoleBegin(user)", "Call(expand)", "Fork(2)", "%2: Gen('x')", "Join("):
        assert piece in pretty


def test_compile_run_and_run_batch(scripted):
    @sgl.function
    def qa(s, q):
        s += "Q: " + q + "\nA:" + sgl.gen("a", stop="\n")

    backend = scripted(["1", "2", "3"])
    compiled = qa.compile(backend=backend)
    assert compiled.ok
    assert compiled.run(q="x")["a"] == "1"
    states = compiled.run_batch([{"q": "y"}, {"q": "z"}], num_threads=1)
    assert [s["a"] for s in states] == ["2", "3"]


def test_cache_prefills_the_constant_prefix_with_roles(scripted):
    @sgl.function
    def chat(s, question):
        s += sgl.system("Be brief.")
        s += sgl.user("Question: " + question)
        s += sgl.assistant(sgl.gen("a"))

    backend = scripted()
    prefix = chat.cache(backend)
    assert prefix == "<|system|>Be brief.<|end|>\n<|user|>Question: "
    assert backend.prefixes == [prefix]


def test_run_batch_precaches_the_shared_prefix_once(scripted):
    @sgl.function
    def qa(s, q):
        s += "Shared instructions. Q: " + q + sgl.gen("a")

    backend = scripted(respond=lambda r: "ok")
    qa.run_batch([{"q": "a"}, {"q": "b"}], backend=backend, num_threads=1)
    assert backend.prefixes == ["Shared instructions. Q: "]
    sgl.global_config.enable_precache_with_tracing = False
    try:
        qa.run_batch([{"q": "a"}, {"q": "b"}], backend=backend, num_threads=1)
    finally:
        sgl.global_config.enable_precache_with_tracing = True
    assert len(backend.prefixes) == 1


def test_text_async_iter_streams_a_variable(scripted):
    @sgl.function
    def prog(s):
        s += "A: " + sgl.gen("answer")

    async def collect(state, **kw):
        return [chunk async for chunk in state.text_async_iter(**kw)]

    backend = scripted(respond=lambda r: "hello world")
    state = prog.run(backend=backend, stream=True)
    chunks = asyncio.run(collect(state, var_name="answer"))
    assert "".join(chunks) == "hello world" and len(chunks) > 1
    state = prog.run(backend=backend, stream=True)
    assert "".join(asyncio.run(collect(state))) == "A: hello world"
    state = prog.run(backend=backend, stream=True)
    pairs = asyncio.run(collect(state, var_name="answer", return_meta_data=True))
    assert all(isinstance(p, tuple) and len(p) == 2 for p in pairs)
    state = prog.run(backend=backend)  # not streamed: one chunk
    assert asyncio.run(collect(state, var_name="answer")) == ["hello world"]


def test_verbosity_prints_the_text(scripted, capsys):
    @sgl.function
    def prog(s):
        s += "hi " + sgl.gen("a")

    sgl.global_config.verbosity = 2
    try:
        prog.run(backend=scripted(["there"]))
    finally:
        sgl.global_config.verbosity = 0
    assert "hi there" in capsys.readouterr().out


def test_logprobs_from_a_backend_without_them_are_a_clear_error(scripted):
    @sgl.function
    def prog(s):
        s += sgl.gen("a", return_logprob=True)

    with pytest.raises(sgl.ProgramError, match="does not return logprobs"):
        prog.run(backend=scripted(["x"]))


def test_gen_n_on_a_plain_backend_batches_n_requests(scripted):
    @sgl.function
    def prog(s):
        s += "x" + sgl.gen("a", n=2, seed=5)

    backend = scripted(["one", "two"])
    state = prog.run(backend=backend)
    assert state["a"] == ["one", "two"] and state.text() == "xone"
    assert [r.params.seed for r in backend.requests] == [5, 6]
