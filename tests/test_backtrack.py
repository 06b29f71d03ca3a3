"""Grammar backtracking for black-box models: scripted models that make known mistakes,
and the real SmolLM2 wrapped as a ``fn(str) -> str``; the draft model is SmolLM2 too."""

from __future__ import annotations

import pytest
from conftest import require_shared

from sgl.decode.backtrack import BacktrackError, Candidate, guide, obtain_correction_pairs
from sgl.decode.correction_log import CorrectionLog

SQL_PROMPT = "<|im_start|>user\nWrite an SQL query: the first 5 names in table t.<|im_end|>\n<|im_start|>assistant\n"
JSON_PROMPT = "<|im_start|>user\nWrite a JSON object.<|im_end|>\n<|im_start|>assistant\n"

SMALL_JSON = r"""
?start: value
?value: object | array | STRING | NUMBER | "true" | "false" | "null"
object: "{" [pair ("," pair)*] "}"
pair: STRING ":" value
array: "[" [value ("," value)*] "]"
STRING: /"[^"\\]*"/
NUMBER: /-?[0-9]+/
%ignore /[ \t\n]+/
"""


@pytest.fixture(scope="module")
def sql_grammar() -> str:
    return require_shared("grammars", "grammar-guide", "sql.lark").read_text()


@pytest.fixture(scope="module")
def draft(local_model):
    """The session's LocalModel as the draft (a LogitModel view, no second load)."""
    from sgl.decode.logit_model import resolve_logit_model

    return resolve_logit_model(local_model)


class Scripted:
    """A black box answering from a script; after the script, a fixed continuation."""

    def __init__(self, script: list[str], then: str):
        self.script, self.then, self.seen = list(script), then, []

    def __call__(self, text: str) -> str:
        self.seen.append(text)
        return self.script.pop(0) if self.script else self.then


# --------------------------------------------------------------- no model needed


def test_correction_pairs_sql_top(sql_grammar: str) -> None:
    prefix, cands = obtain_correction_pairs("SELECT TOP 5 name FROM t;", sql_grammar)
    # "TOP" is a valid column name, so the error is the number after it
    assert prefix == "SELECT TOP "
    names = {c.terminal for c in cands}
    assert {"FROM", "COMMA", "AS"} <= names
    assert all(isinstance(c, Candidate) for c in cands)
    from sgl.decode.backtrack import compile_text_grammar

    cg = compile_text_grammar(sql_grammar)
    st = cg.advance_bytes((cg.initial, 0), prefix.encode())
    for c in cands:  # every example really continues the prefix
        assert cg.advance_bytes(st, c.example.encode()) is not None, c


def test_correction_pairs_json() -> None:
    prefix, cands = obtain_correction_pairs('{"a": 1,}', SMALL_JSON)
    assert prefix == '{"a": 1,'
    assert [c.example for c in cands] == ['""']  # only a key may follow a comma
    # inside a lexeme: the ways to complete it
    prefix, cands = obtain_correction_pairs('{"a": tru!}', SMALL_JSON)
    assert prefix == '{"a": tru'
    assert [(c.terminal, c.example) for c in cands] == [("TRUE", "e")]
    # JSON Schema dicts work too
    prefix, cands = obtain_correction_pairs('{"n": "x"', {"type": "object", "properties": {"n": {"type": "string"}}})
    assert prefix == '{"n": "x"' and any("}" in c.example for c in cands)


def test_public_name_is_sgl_backtrack() -> None:
    import sgl.decode.backtrack as impl
    from sgl.backtrack import guide as public_guide
    from sgl.backtrack import obtain_correction_pairs as public_pairs

    assert public_guide is impl.guide and public_pairs is impl.obtain_correction_pairs
    assert public_pairs('{"a": 1,}', SMALL_JSON)[0] == '{"a": 1,'


def test_compiled_grammar_walk_reports_stop_and_lexeme_ends() -> None:
    from sgl.decode.backtrack import compile_text_grammar

    cg = compile_text_grammar(SMALL_JSON)
    whole = cg.walk(b'{"a": 12}')
    assert whole.consumed == 9 and cg.can_end(*whole.state)
    assert whole.state == cg.advance_bytes((cg.initial, 0), b'{"a": 12}')
    # lexemes end before '"a"', ':', ' ' (ignored), '12' and '}'; the last is in progress
    assert [end for end, _ in whole.lexeme_ends] == [1, 4, 5, 6, 8] and whole.lexeme_start == 8
    ignore = cg.tables.ignore
    assert [lexemes <= ignore for _, lexemes in whole.lexeme_ends] == [False, False, False, True, False]
    cut = cg.walk(b'{"a": tru!}')
    assert cut.consumed == len(b'{"a": tru') and cut.lexeme_start == len(b'{"a": ')
    assert not cg.lexeme_complete(cut.state)
    # from a state: the walk continues there
    rest = cg.walk(b"e}", cut.state)
    assert rest.consumed == 2 and cg.can_end(*rest.state)


