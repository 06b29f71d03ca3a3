"""A model's own chat template (Jinja, from ``tokenizer_config.json``) and the role markers
the language needs from it.

SGL programs write a prompt role by role (``sgl.system`` / ``sgl.user`` /
``sgl.assistant``), so the backend needs, for each role, the text that goes before and
after a message's content. `ChatTemplate.role_affixes` gets it from the model's template
rendered the way transformers renders it (sandboxed Jinja, ``trim_blocks`` and
``lstrip_blocks``, ``raise_exception``, the tokenizer's ``bos_token`` / ``eos_token``):
the template is rendered with and without one message whose content is a marker, and
the difference, split at the marker, is the pair. Templates that insist on an order (no
system role, strict user/assistant alternation) are tried in the contexts they accept.
A role the template cannot render (e.g. ``system`` for Gemma) is a `ChatTemplateError`
that names the role and the template's own reason, never a silent fallback.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# stands for the content when rendering a template; no whitespace in it, since templates
# often ``trim`` the content (and Python counts control characters like \x1f as whitespace)
CONTENT_MARK = "SGLCONTENT7d1f04c2"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SYSTEM = {"role": "system", "content": "SGLSYSTEM7d1f"}
_USER = {"role": "user", "content": "SGLUSER7d1f"}
_ASSISTANT = {"role": "assistant", "content": "SGLASSISTANT7d1f"}
# The messages a role's block is rendered after, most natural first: templates that
# refuse a system message or insist on user/assistant alternation accept a later one.
_CONTEXTS: dict[str, tuple[list[dict[str, str]], ...]] = {
    "system": ([],),
    "user": ([_SYSTEM], [], [_USER, _ASSISTANT]),
    "assistant": ([_SYSTEM, _USER], [_USER]),
}
_OTHER_CONTEXTS: tuple[list[dict[str, str]], ...] = ([_SYSTEM, _USER, _ASSISTANT], [_USER, _ASSISTANT], [_SYSTEM], [])


def _render_errors() -> tuple[type[Exception], ...]:
    from jinja2 import TemplateError

    return (TemplateError, ValueError, TypeError, KeyError, IndexError)


class ChatTemplateError(ValueError):
    """The chat template cannot give the text around a message of some role."""


def _token_text(value: Any) -> str:
    """A special token as ``tokenizer_config.json`` stores it (a string or an AddedToken dict)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def special_tokens(folder: str | Path) -> dict[str, str]:
    """``bos_token`` and ``eos_token`` of a checkpoint folder's ``tokenizer_config.json``
    (empty strings when absent), the variables chat templates use besides the messages."""
    f = Path(folder) / "tokenizer_config.json"
    config = json.loads(f.read_text(encoding="utf-8")) if f.exists() else {}
    return {"bos_token": _token_text(config.get("bos_token")), "eos_token": _token_text(config.get("eos_token"))}


class ChatTemplate:
    """A Jinja chat template, rendered as transformers' ``apply_chat_template`` renders it.

    ``template``: the Jinja text (``tokenizer_config.json``'s ``chat_template``);
    ``bos_token`` / ``eos_token``: the tokenizer's, which templates may print; ``name``
    appears in error messages. Raises `ChatTemplateError` for text that is not Jinja.
    """

    def __init__(self, template: str, *, bos_token: str = "", eos_token: str = "", name: str = "the model") -> None:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(template)
        except TemplateError as e:
            raise ChatTemplateError(f"the chat template of {name} is not valid Jinja: {e}") from e
        self.source = template
        self.name = name
        self._variables = {"bos_token": bos_token, "eos_token": eos_token}
        self._affixes: dict[str, tuple[str, str]] = {}

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        """The template's text for ``messages`` (Jinja and ``raise_exception`` errors propagate)."""
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     **self._variables)

    def role_affixes(self, role: str) -> tuple[str, str]:
        """The text before and after the content of a ``role`` message.

        Raises `ChatTemplateError` when no context the template accepts renders a
        ``role`` message around its content (the template's own complaint is quoted).
        """
        if role not in self._affixes:
            self._affixes[role] = self._find_affixes(role)
        return self._affixes[role]

    def _find_affixes(self, role: str) -> tuple[str, str]:
        errors = _render_errors()
        reason = "the content does not appear in its own block"
        for before in _CONTEXTS.get(role, _OTHER_CONTEXTS):
            try:
                full = self.render([*before, {"role": role, "content": CONTENT_MARK}])
            except errors as e:  # the template's own complaint about this role
                reason = str(e) or type(e).__name__
                continue
            try:
                head = self.render(before)
            except errors:  # e.g. an empty conversation it cannot index
                continue
            tail = full[len(head):]
            # a block that carries an earlier message's content (Gemma 3 folds the system
            # prompt into the first user turn) is not this role's own markers
            if full.startswith(head) and tail.count(CONTENT_MARK) == 1 and not any(
                    m["content"] in tail for m in before):
                prefix, suffix = tail.split(CONTENT_MARK)
                return prefix, suffix
        raise ChatTemplateError(
            f"the chat template of {self.name} cannot give the text around a {role!r} message "
            f"({reason}); leave that role out of the program, or pass a chat template that has it")


def role_affixes(template: str | None, role: str, **variables: str) -> tuple[str, str]:
    """`ChatTemplate.role_affixes` of ``template``; ChatML's markers when there is no template."""
    return ChatTemplate(template or CHATML_TEMPLATE, **variables).role_affixes(role)


def _raise_exception(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    from datetime import datetime

    return datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # as transformers does: Jinja's own tojson escapes HTML characters, which templates do not want
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
