"""Structured content of an offer: per channel and language, each field a template, rendered within bounds.

An offer's ``content`` gives, per channel (or ``default``), either a text (its
``body``) or the fields a channel shows: ``title``, ``body``, ``subject`` and
``html`` (e-mail), ``deep_link``, ``image_url`` and ``cta`` (``label`` and
``action``), optionally per language (``{en: {...}, es: {...}}``). The
reader (:mod:`nba_service.policies.content_section`) compiles each field into
a :class:`Template` and checks, against the limits each channel declares in
its own ``content`` (a :class:`FieldLimit` per field), that no rendering can
ever exceed them: the literal text plus the *bound* of every placeholder
(:func:`value_bound`).

Rendering keeps that promise: in a field with a ``max_chars`` limit a value
longer than its bound is cut to it (a number that does not fit is left out:
a cut number would be a wrong one), and in a GSM-7 field (SMS) values are
written in GSM-7's basic characters (``Łukasz`` shows as ``Lukasz``), so a
customer's name can neither lengthen a message nor switch it to UCS-2.

Everything here is pure: the engine computes the values (the profile, the
event, the offer's variables) and calls :meth:`ChannelContent.pick` and
:meth:`LocalizedContent.render`.

>>> t = Template.compile("{first_name}, {amount} {currency} now", bounds={"first_name": 4}, gsm7=True)
>>> t.render({"first_name": "Łukasz", "amount": 12.5, "currency": "EUR"})
'Luka, 12.50 EUR now'
>>> gsm7_length("Price: 5€"), ucs2_length("Precio: 5 €, ¡ahorra! 🎉")
(10, 24)
"""

from __future__ import annotations

import dataclasses
import html
import math
import string
import unicodedata
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "CONTENT_FIELDS",
    "DEFAULT_VARIABLE_BOUND",
    "ESCAPES",
    "ESCAPE_GROWTH",
    "EVENT_FIELD_BOUNDS",
    "NUMBER_BOUND",
    "PROFILE_FIELD_BOUNDS",
    "RENDERED_FIELDS",
    "TEXT_FIELD_BOUND",
    "ChannelContent",
    "FieldLimit",
    "LocalizedContent",
    "Template",
    "format_value",
    "gsm7_length",
    "is_gsm7",
    "language_of",
    "to_gsm7_basic",
    "ucs2_length",
    "value_bound",
]

CONTENT_FIELDS = ("title", "body", "subject", "html", "deep_link", "image_url", "cta")
"""The fields of an offer's content on a channel, as written (``cta`` holds ``label`` and ``action``)."""
RENDERED_FIELDS = ("title", "body", "subject", "html", "deep_link", "image_url", "cta.label", "cta.action")
"""The templates of one language's content, by path."""

NUMBER_BOUND = 13
"""Characters a number takes at most in content: up to 999,999,999.99, or -99,999,999.99 (shown 2 decimals
at most, no separators)."""
TEXT_FIELD_BOUND = 40
"""Characters of an event's text field (an id, a reason, a screen) in content, but those listed below."""
EVENT_FIELD_BOUNDS: Mapping[str, int] = {
    "amount": NUMBER_BOUND,
    "balance": NUMBER_BOUND,
    "shortfall": NUMBER_BOUND,
    "latitude": NUMBER_BOUND,
    "longitude": NUMBER_BOUND,
    "accuracy_m": NUMBER_BOUND,
    "cart_value": NUMBER_BOUND,
    "item_count": 3,
    "currency": 3,
    "url": 200,
    "name": 64,
}
"""Bounds of the event fields that differ from :data:`TEXT_FIELD_BOUND` (``item_count``: at most 500 items;
``currency``: an ISO 4217 code)."""
PROFILE_FIELD_BOUNDS: Mapping[str, int] = {"first_name": 24, "segment": 24}
"""Bounds of the profile fields a template may use."""
DEFAULT_VARIABLE_BOUND = 40
"""Characters of an offer's variable without a declared ``max_len``."""

# GSM 03.38: the basic character set (1 septet each) and its extension table (an escape and a character).
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
_TO_BASIC = {
    "{": "(",
    "}": ")",
    "[": "(",
    "]": ")",
    "~": "-",
    "\\": "/",
    "|": "/",
    "^": "'",
    "€": "E",
    "\f": " ",
    "\t": " ",
    "\u00a0": " ",
    "‘": "'",
    "’": "'",
    "‚": "'",
    "“": '"',
    "”": '"',
    "„": '"',
    "«": '"',
    "»": '"',
    "–": "-",
    "—": "-",
    "…": ".",
    "•": "-",
}
"""Characters outside GSM-7's basic set written as one basic character (else: NFKD's first character)."""


