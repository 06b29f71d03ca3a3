"""Logprobs in OpenAI's shapes: the tokens of a result (or of a stream so far) with their
logprobs and most likely alternatives, as chat ``logprobs.content`` or completions
``logprobs`` (tokens, token_logprobs, top_logprobs, text_offset)."""

from __future__ import annotations

from typing import Any, NamedTuple

from sgl.backends.base import GenerateResult
from sgl.telemetry.trace import finite

from .protocol import ChoiceLogprobs, CompletionLogprobs, TokenLogprob


class Tok(NamedTuple):
    """One generated token for logprobs: its text, logprob and most likely alternatives."""

    text: str
    logprob: float | None
    top: list[tuple[str, float]]


class TokenLogprobs:
    """Token texts and logprob objects for one backend (its ``decode_token`` or ``decode``)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def token_text(self, token_id: int) -> str:
        decode_token = getattr(self.backend, "decode_token", None)
        if decode_token is not None:
            return decode_token(token_id)
        decode = getattr(self.backend, "decode", None)  # LocalModel: decode(ids) -> str
        if decode is not None:
            try:
                return decode([token_id])
            except (TypeError, ValueError):
                pass
        return f"token_id:{token_id}"  # vLLM's spelling when text is unavailable

    def result_tokens(self, result: GenerateResult, start: int = 0) -> list[Tok]:
        """The result's tokens from ``start`` with their logprobs (and top logprobs)."""
        if result.logprobs is None:
            return []
        texts = result.meta.get("token_texts")  # a proxy knows texts, not ids
        text_tops = result.meta.get("top_logprob_texts")
        tops = result.top_logprobs or []
        out = []
        for j in range(start, len(result.logprobs)):
            if text_tops is not None:
                top = list(text_tops[j]) if j < len(text_tops) else []
            else:
                top = [(self.token_text(t), lp) for t, lp in tops[j]] if j < len(tops) else []
            if texts is not None and j < len(texts):
                text = texts[j]
            elif j < len(result.token_ids):
                text = self.token_text(result.token_ids[j])
            else:
                break
            out.append(Tok(text, finite(result.logprobs[j]), top))
        return out

    def progress_tokens(self, c: Any, progress: Any) -> list[Tok]:
        """The tokens whose text has been streamed by now (``progress``: a snapshot of the
        backend's live output, None when it has none: then all come with the last chunk)."""
        if progress is None:
            return []
        ids, lps, tops = progress
        out = []
        while c.reported < min(len(ids), len(lps)):
            j = c.reported
            text = self.token_text(ids[j])
            if c.covered + len(text) > c.emitted:
                break
            c.covered += len(text)
            c.reported += 1
            top = [(self.token_text(t), lp) for t, lp in tops[j]] if j < len(tops) else []
            out.append(Tok(text, finite(lps[j]), top))
        return out

    def rest_tokens(self, c: Any, result: GenerateResult) -> list[Tok]:
        tokens = self.result_tokens(result, c.reported)
        c.reported += len(tokens)
        return tokens

    def stream_logprobs(self, job: Any, tokens: list[Tok], chat: bool) -> Any:
        if not job.want_logprobs:
            return None
        return self.chat_logprobs(tokens) if chat else self.completion_logprobs(tokens)

    def completion_logprobs(self, tokens: list[Tok]) -> CompletionLogprobs:
        offsets, pos = [], 0
        for t in tokens:
            offsets.append(pos)
            pos += len(t.text)
        tops = [{text: lp for text, lp in t.top} for t in tokens] if any(t.top for t in tokens) else None
        return CompletionLogprobs(tokens=[t.text for t in tokens], token_logprobs=[t.logprob for t in tokens],
                                  top_logprobs=tops, text_offset=offsets)

    def chat_logprobs(self, tokens: list[Tok]) -> ChoiceLogprobs:
        def entry(text: str, lp: float | None) -> dict[str, Any]:
            return {"token": text, "logprob": -9999.0 if lp is None else lp, "bytes": list(text.encode())}

        return ChoiceLogprobs(content=[
            TokenLogprob(**entry(t.text, t.logprob), top_logprobs=[entry(text, finite(lp)) for text, lp in t.top])
            for t in tokens])


__all__ = ["Tok", "TokenLogprobs"]
