"""Bulk import of customer profiles from a CRM export (JSON lines or CSV).

Rows are checked one by one (a refused row, or a line that is not UTF-8, is
reported with its line number and the field at fault, nothing of it is
written, and the rest is loaded) and written in pipelined batches. An id given
twice is reported; the later line wins. Consents are merged as
``UpsertCustomer`` merges them without a mask (the channels a row lists are
set, the others keep their stored consent), and every consent change goes to
the consent audit with the caller, in the same script as the profile.

CSV columns: ``customer_id`` (required), ``first_name``, ``segment``,
``preferred_channel``, ``reachable_channels`` (ids separated by ``;``),
``timezone``, ``holdings`` (product ids separated by ``;``),
``consent_<channel>`` (yes/no, true/false, 1/0) and any other column as a
free attribute. JSON lines: one object per line with the same names,
``reachable_channels`` and ``holdings`` as lists and ``consents`` and
``attributes`` as objects. Holdings are merged as consents are: the products
a row lists are added, the stored ones kept (a ``product_opened`` event may
have added them since the last export).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import pathlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import redis
from tqdm import tqdm

from nba_service.domain import CustomerProfile
from nba_service.domain.profile_update import ProfileMask, apply_update, consent_changes
from nba_service.domain.validation import ValidationError, check_profile
from nba_service.store import audit, codec, keys
from nba_service.store.state import _UPSERT_SCRIPT, UPDATE_RETRIES

__all__ = ["ImportReport", "import_customers", "profile_from_record", "read_records"]

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}
_CSV_FIELDS = {
    "customer_id",
    "first_name",
    "segment",
    "preferred_channel",
    "reachable_channels",
    "timezone",
    "holdings",
}


@dataclasses.dataclass
class ImportReport:
    loaded: int = 0
    created: int = 0
    refused: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    """(line number, reason) of every refused row."""
    duplicates: list[tuple[int, int, str]] = dataclasses.field(default_factory=list)
    """(line number, line of the same id's previous row, customer id): the later row was loaded."""
    consent_changes: int = 0
    """Consent changes written to the audit."""


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


def _id_list(record: Mapping[str, Any], field: str, what: str) -> list[str]:
    """A list of ids: a JSON list, or text separated by ``;`` (or ``,``) in a CSV column."""
    value = record.get(field) or []
    if isinstance(value, str):
        value = [v.strip() for v in value.replace(",", ";").split(";") if v.strip()]
    if not isinstance(value, list):
        raise ValidationError(field, f"must be a list of {what}")
    return [str(v) for v in value]


def profile_from_record(record: Mapping[str, Any]) -> CustomerProfile:
    """A checked profile from one JSON object or CSV row."""
    customer_id = record.get("customer_id")
    if not isinstance(customer_id, str) or not customer_id.strip():
        raise ValidationError("customer_id", "is required")
    reachable = _id_list(record, "reachable_channels", "channel ids")
    holdings = _id_list(record, "holdings", "product ids")
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
            reachable_channels=frozenset(reachable),
            consents=consents,
            timezone=str(record.get("timezone") or "UTC"),
            attributes=attributes,
            holdings=frozenset(holdings),
        )
    )