def is_gsm7(text: str) -> bool:
    """True when every character of ``text`` is in GSM-7 (basic set or extension table)."""
    return all(c in _GSM7_BASIC or c in _GSM7_EXTENSION for c in text)


def gsm7_length(text: str) -> int:
    """Septets ``text`` takes in GSM-7 (an extension character such as ``€`` takes 2); ``text`` must be GSM-7."""
    return len(text) + sum(1 for c in text if c in _GSM7_EXTENSION)


def ucs2_length(text: str) -> int:
    """UTF-16 code units ``text`` takes in UCS-2 (a character beyond the BMP, e.g. an emoji, takes 2)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def to_gsm7_basic(text: str) -> str:
    """``text`` in GSM-7's basic characters, one for one: accents GSM-7 lacks dropped (``Ł`` -> ``L``,
    ``á`` -> ``a``), typographic quotes and dashes made plain, anything else ``?``.

    >>> to_gsm7_basic("Łukasz Gómez {VIP} “Olé”")
    'Lukasz Gomez (VIP) "Olé"'
    """
    if all(c in _GSM7_BASIC for c in text):
        return text
    return "".join(_basic(c) for c in text)


def _basic(c: str) -> str:
    if c in _GSM7_BASIC:
        return c
    mapped = _TO_BASIC.get(c)
    if mapped is not None:
        return mapped
    decomposed = unicodedata.normalize("NFKD", c)
    if decomposed and decomposed[0] in _GSM7_BASIC:
        return decomposed[0]
    return _STROKES.get(c, "?")


_STROKES = {"Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Ħ": "H", "ħ": "h", "ı": "i", "Œ": "O", "œ": "o", "Þ": "T"}
"""Letters NFKD does not decompose, written as their base letter."""


def format_value(value: Any) -> str:
    """A template value as people read it: ``100`` not ``100.0``, ``12.50`` not ``12.5``, nothing for None.

    >>> [format_value(v) for v in (100.0, 12.5, 0.125, 3, None, "Ana", float("nan"))]
    ['100', '12.50', '0.12', '3', '', 'Ana', 'nan']
    """
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return str(int(value))
        return f"{value:.2f}"
    return value if isinstance(value, str) else str(value)


def value_bound(name: str, variable_bounds: Mapping[str, int], variables: Iterable[str] = ()) -> int:
    """Characters the value of template field ``name`` takes at most in a field with a limit.

    An offer's variable (it replaces an event field of the same name): its declared ``max_len``, else
    :data:`DEFAULT_VARIABLE_BOUND`; a profile field: :data:`PROFILE_FIELD_BOUNDS`; an event field:
    :data:`EVENT_FIELD_BOUNDS`, else :data:`TEXT_FIELD_BOUND`.
    """
    if name in variable_bounds:
        return variable_bounds[name]
    if name in variables:
        return DEFAULT_VARIABLE_BOUND
    if name in PROFILE_FIELD_BOUNDS:
        return PROFILE_FIELD_BOUNDS[name]
    return EVENT_FIELD_BOUNDS.get(name, TEXT_FIELD_BOUND)


@dataclasses.dataclass(frozen=True, slots=True)
class FieldLimit:
    """What a channel declares for one content field: that it takes it, and at most how long it may be."""

    field: str
    max_chars: int | None = None
    """Characters at most (in GSM-7 septets with ``encoding: gsm7``); None: no limit."""
    encoding: str = ""
    """``gsm7`` (SMS): counted in GSM-7 septets while the text is GSM-7, else in UCS-2 against
    ``ucs2_max_chars``; empty: counted in characters."""
    ucs2_max_chars: int | None = None
    """With ``encoding: gsm7``, the limit when the text is not GSM-7 (by default, the same bytes: 7/16 of
    ``max_chars``, 70 for 160)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Template:
    """A compiled ``{field}`` template: literal text and placeholders, each with the bound of its value."""

    source: str
    parts: tuple[tuple[str, str | None, int], ...]
    """(literal text, then the name of a placeholder or None, the bound of its value or 0 for none)."""
    gsm7: bool = False
    """Values are written in GSM-7's basic characters (the field is counted in GSM-7)."""
    escape: str = ""
    """How values are written: ``html`` (escaped: an e-mail's HTML), ``url`` (characters a link cannot hold
    percent-encoded: a deep link, an image, a call to action) or as they are."""

    @classmethod
    def compile(
        cls, source: str, bounds: Mapping[str, int] | None = None, gsm7: bool = False, escape: str = ""
    ) -> Template:
        """``source`` as parts; with ``bounds``, each value is cut to its bound when rendered (before it is
        escaped). Raises ValueError for a malformed template."""
        parts = []
        for literal, name, _, _ in string.Formatter().parse(source):
            bound = 0 if name is None or bounds is None else bounds.get(name, 0)
            parts.append((literal, name, bound))
        return cls(source, tuple(parts), gsm7, escape)

    @property
    def literal(self) -> str:
        """The template's text without its placeholders (``{{`` read as ``{``)."""
        return "".join(literal for literal, _, _ in self.parts)

    @property
    def names(self) -> tuple[str, ...]:
        """The placeholders, in order (a name used twice is listed twice)."""
        return tuple(name for _, name, _ in self.parts if name is not None)

    def render(self, values: Mapping[str, Any]) -> str:
        out = []
        for literal, name, bound in self.parts:
            out.append(literal)
            if name is None:
                continue
            value = values.get(name)
            text = format_value(value)
            if bound and len(text) > bound:
                # a cut number would be another number: leave it out; a text is cut
                text = "" if isinstance(value, (int, float)) else text[:bound]
            if self.gsm7:
                text = to_gsm7_basic(text)
            if self.escape == "html":
                text = html.escape(text)
            elif self.escape == "url":
                text = urllib.parse.quote(text, safe=_URL_SAFE)
            out.append(text)
        return "".join(out)


