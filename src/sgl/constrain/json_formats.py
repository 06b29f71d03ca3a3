"""JSON Schema ``format`` values as decoded-string languages (``format_node``).
"""

from __future__ import annotations

from functools import lru_cache

from .errors import ConstraintError
from .regex_ast import Node

# ---------------------------------------------------------------------------
# Formats (RFC 3339, 5321, 1123, 3986, 4122, 6570, 6901)

_DEC_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_DEC_OCTET}(?:\.{_DEC_OCTET}){{3}}"
_H16 = r"[0-9A-Fa-f]{1,4}"
_LS32 = rf"(?:{_H16}:{_H16}|{_IPV4})"


def _ipv6() -> str:
    """RFC 3986 IPv6address, line by line."""
    tails = [
        rf"(?:{_H16}:){{4}}{_LS32}",
        rf"(?:{_H16}:){{3}}{_LS32}",
        rf"(?:{_H16}:){{2}}{_LS32}",
        rf"{_H16}:{_LS32}",
        _LS32,
        _H16,
        "",
    ]
    alts = [rf"(?:{_H16}:){{6}}{_LS32}", rf"::(?:{_H16}:){{5}}{_LS32}"]
    for j, tail in enumerate(tails):
        head = rf"(?:(?:{_H16}:){{0,{j}}}{_H16})?" if j else rf"(?:{_H16})?"
        alts.append(rf"{head}::{tail}")
    return "(?:" + "|".join(alts) + ")"


_IPV6 = _ipv6()
_DAY31 = r"(?:0[1-9]|[12][0-9]|3[01])"
_DAY30 = r"(?:0[1-9]|[12][0-9]|30)"
_LEAP_YEAR = r"(?:[0-9]{2}(?:[02468][48]|[13579][26]|[2468]0)|(?:[02468][048]|[13579][26])00)"
_DATE = (
    rf"(?:[0-9]{{4}}-(?:(?:0[13578]|1[02])-{_DAY31}|(?:0[469]|11)-{_DAY30}|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    rf"|{_LEAP_YEAR}-02-29)"
)
_OFFSET = r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
# A leap second (:60) is accepted at 23:59 UTC only (Z, +00:00, -00:00): exact leap
# seconds with other offsets would need ~1,500 automaton states per lexeme.
_TIME = (
    rf"(?:(?:(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?{_OFFSET})"
    r"|23:59:60(?:\.[0-9]+)?(?:[Zz]|[+-]00:00))"
)
_DURATION = (
    r"P(?:(?:[0-9]+D|[0-9]+M(?:[0-9]+D)?|[0-9]+Y(?:[0-9]+M(?:[0-9]+D)?)?)(?:T(?:[0-9]+H(?:[0-9]+M(?:[0-9]+S)?)?|[0-9]+M(?:[0-9]+S)?|[0-9]+S))?"
    r"|T(?:[0-9]+H(?:[0-9]+M(?:[0-9]+S)?)?|[0-9]+M(?:[0-9]+S)?|[0-9]+S)|[0-9]+W)"
)
_LD = "A-Za-z0-9"
# RFC 1123 labels; a label with "--" in positions 3-4 is an IDNA A-label ("xn--"),
# whose Punycode a regex cannot check, so such labels are refused. The 253-character
# total length is not checked.
_LABEL = rf"[{_LD}](?:|[{_LD}]|[{_LD}-][{_LD}]|[{_LD}-][{_LD}-][{_LD}]|[{_LD}-](?:[{_LD}][{_LD}-]|-[{_LD}])[{_LD}-]{{0,58}}[{_LD}])"
_HOSTNAME = rf"{_LABEL}(?:\.{_LABEL})*"
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
_EMAIL = (
    rf"(?:{_ATEXT}+(?:\.{_ATEXT}+)*|\"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*\")"
    rf"@(?:[{_LD}](?:[{_LD}-]*[{_LD}])?(?:\.[{_LD}](?:[{_LD}-]*[{_LD}])?)*|\[(?:{_IPV4}|IPv6:{_IPV6})\])"
)
_UUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"

