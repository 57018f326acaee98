"""Event files: recorded or generated decision requests, one JSON object a line.

Each line is a ``DecideRequest`` in protobuf's JSON mapping (field names as in
``protos/nba/v1/decision.proto``) plus an optional ``timestamp``::

    {"timestamp": "2026-06-10T12:00:00.000Z", "customer_id": "c00042", "origin_channel": "atm",
     "event": {"atm_decline": {"amount": 100, "balance": 20, "currency": "EUR", "atm_id": "atm-7"}},
     "attributes": {"campaign": "spring"}}

``event`` holds exactly one event type with its fields, as in the API; a
field left out takes its zero value. ``timestamp`` is an ISO 8601 date-time
(no offset means UTC) or Unix seconds. A line is read with the API's own
checks (:func:`nba_service.api.converters.decision_request_from_proto`), so a file
refuses exactly what ``Decide`` refuses.

``nba events generate`` writes such files, the server can record live
requests into one with :func:`append_request`, and ``nba policy preview``
replays them.

>>> from nba_service.proto.nba.v1 import decision_pb2 as pb
>>> line = request_to_line(pb.DecideRequest(customer_id="c1", origin_channel="app",
...                        event=pb.Event(app_open=pb.AppOpen(screen="home"))), 1781092800.0)
>>> json.loads(line) == {"timestamp": "2026-06-10T12:00:00.000Z", "customer_id": "c1", "origin_channel": "app",
...                      "event": {"app_open": {"screen": "home"}}}
True
>>> recorded = parse_line(line)
>>> timed = to_timed_request(recorded)
>>> timed.request.customer_id, timed.request.event.type, dict(timed.request.event.fields), timed.timestamp
('c1', 'app_open', {'screen': 'home'}, 1781092800.0)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from nba_service.api.converters import ValidationError, decision_request_from_proto
from nba_service.domain import TimedRequest
from nba_service.domain.timestamps import format_iso, parse_iso
from nba_service.proto.nba.v1 import decision_pb2 as pb

__all__ = [
    "EVENT_TYPES",
    "EventLogError",
    "RecordedRequest",
    "append_request",
    "event_object",
    "parse_line",
    "parse_record",
    "read_requests",
    "read_timed_requests",
    "request_to_line",
    "to_timed_request",
]

EVENT_TYPES = tuple(f.name for f in pb.Event.DESCRIPTOR.oneofs_by_name["kind"].fields)
"""The event types a line's ``event`` may hold."""


class EventLogError(ValueError):
    """A line that is not a valid request; the message starts with its line number when known."""


@dataclasses.dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One line: the request as the API would receive it, and when it happened (None: not recorded)."""

    request: pb.DecideRequest
    timestamp: float | None = None
    line: int = 0


# --- writing --------------------------------------------------------------------------


def request_to_line(request: pb.DecideRequest, timestamp: float | None = None) -> str:
    """One request as a line of an event file (without the newline)."""
    record: dict[str, Any] = {}
    if timestamp is not None:
        record["timestamp"] = format_iso(timestamp)
    record.update(_tidy(json_format.MessageToDict(request, preserving_proto_field_name=True)))
    return json.dumps(record, ensure_ascii=False)


def append_request(
    file: TextIO | str | os.PathLike[str], request: pb.DecideRequest, timestamp: float | None = None
) -> None:
    """Append one request to an event file (an open text file, or a path opened in append mode).

    The line is written with a single ``write``, so lines from several writers do not interleave.
    """
    line = request_to_line(request, timestamp) + "\n"
    if isinstance(file, (str, os.PathLike)):
        with open(file, "a", encoding="utf-8") as handle:
            handle.write(line)
        return
    file.write(line)


def _tidy(value: Any) -> Any:
    """Whole numbers without ``.0``: ``"amount": 100`` reads better than ``100.0``."""
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


# --- reading --------------------------------------------------------------------------


def parse_line(text: str, line: int = 0) -> RecordedRequest:
    """Parse one line into the request it records; :class:`EventLogError` if it is not one."""
    where = f"line {line}: " if line else ""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EventLogError(f"{where}not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise EventLogError(f"{where}each line must be a JSON object")
    return parse_record(record, line)


def parse_record(record: Mapping[str, Any], line: int = 0) -> RecordedRequest:
    """One line's object (already decoded from JSON) as the request it records."""
    where = f"line {line}: " if line else ""
    body = dict(record)
    timestamp = _timestamp(body.pop("timestamp", None), where)
    try:
        request = json_format.ParseDict(body, pb.DecideRequest())
    except json_format.ParseError as exc:
        raise EventLogError(f"{where}{exc}") from None
    return RecordedRequest(request, timestamp, line)


