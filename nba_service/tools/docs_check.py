"""Docs that match the commands: the command-line transcripts of Markdown files, re-run and compared.

The conventions, for whoever writes the docs:

- A fenced block tagged ``console`` is a **transcript**. A line starting with ``$ `` is a command (a line
  ending in ``\\`` continues on the next one); the lines after it, up to the next ``$ `` line, are what
  the command prints: standard output and standard error together, as a terminal shows them.
- The transcripts of one document run in document order in one shell session (``bash``) of their own:
  a fresh working directory (a copy of the files the docs use) and environment, so a later command sees
  the files, the exported variables and the state the earlier ones left. Exit codes are not compared:
  an error shows in the output.
- Output is compared line by line (trailing spaces ignored) with two kinds of placeholder:

  - ``...`` in a line matches any text (as doctest's ELLIPSIS); a line that is only ``...`` matches any
    number of lines, none included;
  - ``<!-- docs-check: vary REGEX -->`` before the block: text of the expected output that matches
    REGEX (a timestamp, a duration) may read differently, as long as the output matches REGEX there.

- Other comments right before a block (one a line, directly above the fence):

  - ``<!-- docs-check: skip REASON -->``: the transcript is not run (it needs a running server, or takes
    minutes); its commands are still parsed, and the check lists it with the reason;
  - ``<!-- docs-check: file PATH -->``: the block shows the repository's file PATH (relative to the
    repository root), which must hold exactly the block's text.

- Outside transcripts (``sh``, ``bash``, ``text`` and untagged blocks), the lines that run ``nba`` or
  ``make`` are not run, but each ``nba`` command is parsed: :func:`nba_argv` gives its arguments.

This module only reads Markdown, runs shells and compares text; what the commands need (an ``nba`` on the
``PATH``, a Redis) comes from its caller: ``tests/test_docs.py``, which runs it in ``make test``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import pathlib
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

__all__ = [
    "Block",
    "DocsCheckError",
    "Result",
    "Session",
    "Step",
    "command_lines",
    "make_target",
    "matches",
    "mismatch",
    "nba_argv",
    "read_blocks",
    "steps",
    "transcript_failures",
]

TRANSCRIPT = "console"
"""The info string of a transcript block."""

SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "zsh"})
"""Blocks of commands to copy: their ``nba`` and ``make`` lines are parsed, not run. (Text and untagged
blocks hold output; a block of output with its ``$`` commands is a transcript.)"""

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs-check:\s*(?P<body>.*?)\s*-->\s*$")
_DIRECTIVES = ("skip", "vary", "file")
_ELLIPSIS = "..."
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_NBA = ("nba", ".venv/bin/nba")
_PLACEHOLDER = re.compile(r"^\[.*\]$")
"""``[VERSION]``, ``[FROM]``: an optional argument in a usage line, left out when parsing."""


class DocsCheckError(ValueError):
    """A block the check cannot read (an unknown directive, an unclosed fence); the message names it."""


@dataclasses.dataclass(frozen=True)
class Block:
    """A fenced code block of a Markdown file and the ``docs-check`` comments right above it."""

    path: str
    """The file, as given to :func:`read_blocks` (relative to the repository root)."""
    line: int
    """Line of the opening fence (1-based)."""
    language: str
    """The first word of the info string, lower case ('' when untagged)."""
    lines: tuple[str, ...]
    """The block's text, the fence's indentation removed."""
    directives: tuple[tuple[str, str], ...] = ()
    """(name, argument) of each ``<!-- docs-check: name argument -->`` above the block."""

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def is_transcript(self) -> bool:
        return self.language == TRANSCRIPT

    @property
    def skip_reason(self) -> str | None:
        return next((argument or "no reason given" for name, argument in self.directives if name == "skip"), None)

    @property
    def varies(self) -> tuple[str, ...]:
        return tuple(argument for name, argument in self.directives if name == "vary")

    @property
    def shows_file(self) -> str | None:
        return next((argument for name, argument in self.directives if name == "file"), None)

    @property
    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


@dataclasses.dataclass(frozen=True)
class Step:
    """One command of a transcript and the output the document shows for it."""

    command: str
    """The command as bash reads it (continuation lines kept, with their backslash-newline)."""
    line: int
    """Line of its ``$ `` in the document."""
    expected: tuple[str, ...]


def read_blocks(path: pathlib.Path, name: str | None = None) -> list[Block]:
    """The fenced blocks of a Markdown file, in order; ``name`` is how blocks name the file (default: path)."""
    shown = name or str(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    number = 0
    while number < len(lines):
        opening = _FENCE.match(lines[number])
        if not opening:
            number += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        closing = re.compile(rf"^ {{0,{indent + 3}}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = number + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if end == len(lines):
            raise DocsCheckError(f"{shown}:{number + 1}: the code block is never closed")
        body = tuple(_dedent(line, indent) for line in lines[number + 1 : end])
        info = opening["info"].strip().split()
        blocks.append(
            Block(shown, number + 1, info[0].lower() if info else "", body, _directives(lines, number, shown))
        )
        number = end + 1
    return blocks


def _dedent(line: str, indent: int) -> str:
    """``line`` without the first ``indent`` spaces (those of an indented fence), as far as it has them."""
    return line[min(indent, len(line) - len(line.lstrip(" "))) :]


def _directives(lines: Sequence[str], fence: int, shown: str) -> tuple[tuple[str, str], ...]:
    """The ``docs-check`` comments on the lines directly above line index ``fence``, top to bottom."""
    found: list[tuple[str, str]] = []
    above = fence - 1
    while above >= 0 and (match := _DIRECTIVE.match(lines[above])):
        name, _, argument = match["body"].partition(" ")
        name = name.rstrip(":")
        if name not in _DIRECTIVES:
            raise DocsCheckError(
                f"{shown}:{above + 1}: unknown docs-check directive {name!r} (known: {', '.join(_DIRECTIVES)})"
            )
        if name == "vary":
            try:
                re.compile(argument.strip())
            except re.error as exc:
                raise DocsCheckError(f"{shown}:{above + 1}: vary: bad regular expression: {exc}") from exc
        found.append((name, argument.strip()))
        above -= 1
    return tuple(reversed(found))


def _logical_lines(block: Block) -> Iterator[tuple[int, str]]:
    """(document line, text) of each command of a shell block: a line ending in a backslash, or with a quote
    left open, goes on on the next line."""
    pending: list[str] = []
    start = 0
    for offset, line in enumerate(block.lines):
        if not pending:
            start = block.line + 1 + offset
        pending.append(line)
        if not line.endswith("\\") and _closed("\n".join(pending)):
            yield start, "\n".join(pending)
            pending = []
    if pending:
        yield start, "\n".join(pending)


def _closed(command: str) -> bool:
    """Whether every quote of ``command`` is closed."""
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def steps(block: Block) -> list[Step]:
    """The commands of a transcript with their expected output; the lines before the first ``$ `` are refused."""
    found: list[Step] = []
    command: list[str] = []
    line = 0
    expected: list[str] = []
    for offset, text in enumerate(block.lines):
        number = block.line + 1 + offset
        if command and (command[-1].endswith("\\") or not _closed("\n".join(command))):
            command.append(text)
            continue
        if text.startswith("$ ") or text == "$":
            if command:
                found.append(Step("\n".join(command), line, tuple(expected)))
            command, line, expected = [text[2:]], number, []
        elif not command:
            raise DocsCheckError(f"{block.path}:{number}: a transcript starts with a command ('$ ...')")
        else:
            expected.append(text)
    if command:
        found.append(Step("\n".join(command), line, tuple(expected)))
    return found


def command_lines(block: Block) -> list[tuple[int, str]]:
    """(document line, command) of the commands of a block: the ``$ `` lines of a transcript, every command
    of a shell block (comments and blank lines included, as empty commands); none for other blocks."""
    if block.is_transcript:
        return [(step.line, step.command) for step in steps(block)]
    if block.language not in SHELL_LANGUAGES:
        return []
    return [(line, text.removeprefix("$ ")) for line, text in _logical_lines(block)]


def _words(command: str) -> list[str]:
    """The shell words of a command up to its first operator (``|``, ``>``, ``;``, ``&&`` ...), comments
    dropped; [] when it does not split (an unclosed quote: prose, not a command)."""
    lexer = shlex.shlex(command.replace("\\\n", " "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words: list[str] = []
    try:
        for word in lexer:
            if word and all(c in lexer.punctuation_chars for c in word):
                break
            words.append(word)
    except ValueError:
        return []
    return words


def _program_words(command: str) -> list[str]:
    """The words of a command from its program on (``NAME=value`` assignments before it left out)."""
    words = _words(command)
    while words and _ASSIGNMENT.match(words[0]):
        words.pop(0)
    return words


def nba_argv(command: str) -> list[str] | None:
    """The arguments of an ``nba`` (or ``.venv/bin/nba``) command, ``[OPTIONAL]`` usage placeholders left
    out; None when the command runs something else.

    >>> nba_argv("NBA_LOG_LEVEL=INFO .venv/bin/nba policy rollback [VERSION]   # default: the one before")
    ['policy', 'rollback']
    >>> nba_argv("nba events generate --count 20 --seed 7 > events.jsonl")
    ['events', 'generate', '--count', '20', '--seed', '7']
    >>> nba_argv("make demo") is None
    True
    """
    words = _program_words(command)
    if not words or words[0] not in _NBA:
        return None
    return [word for word in words[1:] if not _PLACEHOLDER.match(word)]


def make_target(command: str) -> str | None:
    """The target of a ``make TARGET [VAR=value ...]`` command, None for another command.

    >>> make_target('make bench BENCH_ARGS="--quick"   # under a minute')
    'bench'
    """
    words = _program_words(command)
    if len(words) < 2 or words[0] != "make":
        return None
    return next((word for word in words[1:] if not _ASSIGNMENT.match(word) and not word.startswith("-")), None)


def _pattern(expected: str, varies: Sequence[str]) -> re.Pattern[str]:
    """The regular expression one expected line stands for: ``...`` any text, a ``vary`` match its REGEX."""
    spans: list[tuple[int, int, str]] = []
    for regex in varies:
        spans += [(m.start(), m.end(), f"(?:{regex})") for m in re.finditer(regex, expected) if m.end() > m.start()]
    spans += [(m.start(), m.end(), ".*") for m in re.finditer(re.escape(_ELLIPSIS), expected)]
    spans.sort()
    parts: list[str] = []
    position = 0
    for start, end, replacement in spans:
        if start < position:
            continue  # overlaps one already taken
        parts += [re.escape(expected[position:start]), replacement]
        position = end
    parts.append(re.escape(expected[position:]))
    return re.compile("".join(parts))


def _tidy(lines: Sequence[str]) -> list[str]:
    """Trailing spaces and trailing blank lines removed."""
    tidy = [line.rstrip() for line in lines]
    while tidy and not tidy[-1]:
        tidy.pop()
    return tidy


def matches(expected: Sequence[str], actual: Sequence[str], varies: Sequence[str] = ()) -> bool:
    """Whether ``actual`` has the shape of ``expected`` (see the module's conventions).

    >>> matches(["replayed in ... s", "..."], ["replayed in 13.2 s", "policy  mean", "learned  0.18"])
    True
    >>> matches(["  1  2026-11-23 15:51:40  maria"], ["  1  2027-01-02 03:04:05  maria"], [r"\\d{4}-\\d\\d-\\d\\d"])
    False
    >>> matches(["  1  2026-11-23 15:51:40  maria"], ["  1  2027-01-02 15:51:40  maria"], [r"\\d{4}-\\d\\d-\\d\\d"])
    True
    """
    want, got = _tidy(expected), _tidy(actual)
    patterns = [None if line.strip() == _ELLIPSIS else _pattern(line, varies) for line in want]
    reachable = {0}  # positions in `got` the expected lines so far can end at
    for pattern in patterns:
        if pattern is None:
            reachable = set(range(min(reachable), len(got) + 1)) if reachable else set()
        else:
            reachable = {j + 1 for j in reachable if j < len(got) and pattern.fullmatch(got[j])}
        if not reachable:
            return False
    return len(got) in reachable


def mismatch(step: Step, block: Block, output: Sequence[str], status: int | None) -> str | None:
    """None when ``output`` has the shape the block shows for ``step``; otherwise a message naming the file,
    the block's and the command's lines, with a diff (output lines that fit a placeholder shown as written).
    A command that timed out (``status`` None) never matches."""
    if status is not None and matches(step.expected, output, block.varies):
        return None
    want, got = _tidy(step.expected), _tidy(output)
    patterns = [(line, _pattern(line, block.varies)) for line in want if line.strip() != _ELLIPSIS]
    shown = []
    for index, line in enumerate(got):
        same_place = patterns[index] if index < len(patterns) else None
        if same_place and same_place[1].fullmatch(line):
            shown.append(same_place[0])
        else:
            shown.append(next((text for text, pattern in patterns if pattern.fullmatch(line)), line))
    diff = difflib.unified_diff(want, shown, "expected (the document)", "actual", lineterm="", n=2)
    first = step.command.splitlines()[0]
    if status is None:
        return f"{block.where}: `{first}` (line {step.line}) timed out; its output so far:\n" + "\n".join(diff)
    return (
        f"{block.where}: the output of `{first}` (line {step.line}, exit status {status}) does not match the "
        "document:\n" + "\n".join(diff)
    )


@dataclasses.dataclass(frozen=True)
class Result:
    """What a command printed (stdout and stderr together), its exit status (None: timed out) and duration."""

    output: tuple[str, ...]
    status: int | None
    seconds: float


class Session:
    """One shell session for the transcripts of a document: each command runs in ``bash`` from the
    working directory and exported variables the one before left (``cd`` and ``export`` carry over).

    ``extra_env`` is called with the session's environment and the command before each command; the
    variables it returns are given to that command only (the test gives each data directory its own Redis).
    """

    _SAVE = '\n__docs_check_status=$?\nenv -0 > "$__DOCS_CHECK_ENV" 2>/dev/null\nexit $__docs_check_status\n'
    _NOT_CARRIED = frozenset({"_", "SHLVL", "OLDPWD", "__DOCS_CHECK_ENV", "__docs_check_status"})

    def __init__(
        self,
        cwd: pathlib.Path,
        env: Mapping[str, str],
        extra_env: Callable[[Mapping[str, str], str], Mapping[str, str]] | None = None,
    ) -> None:
        self.env = {**env, "PWD": str(cwd)}
        self.extra_env = extra_env

    @property
    def cwd(self) -> str:
        return self.env["PWD"]

    def run(self, command: str, timeout: float) -> Result:
        extra = dict(self.extra_env(self.env, command)) if self.extra_env else {}
        with tempfile.NamedTemporaryFile(prefix="docs-check-env-", delete=False) as saved:
            saved_path = saved.name
        env = {**self.env, **extra, "__DOCS_CHECK_ENV": saved_path}
        started = time.monotonic()
        process = subprocess.Popen(
            ["bash", "-c", command + self._SAVE],
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout stops the command's children too
        )
        try:
            out, _ = process.communicate(timeout=timeout)
            status: int | None = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, _ = process.communicate()
            status = None
        seconds = time.monotonic() - started
        try:
            carried = pathlib.Path(saved_path).read_bytes()
        finally:
            os.unlink(saved_path)
        if carried:
            variables = dict(
                entry.split("=", 1) for entry in carried.decode("utf-8", "replace").split("\0") if "=" in entry
            )
            self.env = {
                name: value
                for name, value in variables.items()
                if name not in self._NOT_CARRIED and extra.get(name) != value
            }
        return Result(tuple(out.decode("utf-8", "replace").splitlines()), status, seconds)


def transcript_failures(
    blocks: Sequence[Block], session: Session, timeout: float = 120.0
) -> Iterator[tuple[Block, list[str], float]]:
    """Run the transcripts of one document in order in ``session``: (block, failure messages, seconds)
    for each transcript, skipped ones (no messages, 0 s) included."""
    for block in blocks:
        if not block.is_transcript:
            continue
        if block.skip_reason is not None:
            yield block, [], 0.0
            continue
        failures: list[str] = []
        seconds = 0.0
        for step in steps(block):
            result = session.run(step.command, timeout)
            seconds += result.seconds
            message = mismatch(step, block, result.output, result.status)
            if message:
                failures.append(message)
        yield block, failures, seconds