# RFC 3986
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"


def _uri_parts(extra: str = "") -> dict[str, str]:
    """RFC 3986 productions; ``extra`` adds characters (IRI's ucschar) to unreserved."""
    unres = _UNRESERVED + extra
    pchar = rf"(?:[{unres}{_SUB_DELIMS}:@]|{_PCT})"
    seg = rf"{pchar}*"
    seg_nz = rf"{pchar}+"
    seg_nz_nc = rf"(?:[{unres}{_SUB_DELIMS}@]|{_PCT})+"
    ip_future = rf"[vV][0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+"
    host = rf"(?:\[(?:{_IPV6}|{ip_future})\]|{_IPV4}|(?:[{unres}{_SUB_DELIMS}]|{_PCT})*)"
    userinfo = rf"(?:[{unres}{_SUB_DELIMS}:]|{_PCT})*"
    authority = rf"(?:{userinfo}@)?{host}(?::[0-9]*)?"
    query = rf"(?:{pchar}|[/?]" + ("|[\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd]" if extra else "") + ")*"
    fragment = rf"(?:{pchar}|[/?])*"
    path_abempty = rf"(?:/{seg})*"
    path_absolute = rf"/(?:{seg_nz}(?:/{seg})*)?"
    path_rootless = rf"{seg_nz}(?:/{seg})*"
    path_noscheme = rf"{seg_nz_nc}(?:/{seg})*"
    hier = rf"(?://{authority}{path_abempty}|{path_absolute}|{path_rootless}|)"
    rel = rf"(?://{authority}{path_abempty}|{path_absolute}|{path_noscheme}|)"
    scheme = r"[A-Za-z][A-Za-z0-9+\-.]*"
    uri = rf"{scheme}:{hier}(?:\?{query})?(?:#{fragment})?"
    relative = rf"{rel}(?:\?{query})?(?:#{fragment})?"
    return {"uri": uri, "uri-reference": rf"(?:{uri}|{relative})"}


_UCSCHAR = (
    "\u00a0-\ud7ff\uf900-\ufdcf\ufdf0-\uffef\U00010000-\U0001fffd\U00020000-\U0002fffd"
    "\U00030000-\U0003fffd\U00040000-\U0004fffd\U00050000-\U0005fffd\U00060000-\U0006fffd"
    "\U00070000-\U0007fffd\U00080000-\U0008fffd\U00090000-\U0009fffd\U000a0000-\U000afffd"
    "\U000b0000-\U000bfffd\U000c0000-\U000cfffd\U000d0000-\U000dfffd\U000e1000-\U000efffd"
)
_URI = _uri_parts()
_IRI = _uri_parts(_UCSCHAR)
_JSON_POINTER = r"(?:/(?:[^/~]|~[01])*)*"
_REL_JSON_POINTER = rf"(?:0|[1-9][0-9]*)(?:#|{_JSON_POINTER})"
_URI_TEMPLATE_LITERAL = (
    r"(?:[\x21\x23\x24\x26-\x3b\x3d\x3f-\x5b\x5d\x5f\x61-\x7a\x7e" + _UCSCHAR
    + "\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd]|%[0-9A-Fa-f]{2})"
)
_VARNAME = r"(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2})(?:\.?(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2}))*"
_VARSPEC = rf"{_VARNAME}(?::[1-9][0-9]{{0,3}}|\*)?"
_URI_TEMPLATE = rf"(?:{_URI_TEMPLATE_LITERAL}|\{{[+#./;?&=,!@|]?{_VARSPEC}(?:,{_VARSPEC})*\}})*"

