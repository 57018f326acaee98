"""Bulk import of customer profiles from a CRM export (JSON lines or CSV).

Rows are checked one by one (a refused row is reported with its line number
and the field at fault, and nothing of it is written) and written in pipelined
batches.

CSV columns: ``customer_id`` (required), ``first_name``, ``segment``,
``preferred_channel``, ``reachable_channels`` (ids separated by ``;``),
``timezone``, ``consent_<channel>`` (yes/no, true/false, 1/0) and any other
column as a free attribute. JSON lines: one object per line with the same
names, ``reachable_channels`` as a list and ``consents`` and ``attributes``
as objects.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import redis
from tqdm import tqdm

from nba_service.domain import CustomerProfile
from nba_service.domain.validation import ValidationError, check_profile
from nba_service.store import codec, keys

__all__ = ["ImportReport", "import_customers", "profile_from_record", "read_records"]

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}
_CSV_FIELDS = {"customer_id", "first_name", "segment", "preferred_channel", "reachable_channels", "timezone"}


@dataclasses.dataclass
class ImportReport:
    loaded: int = 0
    created: int = 0
    refused: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    """(line number, reason) of every refused row."""


def _bool(field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValidationError(field, f"{value!r} is not yes/no")


def _strings(field: str, value: Any) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ValidationError(field, "must be an object of names to values")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


def profile_from_record(record: Mapping[str, Any]) -> CustomerProfile:
    """A checked profile from one JSON object or CSV row."""
    customer_id = record.get("customer_id")
    if not isinstance(customer_id, str) or not customer_id.strip():
        raise ValidationError("customer_id", "is required")
    reachable = record.get("reachable_channels") or []
    if isinstance(reachable, str):
        reachable = [c.strip() for c in reachable.replace(",", ";").split(";") if c.strip()]
    if not isinstance(reachable, list):
        raise ValidationError("reachable_channels", "must be a list of channel ids")
    consents = {
        str(k): _bool(f"consents.{k}", v) for k, v in _strings("consents", record.get("consents") or {}).items()
    }
    attributes = dict(_strings("attributes", record.get("attributes") or {}))
    for key, value in record.items():  # CSV: consent_<channel> and free columns
        if key.startswith("consent_"):
            consents[key[len("consent_") :]] = _bool(key, value)
        elif key not in _CSV_FIELDS and key not in ("consents", "attributes") and value not in (None, ""):
            attributes[key] = str(value)
    return check_profile(
        CustomerProfile(
            customer_id=customer_id.strip(),
            first_name=str(record.get("first_name") or ""),
            segment=str(record.get("segment") or ""),
            preferred_channel=str(record.get("preferred_channel") or ""),
            reachable_channels=frozenset(str(c) for c in reachable),
            consents=consents,
            timezone=str(record.get("timezone") or "UTC"),
            attributes=attributes,
        )
    )


def read_records(path: pathlib.Path) -> Iterator[tuple[int, Mapping[str, Any] | Exception]]:
    """(line number, record or the parse error) for every data row of ``path``."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "customer_id" not in reader.fieldnames:
            yield 1, ValidationError("header", "a CSV export needs a customer_id column")
            return
        for row in reader:
            if None in row:
                yield reader.line_num, ValidationError("row", "has more values than the header has columns")
            else:
                yield reader.line_num, row
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, ValidationError("json", f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        yield number, record if isinstance(record, dict) else ValidationError("json", "each line must be an object")


def import_customers(
    client: redis.Redis, path: str | pathlib.Path, batch_size: int = 1000, progress: bool = True
) -> ImportReport:
    """Load every valid row of ``path``; refused rows are counted, never half-written."""
    path = pathlib.Path(path)
    report = ImportReport()
    batch: list[CustomerProfile] = []

    def flush() -> None:
        with client.pipeline(transaction=False) as pipe:
            for profile in batch:
                pipe.set(keys.profile(profile.customer_id), codec.encode_profile(profile), get=True)
            previous = pipe.execute()
        report.loaded += len(batch)
        report.created += sum(1 for p in previous if p is None)
        batch.clear()

    with path.open("rb") as handle:
        lines = sum(1 for _ in handle)
    with tqdm(total=lines, unit=" rows", desc=f"loading {path.name}", disable=not progress, leave=False) as bar:
        for number, record in read_records(path):
            bar.update(number - bar.n)
            if isinstance(record, Exception):
                report.refused.append((number, str(record)))
                continue
            try:
                batch.append(profile_from_record(record))
            except ValidationError as exc:
                report.refused.append((number, str(exc)))
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        bar.update(lines - bar.n)
    return report
