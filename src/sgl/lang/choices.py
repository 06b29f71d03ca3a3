"""How ``select`` scores its choices: SGLang's method objects, as names a backend knows."""

from __future__ import annotations

from dataclasses import dataclass

METHOD_NAMES = (
    "token_length_normalized",
    "greedy_token_selection",
    "unconditional_likelihood_normalized",
)


@dataclass(frozen=True)
class ChoicesSamplingMethod:
    """A scoring method for ``sgl.select``; backends receive ``.name``."""

    name: str

    def __str__(self) -> str:
        return self.name


token_length_normalized = ChoicesSamplingMethod("token_length_normalized")
greedy_token_selection = ChoicesSamplingMethod("greedy_token_selection")
unconditional_likelihood_normalized = ChoicesSamplingMethod("unconditional_likelihood_normalized")


def method_name(method: ChoicesSamplingMethod | str | None) -> str:
    """The backend name of ``method`` (an SGLang-style object, its class, or a string)."""
    if method is None:
        return token_length_normalized.name
    if isinstance(method, type):  # SGLang code sometimes passes the class itself
        method = method.__name__
    name = method if isinstance(method, str) else getattr(method, "name", None)
    if name is None:
        name = type(method).__name__
    name = _camel_to_snake(name)
    if name not in METHOD_NAMES:
        raise ValueError(
            f"unknown choices_method {method!r}; expected one of {', '.join(METHOD_NAMES)}"
        )
    return name


def _camel_to_snake(name: str) -> str:
    # SGLang's classes are TokenLengthNormalized etc.; accept those spellings too
    if "_" in name or name.islower():
        return name
    out = [name[0].lower()]
    for ch in name[1:]:
        out.append("_" + ch.lower() if ch.isupper() else ch)
    return "".join(out)
