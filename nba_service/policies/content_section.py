"""Reader of content in a policy set: an offer's ``content``, a channel's ``content`` limits, the default language.

An offer's content, per channel of the offer (or ``default``, for its channels
without their own), is one of:

- a text: the ``body`` (``push: "{first_name}, ..."``);
- the fields the channel shows: ``{title: ..., body: ..., deep_link: ...,
  cta: {label: ..., action: ...}}``;
- per language, either of the above: ``{en: {...}, es: {...}}`` (a mapping
  none of whose keys is a content field).

Every field is a ``{field}`` template, checked as the plain text always was
(known fields only, no format). ``body`` is required: ``Action.content`` carries
it to clients that read no more.

A channel may declare the fields it takes and their limits::

    - id: sms
      content:
        body: {max_chars: 160, encoding: gsm7}

It then takes only those fields, and a template whose rendering *can* exceed a
limit is refused: its literal text plus the bound of each value
(:func:`nba_service.policies.content.value_bound`) must fit, counted in GSM-7
septets when the text is GSM-7, otherwise in UCS-2 against ``ucs2_max_chars``
(by default 7/16 of ``max_chars``, 70 for 160). A channel without ``content``
takes every field, without limits.

>>> from nba_service.policies.model import ChannelSpec
>>> from nba_service.policies.yaml_source import read_documents
>>> col = Collector("offers.yaml")
>>> [root] = read_documents('''
... sms:
...   en: "{first_name}, your loan is ready"
...   es: "{first_name}, tu préstamo está listo"''', col)
>>> sms = ChannelSpec("sms", "SMS", content_fields=(FieldLimit("body", 30, "gsm7"),))
>>> flat, per_channel = parse_offer_content(root, "offer", col, ["sms"], {"sms": sms}, {"first_name"}, {}, ())
>>> flat
{'sms.en': '{first_name}, your loan is ready', 'sms.es': '{first_name}, tu préstamo está listo'}
>>> import textwrap
>>> for issue in col.issues:
...     print(textwrap.fill(str(issue), 100))
offers.yaml:3:7: offer.content.sms.en.body: can be 44 GSM-7 characters long, over sms's limit of 30
(text 20, {first_name} up to 24): shorten the text
offers.yaml:4:7: offer.content.sms.es.body: can be 48 characters long in UCS-2 (its text has 'á',
which GSM-7 lacks), over sms's limit of 13 in UCS-2 (30 in GSM-7) (text 24, {first_name} up to 24):
shorten the text, or write it in GSM-7
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping

from nba_service.policies.content import (
    CONTENT_FIELDS,
    ESCAPES,
    ChannelContent,
    FieldLimit,
    LocalizedContent,
    Template,
    gsm7_length,
    is_gsm7,
    ucs2_length,
    value_bound,
)
from nba_service.policies.model import ChannelSpec
from nba_service.policies.yaml_source import Collector, _Node, shown

__all__ = ["LANGUAGE", "check_template", "parse_channel_content", "parse_language", "parse_offer_content"]

LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$")
"""A language code as content is keyed by: ``en``, ``es``, ``pt-br`` (lower case)."""
_ENCODINGS = ("gsm7",)
_LIMIT_KEYS = {"max_chars", "encoding", "ucs2_max_chars"}
_CTA_KEYS = {"label", "action"}


# --- channels and settings -------------------------------------------------------------


def parse_channel_content(node: _Node | None, where: str, col: Collector) -> tuple[FieldLimit, ...] | None:
    """A channel's ``content``: the fields it takes, each with its limits (None: any field, no limit)."""
    if node is None:
        return None
    if not isinstance(node.value, dict) or not node.value:
        col.add(node, f"{where}: expected a mapping of content field to its limits, e.g. {{body: {{max_chars: 160}}}}")
        return None
    out = []
    for name, (key_node, value_node) in node.value.items():
        here = f"{where}.{name}"
        if name not in CONTENT_FIELDS:
            col.add(key_node, f"{where}: unknown content field {name!r} (known: {', '.join(CONTENT_FIELDS)})")
            continue
        limit = _parse_field_limit(value_node, here, name, col)
        if limit is not None:
            out.append(limit)
    if out and "body" not in {limit.field for limit in out}:
        col.add(node, f"{where}: body is missing: every offer's content has one (the text of Action.content)")
    return tuple(out)