def read_requests(source: str | os.PathLike[str] | TextIO) -> Iterator[RecordedRequest | EventLogError]:
    """Every non-empty line of an event file: its request, or the error that refuses it."""
    if isinstance(source, (str, os.PathLike)):
        with pathlib.Path(source).open(encoding="utf-8") as handle:
            yield from read_requests(handle)
        return
    for number, text in enumerate(source, start=1):
        if not text.strip():
            continue
        try:
            yield parse_line(text, number)
        except EventLogError as exc:
            yield exc


def read_timed_requests(source: str | os.PathLike[str] | TextIO) -> tuple[list[TimedRequest], list[str]]:
    """Every request of an event file checked as ``Decide`` checks it (:func:`to_timed_request`), and the
    errors of the lines refused (with their line numbers)."""
    moments: list[TimedRequest] = []
    refused: list[str] = []
    for recorded in read_requests(source):
        if isinstance(recorded, EventLogError):
            refused.append(str(recorded))
            continue
        try:
            moments.append(to_timed_request(recorded))
        except EventLogError as exc:
            refused.append(str(exc))
    return moments, refused


def to_timed_request(recorded: RecordedRequest) -> TimedRequest:
    """The request checked exactly as ``Decide`` checks it, as a domain value with its time and line."""
    try:
        request = decision_request_from_proto(recorded.request)
    except ValidationError as exc:
        raise EventLogError(f"line {recorded.line}: {exc}" if recorded.line else str(exc)) from None
    return TimedRequest(request, recorded.timestamp, recorded.line)


def _timestamp(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise EventLogError(f"{where}timestamp: {value!r} is not a time")
        return float(value)
    if isinstance(value, str):
        try:
            return parse_iso(value)
        except ValueError:
            raise EventLogError(f"{where}timestamp: {value!r} is not an ISO 8601 date-time") from None
    raise EventLogError(f"{where}timestamp: expected an ISO 8601 date-time or Unix seconds, got {value!r}")


# --- one event from the command line --------------------------------------------------


def event_object(event_type: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """The ``event`` object of a line from an event type and ``name=text`` fields.

    Numbers are read as numbers, ``item_ids`` as a comma-separated list; a
    custom event's other fields become its attributes.

    >>> event_object("atm_decline", {"amount": "100", "balance": "20", "currency": "EUR"})
    {'atm_decline': {'amount': 100.0, 'balance': 20.0, 'currency': 'EUR'}}
    >>> event_object("custom", {"name": "price_drop", "product": "shoes"})
    {'custom': {'name': 'price_drop', 'attributes': {'product': 'shoes'}}}
    """
    if event_type not in EVENT_TYPES:
        raise EventLogError(f"unknown event type {event_type!r} (known: {', '.join(EVENT_TYPES)})")
    message = pb.Event.DESCRIPTOR.fields_by_name[event_type].message_type
    body: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    for name, text in fields.items():
        field = message.fields_by_name.get(name)
        if field is None or name == "attributes":
            if event_type == "custom":
                attributes[name] = text
                continue
            known = ", ".join(f.name for f in message.fields)
            raise EventLogError(f"{event_type} has no field {name!r} (fields: {known})")
        if field.is_repeated:
            body[name] = [item.strip() for item in text.split(",") if item.strip()]
        elif field.type == FieldDescriptor.TYPE_STRING:
            body[name] = text
        else:
            try:
                body[name] = float(text)
            except ValueError:
                raise EventLogError(f"{event_type}.{name}: {text!r} is not a number") from None
    if attributes:
        body["attributes"] = attributes
    return {event_type: body}
