"""Per-request trace logs: what each request did and, token by token, how each token came.

Tracing is off by default and costs nothing then: ``begin_trace`` returns None and
``record_token(None, ...)`` returns at once. Turn it on with the environment variable
``SGL_TRACE=path/to/trace.jsonl`` or ``configure_trace(path)``; every traced request
then appends one JSON line to that file.

The file holds two kinds of lines, both keyed by ``request_id``:

* ``{"type": "generation", ...}`` written by the engine (``begin_trace`` /
  ``record_token`` / ``end_trace``): the generated tokens as ``TokenRecord`` dicts;
* ``{"type": "request", ...}`` written by the HTTP server: endpoint, latency, time to
  first token, token counts, constraint, whether the output satisfied it.

``sgl viz TRACE.jsonl -o out.html`` draws them (``sgl.viz.html.render_trace``).

Engine side, per request::

    tr = begin_trace(prompt, constraint={"kind": "regex", "value": r"\\d+"})
    ...                                  # for each token appended to the output:
    record_token(tr, token_id, text, "forced")                  # cheap fields only, or
    record_token_from_logits(tr, logits, token_id, text, "sampled", allowed=allowed_bools,
                             decode=lambda i: tokenizer.decode([i]))
    end_trace(tr, finish_reason="stop")

The server sets the current request id (``request_context``) around each backend call,
so an engine's generation line carries the same ``request_id`` as the server's line.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# How a token got into the output.
SAMPLED = "sampled"  # the sampler picked it (under the grammar's mask, if any)
FORCED = "forced"  # the grammar allowed exactly this token; the model was not asked
JUMP_FORWARD = "jump_forward"  # part of a forced run of text appended in one step
HEALED = "healed"  # re-tokenised at the prompt boundary (token healing)
BACKTRACKED = "backtracked"  # replaced an earlier token that the grammar later rejected
TOKEN_KINDS = (SAMPLED, FORCED, JUMP_FORWARD, HEALED, BACKTRACKED)

ENV_VAR = "SGL_TRACE"


@dataclass
class TokenRecord:
    """One generated token as the trace stores it.

    ``logprob`` and ``top`` come from the model's *unconstrained* distribution
    (softmax of the raw logits at temperature 1), so a forced token shows how much the
    model agreed with the grammar. ``masked_mass`` is the probability mass of that
    distribution on tokens the grammar's mask disallowed (0 = the mask removed nothing,
    1 = the model wanted only forbidden tokens); None when unknown.
    """

    text: str
    id: int | None
    kind: str = SAMPLED
    logprob: float | None = None
    top: list[tuple[str, float]] = field(default_factory=list)
    masked_mass: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["top"] = [[t, lp] for t, lp in self.top]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenRecord:
        top = [(str(t), float(lp)) for t, lp in d.get("top") or []]
        return cls(
            text=str(d.get("text", "")),
            id=d.get("id"),
            kind=str(d.get("kind", SAMPLED)),
            logprob=d.get("logprob"),
            top=top,
            masked_mass=d.get("masked_mass"),
        )


@dataclass
class RequestTrace:
    """The tokens of one generation, collected by the engine while it decodes."""

    request_id: str
    prompt: str = ""
    constraint: dict[str, Any] | None = None
    tokens: list[TokenRecord] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finish_reason: str | None = None
    duration_s: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "generation",
            "request_id": self.request_id,
            "started": self.started,
            "duration_s": self.duration_s,
            "prompt": self.prompt,
            "constraint": self.constraint,
            "finish_reason": self.finish_reason,
            "text": self.text,
            "tokens": [t.to_dict() for t in self.tokens],
            "meta": self.meta,
        }


# --- where traces go ------------------------------------------------------------
class TraceLog:
    """Appends JSON lines to a file; thread-safe, one ``write`` = one whole line."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, default=_json_default) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)


_UNSET = object()
_configured: Any = _UNSET  # TraceLog | None once configured; _UNSET = read SGL_TRACE
_config_lock = threading.Lock()
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("sgl_request_id", default=None)


def configure_trace(path: str | os.PathLike | None) -> TraceLog | None:
    """Send trace lines to ``path`` (None turns tracing off, overriding ``SGL_TRACE``)."""
    global _configured
    with _config_lock:
        _configured = None if path is None else TraceLog(path)
        return _configured


def reset_trace_config() -> None:
    """Forget ``configure_trace``: the next call reads ``SGL_TRACE`` again."""
    global _configured
    with _config_lock:
        _configured = _UNSET


def get_trace_log() -> TraceLog | None:
    """The active trace log, or None when tracing is off."""
    global _configured
    log = _configured
    if log is _UNSET:
        with _config_lock:
            if _configured is _UNSET:
                path = os.environ.get(ENV_VAR, "").strip()
                _configured = TraceLog(path) if path else None
            log = _configured
    return log