def _parse_field_limit(node: _Node, where: str, field: str, col: Collector) -> FieldLimit | None:
    if node.value is None:  # `deep_link:` alone: taken, no limit
        return FieldLimit(field)
    fields = col.mapping(node, where, _LIMIT_KEYS)
    if fields is None:
        return None
    max_chars = _whole(fields.get("max_chars"), f"{where}.max_chars", col)
    encoding = ""
    if "encoding" in fields:
        encoding = str(fields["encoding"].value)
        if encoding not in _ENCODINGS:
            col.add(fields["encoding"], f"{where}.encoding: expected gsm7, got {shown(fields['encoding'].value)}")
            encoding = ""
        elif max_chars is None:
            col.add(fields["encoding"], f"{where}.encoding: an encoding counts characters: give max_chars too")
    ucs2 = _whole(fields.get("ucs2_max_chars"), f"{where}.ucs2_max_chars", col)
    if ucs2 is not None and encoding != "gsm7":
        col.add(fields["ucs2_max_chars"], f"{where}.ucs2_max_chars: only with encoding: gsm7")
        ucs2 = None
    if encoding == "gsm7" and max_chars is not None and ucs2 is None:
        ucs2 = max_chars * 7 // 16  # the same bytes: 160 septets = 140 bytes = 70 UCS-2 characters
    return FieldLimit(field, max_chars, encoding, ucs2)


def _whole(node: _Node | None, where: str, col: Collector) -> int | None:
    if node is None:
        return None
    value = node.value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        col.add(node, f"{where}: expected a whole number >= 1, got {shown(value)}")
        return None
    return value


def parse_language(node: _Node | None, where: str, col: Collector) -> str:
    """A language code (``settings.default_language``); empty when not given or wrong (an issue then)."""
    if node is None:
        return ""
    value = node.value
    if not isinstance(value, str) or not LANGUAGE.match(value):
        col.add(node, f"{where}: {shown(value)} is not a language code like en, es or pt-br{_bool_hint(value)}")
        return ""
    return value


def _bool_hint(value: object) -> str:
    return " (YAML reads no, yes, on, off unquoted as false or true: quote it, 'no')" if isinstance(value, bool) else ""


# --- offers ---------------------------------------------------------------------------


def parse_offer_content(
    node: _Node | None,
    where: str,
    col: Collector,
    offer_channels: list[str],
    channels: Mapping[str, ChannelSpec],
    allowed: set[str],
    variable_bounds: Mapping[str, int],
    variables: Iterable[str],
) -> tuple[dict[str, str], dict[str, ChannelContent]]:
    """An offer's ``content``: its templates as written (path -> text, what a diff compares) and, for each of
    the offer's channels, the content compiled for that channel's limits (every problem recorded in ``col``).

    ``allowed`` are the names its templates may use; ``variable_bounds`` the declared ``max_len`` of its
    variables, ``variables`` all their names.
    """
    if node is None:
        return {}, {}
    if not isinstance(node.value, dict):
        col.add(node, f"{where}.content: expected a mapping of channel (or default) to text")
        return {}, {}
    flat: dict[str, str] = {}
    written: dict[str, list[tuple[str, dict[str, tuple[str, _Node]]]]] = {}
    for key, (key_node, value_node) in node.value.items():
        if key != "default" and key not in offer_channels:
            col.add(key_node, f"{where}.content: {key!r} is neither one of the offer's channels nor 'default'")
            continue
        variants = _read_channel(value_node, f"{where}.content.{key}", key, col, allowed, flat)
        if variants is not None:
            written[key] = variants
    per_channel: dict[str, ChannelContent] = {}
    names = frozenset(variables)
    for channel in offer_channels:
        key = next((k for k in (channel, "default") if k in node.value), None)
        if key is None:
            col.add(node, f"{where}.content: no text for channel {channel!r} and no 'default'")
            continue
        if key not in written:  # its content has problems, already reported
            continue
        spec = channels.get(channel)
        limits = {limit.field: limit for limit in spec.content_fields} if spec and spec.content_fields else None
        label = f"{where}.content.{key}"
        compiled = _compile_for(written[key], label, channel, limits, col, variable_bounds, names)
        if compiled is not None:
            per_channel[channel] = compiled
    return flat, per_channel