def test_gives_up_without_loading_a_draft(sql_grammar: str) -> None:
    box = Scripted([], "SELECT TOP 5 name FROM t;")
    with pytest.raises(BacktrackError) as info:
        guide(box, sql_grammar, SQL_PROMPT, draft_model="/nonexistent/model", max_grammar_corrections=0)
    assert info.value.prefix == "SELECT TOP "  # the valid part is kept
    assert len(info.value.log) == 0 and info.value.last_output.startswith("SELECT TOP 5")


def test_clean_output_needs_no_repair_and_drops_trailing_text() -> None:
    box = Scripted(['{"a": [1, 2]}\n```\nThat is the object.'], "")
    r = guide(box, SMALL_JSON, JSON_PROMPT, draft_model="/nonexistent/model")
    assert r.complete and r.text == '{"a": [1, 2]}\n' and r.discarded.startswith("```")
    assert r.corrections == 0 and r.model_calls == 1


def test_valid_but_cut_short_output_resumes() -> None:
    box = Scripted(['{"a": [1,', " 2], ", '"b": 3}'], "")
    r = guide(box, SMALL_JSON, JSON_PROMPT, stop_at="```", draft_model="/nonexistent/model")
    assert r.text == '{"a": [1, 2], "b": 3}' and r.corrections == 0 and r.model_calls == 3
    assert box.seen[1] == JSON_PROMPT + '{"a": [1,'


def test_log_views() -> None:
    log = CorrectionLog()
    log.add(position=3, rejected="<b>&", repair="ok", candidates=["X 'x'"], healed="<", context="abc")
    text = str(log)
    assert "#1 syntax error at char 3" in text and "'ok'" in text and "X 'x'" in text
    page = log.to_html(full_document=True)
    assert "<del>b&gt;&amp;</del>" in page and "<ins>ok</ins>" in page and "&lt;" in page
    assert page.startswith("<!doctype html>") and "<b>" not in page


# ------------------------------------------------------------- with the draft model


@pytest.mark.slow
def test_sql_dialect_keyword_is_repaired(sql_grammar: str, draft) -> None:
    from sgl.constrain import compile_grammar

    box = Scripted(["SELECT TOP 5 name FROM t;"], " FROM t;")
    r = guide(box, sql_grammar, SQL_PROMPT, draft_model=draft, max_grammar_corrections=6)
    assert r.complete and compile_grammar(sql_grammar).accepts_text(r.text)
    first = r.log[0]
    assert first.position == len("SELECT TOP ") and first.rejected == "5 name FROM t;"
    assert first.kind == "syntax" and first.repair and "FROM 'from'" in first.candidates
    assert r.text.startswith("SELECT TOP " + first.repair)
    assert box.seen[1] == SQL_PROMPT + "SELECT TOP " + first.repair  # the model resumed from the repair
    assert "rejected: '5 name FROM t;'" in str(r.log) and "<del>5 name FROM t;</del>" in r.log.to_html()


@pytest.mark.slow
def test_json_trailing_comma_is_repaired(draft) -> None:
    from sgl.constrain import compile_grammar

    box = Scripted(['{"a": 1,}'], "}")
    r = guide(box, SMALL_JSON, JSON_PROMPT, draft_model=draft, max_grammar_corrections=8)
    assert r.complete and compile_grammar(SMALL_JSON).accepts_text(r.text)
    assert r.text.startswith('{"a": 1,') and r.text != '{"a": 1,}'
    assert r.log[0].position == len('{"a": 1,') and r.log[0].rejected == "}"
    assert r.log[0].candidates == ["STRING '\"\"'"]
    # a second repair re-encodes a longer prefix: the draft's KV cache serves its start
    if r.corrections > 1:
        assert r.draft_reused_tokens > 0

    # corrections running out: the error keeps the valid text and the log
    box = Scripted(['{"a": 1,}'], ",,,")
    with pytest.raises(BacktrackError) as info:
        guide(box, SMALL_JSON, JSON_PROMPT, draft_model=draft, max_grammar_corrections=1)
    assert len(info.value.log) == 1 and info.value.prefix.startswith('{"a": 1,')
    assert compile_grammar(SMALL_JSON).accepts_text(info.value.prefix) is False


@pytest.mark.slow
def test_real_model_as_black_box(draft) -> None:
    from sgl.constrain import compile_grammar

    fn = draft.as_black_box(max_tokens=20)  # a plain fn(str) -> str
    prompt = ("<|im_start|>user\nGive a JSON object with the keys name and age of a person.<|im_end|>\n"
              "<|im_start|>assistant\n```json\n")
    r = guide(fn, SMALL_JSON, prompt, draft_model=draft, stop_at="```", max_grammar_corrections=6)
    assert r.complete and compile_grammar(SMALL_JSON).accepts_text(r.text)
    assert r.text.lstrip().startswith("{")