def trace_enabled() -> bool:
    return get_trace_log() is not None


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    """Make ``request_id`` the id that ``begin_trace`` picks up in this context."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def current_request_id() -> str | None:
    return _request_id.get()


def new_request_id(prefix: str = "req") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


# --- the engine's hooks ---------------------------------------------------------
def begin_trace(prompt: str = "", constraint: dict[str, Any] | None = None, request_id: str | None = None) -> RequestTrace | None:
    """Start tracing one generation; None (and nothing else happens) when tracing is off."""
    if get_trace_log() is None:
        return None
    rid = request_id or current_request_id() or new_request_id("gen")
    return RequestTrace(request_id=rid, prompt=prompt, constraint=constraint)


def record_token(
    trace: RequestTrace | None,
    token_id: int | None,
    text: str,
    kind: str = SAMPLED,
    logprob: float | None = None,
    top: Sequence[tuple[str, float]] | None = None,
    masked_mass: float | None = None,
) -> None:
    """Append one token to ``trace`` (a no-op when ``trace`` is None)."""
    if trace is None:
        return
    if kind not in TOKEN_KINDS:
        raise ValueError(f"unknown token kind {kind!r}; expected one of {', '.join(TOKEN_KINDS)}")
    record = TokenRecord(
        text=text,
        id=None if token_id is None else int(token_id),
        kind=kind,
        logprob=finite(logprob),
        top=[(str(t), float(lp)) for t, lp in (top or ()) if math.isfinite(lp)],
        masked_mass=None if masked_mass is None else min(1.0, max(0.0, float(masked_mass))),
    )
    with trace._lock:
        trace.tokens.append(record)


def record_token_from_logits(
    trace: RequestTrace | None,
    logits: Any,
    token_id: int,
    text: str,
    kind: str = SAMPLED,
    *,
    allowed: Any = None,
    decode: Callable[[int], str] | None = None,
    k: int = 5,
) -> None:
    """``record_token`` with logprob, top-``k`` alternatives and masked mass computed
    from the raw logits (torch or numpy, shape ``[n_vocab]``).

    ``allowed`` is the grammar's mask for this step: a bool array over the vocabulary
    (unpack a bitmask row with ``sgl.constrain.bitmask.unpack_bitmask``); None =
    unconstrained.
    Only runs when tracing is on, so its cost does not touch untraced decoding.
    """
    if trace is None:
        return
    logprob, top, masked = token_stats(logits, token_id, allowed=allowed, k=k)
    named = [(decode(i) if decode else f"<{i}>", lp) for i, lp in top]
    record_token(trace, token_id, text, kind, logprob, named, masked)


def token_stats(logits: Any, token_id: int, *, allowed: Any = None, k: int = 5) -> tuple[float, list[tuple[int, float]], float | None]:
    """(logprob of ``token_id``, top-``k`` (id, logprob), masked mass) under softmax(logits)."""
    import numpy as np

    x = _to_numpy(logits).astype(np.float64).reshape(-1)
    top_value = np.max(x)
    logz = top_value + math.log(float(np.sum(np.exp(x - top_value))))
    logp = x - logz
    k = max(0, min(k, x.shape[0]))
    top_ids = np.argpartition(-logp, k - 1)[:k] if k else np.array([], dtype=np.int64)
    top_ids = top_ids[np.argsort(-logp[top_ids])]
    top = [(int(i), float(logp[i])) for i in top_ids]
    masked = None
    if allowed is not None:
        ok = _to_numpy(allowed).reshape(-1)[: x.shape[0]]
        if ok.dtype != np.bool_:  # packed words would index as token ids: silently wrong
            raise TypeError(f"allowed must be a bool array (got {ok.dtype}); unpack a bitmask row "
                            "with sgl.constrain.bitmask.unpack_bitmask")
        masked = float(np.sum(np.exp(logp[~ok])))
    return float(logp[int(token_id)]), top, masked


def end_trace(trace: RequestTrace | None, finish_reason: str | None = None, **meta: Any) -> None:
    """Finish ``trace`` and append its line to the trace log (a no-op for None)."""
    if trace is None:
        return
    trace.finish_reason = finish_reason
    trace.duration_s = time.time() - trace.started
    trace.meta.update(meta)
    log = get_trace_log()
    if log is not None:
        log.write(trace.to_dict())


def write_record(record: dict[str, Any]) -> None:
    """Append any JSON-able record to the trace log, if tracing is on."""
    log = get_trace_log()
    if log is not None:
        log.write(record)


# --- reading --------------------------------------------------------------------
def read_trace(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a trace file, in order; a line that is not a JSON object is an
    error that names its line number."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON: {e.msg}") from e
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: a trace line must be a JSON object")
            records.append(record)
    return records


def _to_numpy(x: Any) -> Any:
    import numpy as np

    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().float().cpu().numpy() if x.dtype.is_floating_point else x.detach().cpu().numpy()
    return np.asarray(x)


def finite(x: float | None) -> float | None:
    """``x`` as a float, or None when it is missing, NaN or infinite (not JSON)."""
    return None if x is None or not math.isfinite(x) else float(x)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


__all__ = [
    "BACKTRACKED",
    "FORCED",
    "HEALED",
    "JUMP_FORWARD",
    "SAMPLED",
    "TOKEN_KINDS",
    "RequestTrace",
    "TokenRecord",
    "TraceLog",
    "begin_trace",
    "configure_trace",
    "current_request_id",
    "end_trace",
    "finite",
    "get_trace_log",
    "read_trace",
    "record_token",
    "record_token_from_logits",
    "request_context",
    "reset_trace_config",
    "token_stats",
    "trace_enabled",
    "write_record",
]