# format "regex": ECMA-262 pattern syntax (letter escapes as ECMA-262 defines them, so
# no Python-only ``\a``/``\Z``; any other character may be escaped, as Annex B and most
# validators allow; no Python-only groups or inline flags). Groups nest without bound, which no regular
# language can check: nesting is followed _REGEX_DEPTH deep, and anything is accepted
# inside a deeper group (an over-approximation only there). Also over-approximated:
# ``{``, ``}`` and ``]`` as literals (Annex B), quantifier bounds, class range order and
# backreference targets.
_REGEX_DEPTH = 3
_REGEX_NAME = r"[A-Za-z_$][A-Za-z0-9_$]*"
_REGEX_CHAR_ESCAPE = (
    r"(?:[fnrtv0dDsSwW]|c[A-Za-z]|x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|u\{[0-9A-Fa-f]+\}"
    r"|[pP]\{[A-Za-z0-9_=]+\}|[^0-9A-Za-z])"
)
_REGEX_ATOM_ESCAPE = rf"\\(?:{_REGEX_CHAR_ESCAPE}|[1-9][0-9]*|k<{_REGEX_NAME}>)"
_REGEX_CLASS = rf"\[\^?(?:[^\\\]]|\\(?:{_REGEX_CHAR_ESCAPE}|[bB0-9-]))*\]"
_REGEX_QUANTIFIER = r"(?:[*+?]|\{[0-9]+(?:,[0-9]*)?\})\??"
_REGEX_GROUP_OPEN = rf"\((?:\?(?::|=|!|<=|<!|<{_REGEX_NAME}>))?"


def _regex_syntax(depth: int) -> str:
    """ECMA-262 pattern syntax with groups nested at most ``depth`` deep (then anything)."""
    if depth == 0:
        return r"[\s\S]*"
    inner = _regex_syntax(depth - 1)
    atom = rf"(?:[^^$\\.*+?()\[|]|\.|{_REGEX_ATOM_ESCAPE}|{_REGEX_CLASS}|{_REGEX_GROUP_OPEN}{inner}\))"
    term = rf"(?:\^|\$|\\[bB]|{atom}(?:{_REGEX_QUANTIFIER})?)"
    return rf"(?:{term}|\|)*"


FORMAT_REGEXES: dict[str, str] = {
    "date": _DATE,
    "time": _TIME,
    "date-time": rf"{_DATE}[Tt]{_TIME}",
    "duration": _DURATION,
    "email": _EMAIL,
    "hostname": _HOSTNAME,
    "ipv4": _IPV4,
    "ipv6": _IPV6,
    "uuid": _UUID,
    "uri": _URI["uri"],
    "uri-reference": _URI["uri-reference"],
    "iri": _IRI["uri"],
    "iri-reference": _IRI["uri-reference"],
    "json-pointer": _JSON_POINTER,
    "relative-json-pointer": _REL_JSON_POINTER,
    "uri-template": _URI_TEMPLATE,
    "regex": _regex_syntax(_REGEX_DEPTH),
}

# Formats the specifications define but a regex cannot check: refused, not ignored.
UNSUPPORTED_FORMATS = frozenset({"idn-email", "idn-hostname"})
# Formats a regular language can only over-approximate (recorded as a note when used).
APPROXIMATE_FORMATS = frozenset({"regex"})


@lru_cache(maxsize=64)
def format_node(name: str) -> Node | None:
    """The decoded strings valid for ``format``; None for an unknown (ignored) format.

    Raises ``ConstraintError`` for a known format that cannot be checked by a regex.
    """
    from .format_lexemes import shipped_format
    from .regex import parse_regex

    if name in UNSUPPORTED_FORMATS:
        raise ConstraintError(f"format {name!r} cannot be enforced by a regular expression")
    text = FORMAT_REGEXES.get(name)
    if text is None:
        return None
    shipped = shipped_format(name, FORMAT_REGEXES)  # with its lexeme and DFA (format_lexemes)
    return shipped if shipped is not None else parse_regex(text)
