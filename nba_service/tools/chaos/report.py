"""What a fault measured, its verdict, and the table ``nba chaos`` prints."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Check", "FaultResult", "format_table", "mb", "seconds"]


@dataclasses.dataclass
class Check:
    """One target of the issue's done-means, and whether this run met it (with the numbers it saw)."""

    name: str
    passed: bool
    detail: str


@dataclasses.dataclass
class FaultResult:
    """One row of the table."""

    fault: str
    title: str
    load: str = ""
    """The load held through the fault."""
    codes: dict[str, int] = dataclasses.field(default_factory=dict)
    """Status codes the clients saw, by name."""
    recovery_seconds: float | None = None
    recovery: str = ""
    """What the recovery time measures for this fault."""
    returned: int | None = None
    """Decisions returned to the clients."""
    recorded: int | None = None
    """Decisions the server recorded meanwhile (``nba_decisions_total``, or decision hashes in Redis)."""
    acknowledged: int | None = None
    """Outcomes the server answered with ``learned``: it promised to learn them."""
    learned: int | None = None
    """Of those, how many the learner learned (published in a model version)."""
    rss_before: int | None = None
    rss_after: int | None = None
    fds_before: int | None = None
    fds_after: int | None = None
    checks: list[Check] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[Check] = dataclasses.field(default_factory=list)
    """What was measured without a target of its own (printed after the checks, no part of the verdict)."""
    error: str | None = None
    """Set when the fault could not be run at all."""
    seconds: float = 0.0

    def check(self, name: str, passed: bool, detail: str) -> bool:
        self.checks.append(Check(name, bool(passed), detail))
        return bool(passed)

    def note(self, name: str, detail: str) -> None:
        self.notes.append(Check(name, True, detail))

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "ERROR"
        return "PASS" if all(c.passed for c in self.checks) else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["verdict"] = self.verdict
        return data


def mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def _pair(a: int | None, b: int | None) -> str:
    if a is None and b is None:
        return "-"
    return f"{'-' if a is None else f'{a:,}'} / {'-' if b is None else f'{b:,}'}"


def _arrow(a: str, b: str) -> str:
    return "-" if a == b == "-" else f"{a} → {b}"


def _codes(codes: Mapping[str, int]) -> str:
    return ", ".join(f"{code} {n:,}" for code, n in sorted(codes.items(), key=lambda kv: -kv[1])) or "-"


def seconds(value: float) -> str:
    """``0.0042`` as ``4 ms``, ``2.5`` as ``2.50 s``."""
    return f"{value * 1000:,.0f} ms" if value < 1 else f"{value:,.2f} s"


def _recovery(result: FaultResult) -> str:
    if result.recovery_seconds is None:
        return result.recovery or "-"
    return f"{seconds(result.recovery_seconds)} {result.recovery}".strip()


COLUMNS = (
    "fault",
    "load held",
    "status codes seen",
    "recovery",
    "decisions returned / recorded",
    "outcomes acknowledged / learned",
    "RSS MB before → after",
    "fds before → after",
    "verdict",
)


def _row(result: FaultResult) -> list[str]:
    return [
        result.title,
        result.load,
        _codes(result.codes),
        _recovery(result),
        _pair(result.returned, result.recorded),
        _pair(result.acknowledged, result.learned),
        _arrow(mb(result.rss_before), mb(result.rss_after)),
        _arrow(
            "-" if result.fds_before is None else f"{result.fds_before:,}",
            "-" if result.fds_after is None else f"{result.fds_after:,}",
        ),
        result.verdict,
    ]


def format_table(results: Sequence[FaultResult]) -> str:
    """The table (Markdown, readable as it is in a terminal), then every check of every fault."""
    rows = [list(COLUMNS), *(_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"

    lines = [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [line(row) for row in rows[1:]]
    lines.append("")
    for result in results:
        lines.append(f"{result.title}: {result.verdict} ({result.seconds:.1f} s)")
        if result.error:
            lines.append(f"  ERROR {result.error}")
        for check in result.checks:
            lines.append(f"  {'pass' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
        for note in result.notes:
            lines.append(f"  note  {note.name}: {note.detail}")
    return "\n".join(lines)