def _read_channel(
    node: _Node, where: str, key: str, col: Collector, allowed: set[str], flat: dict[str, str]
) -> list[tuple[str, dict[str, tuple[str, _Node]]]] | None:
    """The variants of one channel's content as written: (language or "", field path -> (template, node))."""
    value = node.value
    if isinstance(value, dict) and value and not any(name in CONTENT_FIELDS for name in value):
        variants = []
        for language, (key_node, value_node) in value.items():
            if value_node.value is None:  # push: {first_name}, ... read as the mapping {first_name: null}
                col.add(node, f"{where}: expected non-empty text, got a mapping (text starting with {{ must be quoted)")
                return None
            if not LANGUAGE.match(language):
                original = key_node.value
                col.add(
                    key_node,
                    f"{where}: {language!r} is neither a content field ({', '.join(CONTENT_FIELDS)}) nor a"
                    f" language code like en, es or pt-br{_bool_hint(original)}",
                )
                continue
            fields = _read_fields(value_node, f"{where}.{language}", f"{key}.{language}", col, allowed, flat)
            if fields is not None:
                variants.append((language, fields))
        return variants or None
    fields = _read_fields(node, where, key, col, allowed, flat)
    return None if fields is None else [("", fields)]


def _read_fields(
    node: _Node, where: str, path: str, col: Collector, allowed: set[str], flat: dict[str, str]
) -> dict[str, tuple[str, _Node]] | None:
    """One language's fields: a text (its body) or a mapping of fields; each template checked."""
    if isinstance(node.value, str):
        text = col.text(node, where)
        if not text or not check_template(text, node, where, col, allowed):
            return None
        flat[path] = text
        return {"body": (text, node)}
    if not isinstance(node.value, dict):
        col.add(
            node,
            f"{where}: expected a text, a mapping of fields ({', '.join(CONTENT_FIELDS)}) or of languages,"
            f" got {shown(node.value)}",
        )
        return None
    fields = col.mapping(node, where, set(CONTENT_FIELDS), required=("body",))
    if fields is None:
        return None
    out: dict[str, tuple[str, _Node]] = {}
    for name, value_node in fields.items():
        if name == "cta":
            cta = col.mapping(value_node, f"{where}.cta", _CTA_KEYS, required=("label", "action"))
            parts = [(f"cta.{part}", cta[part]) for part in ("label", "action") if cta and part in cta]
        else:
            parts = [(name, value_node)]
        for field, field_node in parts:
            here = f"{where}.{field}"
            text = col.text(field_node, here)
            if text and check_template(text, field_node, here, col, allowed):
                out[field] = (text, field_node)
                flat[f"{path}.{field}"] = text
    return out if "body" in out else None