ESCAPES: Mapping[str, str] = {"html": "html", "deep_link": "url", "image_url": "url", "cta.action": "url"}
"""How each field writes its values (:attr:`Template.escape`); a field not listed writes them as they are."""
ESCAPE_GROWTH: Mapping[str, int] = {"html": 6, "url": 12}
"""How many characters one character of a value can take once escaped (``&quot;``; ``%F0%9F%8E%89``)."""
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"
"""Characters a value keeps as they are in a link (a whole URL in a variable stays one)."""


@dataclasses.dataclass(frozen=True, slots=True)
class LocalizedContent:
    """The content of one channel in one language: a template per field (``RENDERED_FIELDS`` paths)."""

    language: str
    """The language code as written (``es``, ``pt-br``), or empty for content without languages."""
    fields: Mapping[str, Template]

    def render(self, values: Mapping[str, Any]) -> dict[str, str]:
        """Every field of this content, rendered: path (``title``, ``cta.label``...) -> text."""
        return {path: template.render(values) for path, template in self.fields.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelContent:
    """An offer's content for one channel: one :class:`LocalizedContent` per language, in the order written
    (one, with no language, when the content is not per language)."""

    variants: tuple[LocalizedContent, ...]

    def pick(self, language: str, default_language: str = "") -> LocalizedContent:
        """The variant for a customer whose language is ``language`` (a profile attribute, any case, ``_`` or
        ``-``): that language, else its base language (``es`` for ``es-MX``), else the set's
        ``default_language`` the same way, else the first variant written.

        >>> c = ChannelContent(tuple(LocalizedContent(lang, {}) for lang in ("en", "es", "pt-br")))
        >>> [c.pick(x, "es").language for x in ("es", "ES_mx", "pt", "de", "")]
        ['es', 'es', 'pt-br', 'es', 'es']
        """
        variants = self.variants
        if len(variants) == 1:
            return variants[0]
        for wanted in (language, default_language):
            found = _match(variants, language_of(wanted))
            if found is not None:
                return found
        return variants[0]


def _match(variants: tuple[LocalizedContent, ...], wanted: str) -> LocalizedContent | None:
    if not wanted:
        return None
    base = wanted.split("-", 1)[0]
    for test in (
        lambda lang: lang == wanted,
        lambda lang: lang == base,
        lambda lang: lang.split("-", 1)[0] == base,
    ):
        for variant in variants:
            if test(variant.language):
                return variant
    return None


def language_of(text: str | None) -> str:
    """A language code as content is keyed by it: lower case, ``-`` between parts (``es_MX`` -> ``es-mx``)."""
    return (text or "").strip().lower().replace("_", "-")
