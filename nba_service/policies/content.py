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
import re
import string
import unicodedata
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
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
    "pick_language",
    "placeholder_encodings",
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
    """How values are written: ``html`` (escaped: an e-mail's HTML), ``url`` (percent-encoded: a deep link, an
    image, a call to action) or as they are. Each placeholder's own way is in :attr:`encodings`."""
    encodings: tuple[str, ...] = dataclasses.field(init=False, default=())
    """How each placeholder's value is written, in order (a key of :data:`ESCAPE_GROWTH`, or empty: as it is),
    from ``escape`` and where the placeholder stands: see :func:`placeholder_encodings`."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "encodings", placeholder_encodings(self.parts, self.escape))

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

    @property
    def growths(self) -> tuple[int, ...]:
        """How many characters one character of each placeholder's value can take once written, in order."""
        return tuple(ESCAPE_GROWTH.get(encoding, 1) for encoding in self.encodings)

    def render(self, values: Mapping[str, Any]) -> str:
        out = []
        encodings = iter(self.encodings)
        for literal, name, bound in self.parts:
            out.append(literal)
            if name is None:
                continue
            encoding = next(encodings, "")
            value = values.get(name)
            text = format_value(value)
            if bound and len(text) > bound:
                # a cut number would be another number: leave it out; a text is cut
                text = "" if isinstance(value, (int, float)) else text[:bound]
            if self.gsm7:
                text = to_gsm7_basic(text)
            out.append(_encode(text, encoding))
        return "".join(out)


ESCAPES: Mapping[str, str] = {"html": "html", "deep_link": "url", "image_url": "url", "cta.action": "url"}
"""How each field writes its values (:attr:`Template.escape`); a field not listed writes them as they are."""
ESCAPE_GROWTH: Mapping[str, int] = {"html": 6, "link": 12, "component": 12, "html_link": 12, "html_component": 12}
"""How many characters one character of a value can take once written, per placeholder encoding (``&quot;``;
``%F0%9F%8E%89``: 4 UTF-8 bytes, 3 characters each; in an attribute, percent-encoding comes first and leaves
no character HTML escapes but ``&``, 5 as ``&amp;``)."""
_URL_SAFE = ":/?#[]@!$&()*+,;=%~"
"""Characters a whole URL's value keeps as they are (a URL in a variable stays one); no space, quote or control
character."""
_COMPONENT_SAFE = "-._~"
"""Characters a value inside a link keeps as they are (``&``, ``=``, ``#``, ``?``, ``/``, ``%`` are encoded)."""
_URL_ATTRIBUTE = re.compile(r"\b(?:href|src)\s*=\s*([\"']?)", re.IGNORECASE)
"""Where an HTML attribute holding a link opens (its quote, or none)."""
_UNSAFE_SCHEMES = ("javascript:", "data:", "vbscript:")
"""Schemes a whole-URL value may not have (it would run or show what it holds): such a value is left out."""
_IGNORED_IN_SCHEME = re.compile(r"[\x00-\x20\x7f]+")
"""Characters left out when a whole URL's scheme is checked (a browser skips them around a URL, and a tab inside
``javascript:`` does not stop it)."""


def placeholder_encodings(parts: Iterable[tuple[str, str | None, int]], escape: str) -> tuple[str, ...]:
    """How each placeholder of a template with ``parts`` writes its value, in a field written as ``escape``.

    In a link (``url``): ``link`` for a placeholder that starts it (the whole URL, or its scheme and host,
    comes from a value: it stays a URL, without spaces, quotes or control characters, and a ``javascript:``,
    ``data:`` or ``vbscript:`` one is left out); ``component`` for any other (``&``, ``=``, ``#``, ``/``...
    encoded: the value cannot add a parameter or move the rest into a fragment). In ``html``: ``html``
    (escaped), or, inside an ``href``/``src`` attribute, ``html_link`` when the value starts it and
    ``html_component`` otherwise (encoded as in a link, then escaped).

    >>> Template.compile("{base}/cart?id={cart_id}&src=push", escape="url").encodings
    ('link', 'component')
    >>> Template.compile("<a href='{link}'>{name}</a><img src='x/{id}'>", escape="html").encodings
    ('html_link', 'html', 'html_component')
    >>> Template.compile("{base}{cart_id}", escape="url").encodings  # only the first starts the URL
    ('link', 'component')
    >>> Template.compile("<a href='{base}{id}'>", escape="html").encodings
    ('html_link', 'html_component')
    """
    out = []
    before = ""
    for literal, name, _ in parts:
        before += literal
        if name is None:
            continue
        if escape == "url":
            out.append("link" if not before else "component")
        elif escape == "html":
            out.append(_html_encoding(before))
        else:
            out.append("")
        before += "\x00"  # a value stands here: a placeholder right after it does not start the URL
    return tuple(out)


def _html_encoding(before: str) -> str:
    """How a placeholder of an HTML template preceded by the literal text ``before`` writes its value."""
    attributes = list(_URL_ATTRIBUTE.finditer(before))
    if not attributes:
        return "html"
    opened = attributes[-1]  # the last one: the placeholder is in its value unless it closed since
    quote, rest = opened.group(1), before[opened.end() :]
    closed = quote in rest if quote else any(c.isspace() or c == ">" for c in rest)
    if closed:
        return "html"
    return "html_component" if rest else "html_link"


def _encode(text: str, encoding: str) -> str:
    """``text`` written as ``encoding`` says (see :func:`placeholder_encodings`)."""
    if not encoding:
        return text
    if encoding == "html":
        return html.escape(text)
    if encoding.endswith("link"):
        if _IGNORED_IN_SCHEME.sub("", text).lower().startswith(_UNSAFE_SCHEMES):
            return ""
        text = urllib.parse.quote(text, safe=_URL_SAFE)
    else:
        text = urllib.parse.quote(text, safe=_COMPONENT_SAFE)
    return html.escape(text) if encoding.startswith("html") else text


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
        return variants[pick_language([v.language for v in variants], language, default_language)]


def pick_language(written: Sequence[str], language: str, default_language: str = "") -> int:
    """Which of the languages ``written`` (keyed as :func:`language_of` writes them; ``""`` for a text without
    languages) serves ``language``: the position of that language, else of its base language (``es`` for
    ``es-MX``), else of another region of the same base (``pt-br`` for ``pt``), else the same for
    ``default_language``, else 0 (the first written). Offers' content, reasons' texts and agent scripts all
    choose their language here.

    >>> [pick_language(["en", "es", "pt-br"], x, "es") for x in ("es", "ES_mx", "pt", "de", "")]
    [1, 1, 2, 1, 1]
    """
    for wanted in (language, default_language):
        wanted = language_of(wanted)
        if not wanted:
            continue
        base = wanted.split("-", 1)[0]
        for candidate in (wanted, base):
            if candidate in written:
                return written.index(candidate)
        for position, code in enumerate(written):
            if code.split("-", 1)[0] == base:
                return position
    return 0


def language_of(text: str | None) -> str:
    """A language code as content is keyed by it: lower case, ``-`` between parts (``es_MX`` -> ``es-mx``)."""
    return (text or "").strip().lower().replace("_", "-")