def _compile_for(
    variants: list[tuple[str, dict[str, tuple[str, _Node]]]],
    where: str,
    channel: str,
    limits: Mapping[str, FieldLimit] | None,
    col: Collector,
    variable_bounds: Mapping[str, int],
    variables: frozenset[str],
) -> ChannelContent | None:
    """The variants compiled for ``channel``: its fields only, each within its limit (None: a problem)."""
    before = len(col.issues)
    compiled = []
    for language, fields in variants:
        here = f"{where}.{language}" if language else where
        on = "" if where.endswith(f".{channel}") else f" (on {channel})"
        templates = {}
        for path, (text, node) in fields.items():
            field = path.split(".", 1)[0]
            limit = limits.get(field) if limits is not None else None
            if limits is not None and limit is None:
                col.add(node, f"{here}.{path}{on}: {channel} does not take {field} (it takes: {', '.join(limits)})")
                continue
            escape = ESCAPES.get(path, "")
            bounded = limit is not None and limit.max_chars is not None and path != "cta.action"
            if not bounded:
                templates[path] = Template.compile(text, escape=escape)
                continue
            assert limit is not None
            bounds = {name: value_bound(name, variable_bounds, variables) for name in _names(text)}
            template = Template.compile(text, bounds, gsm7=limit.encoding == "gsm7", escape=escape)
            # each placeholder as written: its bound times what one character can take once escaped or encoded
            placeholders = zip(template.names, template.growths, strict=True)
            shown_bounds = [(name, bounds[name] * growth) for name, growth in placeholders]
            problem = _over_limit(template, limit, channel, shown_bounds, variables)
            if problem:
                col.add(node, f"{here}.{path}{on}: {problem}")
            templates[path] = template
        compiled.append(LocalizedContent(language, templates))
    return ChannelContent(tuple(compiled)) if len(col.issues) == before else None


def _names(text: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]


def _over_limit(
    template: Template,
    limit: FieldLimit,
    channel: str,
    bounds: list[tuple[str, int]],
    variables: frozenset[str],
) -> str:
    """Why ``template`` can render longer than ``limit`` allows, its placeholders taking at most ``bounds``
    (name, characters: one per placeholder, in order); empty when it cannot."""
    assert limit.max_chars is not None
    literal = template.literal
    values = sum(bound for _, bound in bounds)
    ucs2 = ""
    if limit.encoding == "gsm7" and not is_gsm7(literal):
        length, cap = ucs2_length(literal), limit.ucs2_max_chars or limit.max_chars * 7 // 16
        odd = next(c for c in literal if not is_gsm7(c))
        long = f"characters long in UCS-2 (its text has {odd!r}, which GSM-7 lacks)"
        ucs2 = f" in UCS-2 ({limit.max_chars} in GSM-7)"
    elif limit.encoding == "gsm7":
        length, cap, long = gsm7_length(literal), limit.max_chars, "GSM-7 characters long"
    else:
        length, cap, long = len(literal), limit.max_chars, "characters long"
    if length + values <= cap:
        return ""
    counted = {placeholder: bounds.count(placeholder) for placeholder in bounds}
    parts = [f"text {length}"] + [
        f"{{{name}}} up to {bound}" + (f" x {times}" if times > 1 else "") for (name, bound), times in counted.items()
    ]
    hints = ["shorten the text"]
    if any(name in variables for name, _ in counted):
        hints.append("declare a smaller max_len for a variable")
    if ucs2:
        hints.append("write it in GSM-7")
    return (
        f"can be {length + values} {long}, over {channel}'s limit of {cap}{ucs2} ({', '.join(parts)}): "
        + ", or ".join(hints)
    )


def check_template(text: str, node: _Node, where: str, col: Collector, allowed: set[str]) -> bool:
    """Record each problem of the ``{field}`` template ``text``; False when it has any."""
    before = len(col.issues)
    try:
        fields = [
            (field, spec, conversion)
            for _, field, spec, conversion in string.Formatter().parse(text)
            if field is not None
        ]
    except ValueError as exc:
        col.add(node, f"{where}: bad template: {exc}")
        return False
    for name, spec, conversion in fields:
        if spec or conversion:
            col.add(
                node,
                f"{where}: {{{name}...}} has a format; write {{{name}}}: "
                "numbers are formatted for people automatically (100, 12.50)",
            )
        elif name not in allowed:
            col.add(node, f"{where}: unknown template field {{{name}}} (known: {', '.join(sorted(allowed))})")
    return len(col.issues) == before