def _not_utf8(raw: bytes) -> ValidationError:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ValidationError("encoding", f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
    return ValidationError("encoding", "not UTF-8")


def _has_undecodable(text: str) -> bool:
    """True when ``text`` (decoded with ``surrogateescape``) held bytes that are not UTF-8."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def read_records(path: pathlib.Path) -> Iterator[tuple[int, Mapping[str, Any] | Exception]]:
    """(line number, record or the parse error) for every data row of ``path``."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if path.suffix.lower() == ".csv":
        text = data.decode("utf-8", errors="surrogateescape")
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "customer_id" not in reader.fieldnames:
            yield 1, ValidationError("header", "a CSV export needs a customer_id column")
            return
        if any(_has_undecodable(name) for name in reader.fieldnames):
            yield 1, ValidationError("header", "not UTF-8")
            return
        for row in reader:
            if None in row:
                yield reader.line_num, ValidationError("row", "has more values than the header has columns")
            elif any(isinstance(v, str) and _has_undecodable(v) for v in row.values()):
                yield reader.line_num, ValidationError("encoding", "not UTF-8")
            else:
                yield reader.line_num, row
        return
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield number, _not_utf8(raw)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, ValidationError("json", f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        yield number, record if isinstance(record, dict) else ValidationError("json", "each line must be an object")


def _write(client: redis.Redis, rows: list[tuple[int, CustomerProfile]], caller: str, report: ImportReport) -> None:
    """Store a batch, merging consents and auditing their changes; a row overtaken by another write is redone."""
    sha = client.script_load(_UPSERT_SCRIPT.source)
    secret: bytes | None = None
    pending = rows
    for _ in range(UPDATE_RETRIES):
        with client.pipeline(transaction=False) as pipe:
            for _, update in pending:
                pipe.get(keys.profile(update.customer_id))
            stored_raw = pipe.execute()
        planned: list[tuple[int, CustomerProfile, bool, int]] = []
        with client.pipeline(transaction=False) as pipe:
            for (line, update), raw in zip(pending, stored_raw, strict=True):
                stored = codec.decode_profile(update.customer_id, raw) if raw is not None else None
                try:
                    merged = apply_update(stored, update, ProfileMask.without_mask(update))
                except ValidationError as exc:
                    report.refused.append((line, str(exc)))
                    continue
                changes = consent_changes(stored, merged)
                customer = ""
                if changes:
                    secret = secret or audit.pseudonym_secret(client)
                    assert secret is not None
                    customer = audit.pseudonym(secret, update.customer_id)
                script_keys, script_args = _UPSERT_SCRIPT.bind(
                    {
                        "profile": keys.profile(update.customer_id),
                        "audit": keys.consent_audit(keys.bucket_of(update.customer_id)),
                    },
                    {
                        "expected": raw if raw is not None else b"",
                        "profile": codec.encode_profile(merged),
                        "changes": codec.dumps([[c.channel, c.old, c.new] for c in changes]),
                        "customer": customer,
                        "caller": caller,
                        "ts": f"{time.time():.3f}",
                        "request_id": "",
                        "audit_maxlen": audit.AUDIT_MAXLEN,
                    },
                )
                # execute_command: redis-py's cluster pipeline refuses evalsha() by name, not the command
                pipe.execute_command("EVALSHA", sha, len(script_keys), *script_keys, *script_args)
                planned.append((line, update, raw is None, len(changes)))
            written = pipe.execute()
        pending = []
        for (line, update, new, changed), ok in zip(planned, written, strict=True):
            if int(ok):
                report.loaded += 1
                report.created += int(new)
                report.consent_changes += changed
            else:
                pending.append((line, update))
        if not pending:
            return
    for line, _ in pending:
        report.refused.append((line, "the profile kept changing during the import: not loaded, load it again"))


def import_customers(
    client: redis.Redis,
    path: str | pathlib.Path,
    batch_size: int = 1000,
    progress: bool = True,
    caller: str = "cli",
) -> ImportReport:
    """Load every valid row of ``path``; refused rows are counted, never half-written.

    ``caller`` names who loaded the file in the consent audit.
    """
    path = pathlib.Path(path)
    report = ImportReport()
    batch: list[tuple[int, CustomerProfile]] = []
    first_line: dict[str, int] = {}

    def flush() -> None:
        _write(client, batch, caller, report)
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
                profile = profile_from_record(record)
            except ValidationError as exc:
                report.refused.append((number, str(exc)))
                continue
            previous = first_line.get(profile.customer_id)
            if previous is not None:
                report.duplicates.append((number, previous, profile.customer_id))
            first_line[profile.customer_id] = number
            batch.append((number, profile))
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        bar.update(lines - bar.n)
    report.refused.sort()
    return report
