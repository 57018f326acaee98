"""Docs that match the commands (issue 17): what README.md and docs/ quote is re-run from this tree.

- Every ``console`` block of README.md and docs/ is a transcript (conventions: the docstring of
  :mod:`nba_service.tools.docs_check`): its commands run for real, in document order, in a shell session
  per document, and their output must have the shape the document shows. A transcript marked
  ``<!-- docs-check: skip REASON -->`` is not run and is listed with its reason by a test of its own.
- Every ``nba`` command of a shell block (and of every transcript, skipped ones too) must parse with the
  CLI's own parser, and every ``make`` target quoted must exist: a renamed flag or target fails here.
- A block marked ``<!-- docs-check: file PATH -->`` must be exactly that file of the repository.

Each document runs in a temporary folder of its own holding a copy of policies/, docs/ and protos/ (the
files the docs use) and a link to .venv, with HOME, XDG_STATE_HOME, TMPDIR and NBA_DATA_DIR in that
folder: nothing touches the user's state or the working tree. Each data directory a transcript uses
(NBA_DATA_DIR, also one it exports) gets an embedded Redis that the test starts on first use and hands to
the commands as NBA_REDIS_URL: state carries over from command to command as with the embedded Redis,
without each command starting and stopping its own. The documents run two at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import os
import pathlib
import re
import shutil
import sys
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from nba_service.cli import build_parser
from nba_service.store.embedded import EmbeddedRedis
from nba_service.tools.docs_check import (
    Block,
    DocsCheckError,
    Session,
    Step,
    command_lines,
    make_target,
    matches,
    mismatch,
    nba_argv,
    read_blocks,
    steps,
    transcript_failures,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUN = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
"""The documents whose transcripts run."""
PARSED = RUN + [ROOT / name for name in ("deploy/README.md", "load_tests/README.md", "nba_service/data/README.md")]
"""The documents whose nba commands and make targets are checked."""
COPIED = ("policies", "docs", "protos")
"""What each document's working folder holds (a copy), beside a link to .venv."""
TIMEOUT = 180.0
"""Seconds one command may take (the slowest, `nba evaluate` on Hillstrom, takes about 15)."""
VENV_BIN = pathlib.Path(sys.executable).parent


def _name(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _read(paths: list[pathlib.Path]) -> tuple[dict[str, list[Block]], list[str]]:
    blocks: dict[str, list[Block]] = {}
    errors: list[str] = []
    for path in paths:
        try:
            blocks[_name(path)] = read_blocks(path, _name(path))
        except DocsCheckError as exc:
            errors.append(str(exc))
    return blocks, errors


BLOCKS, READ_ERRORS = _read(PARSED)
TRANSCRIPTS = [block for path in RUN for block in BLOCKS.get(_name(path), []) if block.is_transcript]
WITH_COMMANDS = [block for blocks in BLOCKS.values() for block in blocks if command_lines(block)]
SHOWING_FILES = [block for blocks in BLOCKS.values() for block in blocks if block.shows_file]


def _where(block: Block) -> str:
    return block.where


# -- the documents ------------------------------------------------------------------------------------------


def test_the_documents_are_read():
    assert not READ_ERRORS, "\n".join(READ_ERRORS)
    assert TRANSCRIPTS, "no console transcript found in README.md and docs/"


def test_output_with_its_commands_is_a_transcript():
    """A block that starts with a `$ ` command shows a command and its output: it is a console block, so the
    check runs it (or lists why not)."""
    hidden = [
        f"{block.where}: a ```{block.language or '(untagged)'} block starting with a `$ ` command: tag it console"
        for blocks in BLOCKS.values()
        for block in blocks
        if not block.is_transcript and block.lines and block.lines[0].startswith("$ ")
    ]
    assert not hidden, "\n".join(hidden)


class _Redises:
    """An embedded Redis per data directory the transcripts use, started when an nba command first needs it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[pathlib.Path, EmbeddedRedis] = {}

    def env_for(self, env: Mapping[str, str], command: str) -> dict[str, str]:
        if env.get("NBA_REDIS_URL") or "nba" not in command or not env.get("NBA_DATA_DIR"):
            return {}
        data_dir = pathlib.Path(env["PWD"], env["NBA_DATA_DIR"])
        with self._lock:
            server = self._servers.get(data_dir)
            if server is None:
                server = self._servers[data_dir] = EmbeddedRedis(data_dir)
                server.start()
        return {"NBA_REDIS_URL": server.url}

    def stop(self) -> None:
        """Stop them all at once (each takes a second or two to save and exit)."""
        threads = [threading.Thread(target=server.stop) for server in self._servers.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)


@dataclasses.dataclass(frozen=True)
class _Outcome:
    failures: list[str]
    seconds: float


class _Documents:
    """Runs the documents' transcripts, two documents at a time, each once; a test waits for its document."""

    def __init__(self, folder: pathlib.Path, redises: _Redises) -> None:
        self.folder = folder
        self.redises = redises
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="docs-check")
        self.runs: dict[str, Future[dict[int, _Outcome]]] = {}

    def outcome(self, block: Block) -> _Outcome:
        if not self.runs:  # the first test starts every document, so they overlap
            for path in sorted({b.path for b in TRANSCRIPTS if b.skip_reason is None}):
                self.runs[path] = self.pool.submit(self._run, path)
        return self.runs[block.path].result()[block.line]

    def _run(self, path: str) -> dict[int, _Outcome]:
        home = self.folder / re.sub(r"\W+", "-", path)
        work = home / "work"
        for name in COPIED:
            shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("*.png", "__pycache__"))
        (work / ".venv").symlink_to(VENV_BIN.parent)
        for name in ("home", "state", "tmp", "data"):
            (home / name).mkdir()
        env = {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(home / "home"),
            "XDG_STATE_HOME": str(home / "state"),
            "TMPDIR": str(home / "tmp"),
            "NBA_DATA_DIR": str(home / "data"),
            "USER": os.environ.get("USER", "docs"),
            "LOGNAME": os.environ.get("LOGNAME", os.environ.get("USER", "docs")),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
            "PYTHONUNBUFFERED": "1",  # stdout and stderr in the order a terminal shows them
            "MPLBACKEND": "Agg",
        }
        session = Session(work, env, self.redises.env_for)
        return {
            block.line: _Outcome(failures, seconds)
            for block, failures, seconds in transcript_failures(BLOCKS[path], session, TIMEOUT)
        }


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Documents]:
    assert (VENV_BIN / "nba").is_file(), f"no nba command next to {sys.executable}: run the tests from the venv"
    redises = _Redises()
    runs = _Documents(tmp_path_factory.mktemp("docs"), redises)
    try:
        yield runs
    finally:
        runs.pool.shutdown(wait=True, cancel_futures=True)
        redises.stop()


RUN = [block for block in TRANSCRIPTS if block.skip_reason is None]
NOT_RUN = [block for block in TRANSCRIPTS if block.skip_reason is not None]


def test_the_transcripts_not_run_are_few_and_say_why():
    """Transcripts marked ``skip`` (a server, minutes of load, one machine's timings) are listed with their
    reason; their commands are still parsed (below). Most transcripts run."""
    print("\n".join(f"not run: {block.where}: {block.skip_reason}" for block in NOT_RUN))
    assert all(block.skip_reason and len(block.skip_reason) >= 10 for block in NOT_RUN)
    assert len(RUN) > len(NOT_RUN), [block.where for block in NOT_RUN]


@pytest.mark.parametrize("block", RUN, ids=_where)
def test_transcript(block: Block, documents: _Documents):
    outcome = documents.outcome(block)
    if outcome.failures:
        pytest.fail("\n\n".join(outcome.failures), pytrace=False)


def _parse_error(argv: list[str]) -> str | None:
    """argparse's complaint about ``nba argv``, None when it parses (``--help`` and ``--version`` included)."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return errors.getvalue().rstrip("\n").splitlines()[-1]
    return None


@pytest.mark.parametrize("block", WITH_COMMANDS, ids=_where)
def test_nba_commands_parse(block: Block):
    refused = []
    for line, command in command_lines(block):
        argv = nba_argv(command)
        if argv is not None and (error := _parse_error(argv)):
            refused.append(f"{block.path}:{line}: `{command.splitlines()[0]}`: {error} (arguments: {argv})")
    if refused:
        pytest.fail("\n".join(refused), pytrace=False)


def test_quoted_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", makefile, re.MULTILINE))
    missing = [
        f"{block.path}:{line}: `{command.strip()}`: no target {target!r} in the Makefile"
        for blocks in BLOCKS.values()
        for block in blocks
        for line, command in command_lines(block)
        if (target := make_target(command)) and target not in targets
    ]
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("block", SHOWING_FILES, ids=_where)
def test_a_block_showing_a_file_is_that_file(block: Block):
    assert block.shows_file
    path = ROOT / block.shows_file
    assert path.is_file(), f"{block.where}: {block.shows_file}: no such file"
    actual = path.read_text(encoding="utf-8")
    diff = difflib.unified_diff(
        block.text.splitlines(), actual.splitlines(), f"{block.where} (the document)", block.shows_file, lineterm=""
    )
    if block.text != actual:
        pytest.fail("\n".join(diff), pytrace=False)


# -- the check itself: it fails when a quoted output no longer matches ---------------------------------------


def _document(tmp_path: pathlib.Path, text: str) -> list[Block]:
    path = tmp_path / "doc.md"
    path.write_text(text, encoding="utf-8")
    return read_blocks(path, "doc.md")


def _failures(tmp_path: pathlib.Path, text: str, timeout: float = 30.0) -> list[str]:
    (tmp_path / "work").mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LC_ALL": "C.UTF-8"}
    session = Session(tmp_path / "work", env)
    return [f for _, failures, _ in transcript_failures(_document(tmp_path, text), session, timeout) for f in failures]


def test_a_changed_output_line_fails_naming_the_file_the_lines_and_the_difference(tmp_path):
    text = "Intro.\n\n```console\n$ printf 'one\\ntwo\\n'\none\nthree\n```\n"
    [message] = _failures(tmp_path, text)
    assert message.startswith("doc.md:3: the output of `printf 'one\\ntwo\\n'` (line 4, exit status 0)")
    assert "\n-three\n+two" in message
    (tmp_path / "fixed").mkdir()
    assert _failures(tmp_path / "fixed", text.replace("three", "two")) == []


def test_a_session_carries_the_directory_the_variables_and_the_files(tmp_path):
    text = (
        '```console\n$ mkdir spring && cd spring && export LEVER=1.8\n$ echo "$LEVER" > lever.txt\n```\n\n'
        'Later:\n\n```console\n$ cat lever.txt; basename "$PWD"\n1.8\nspring\n$ ls missing\n'
        "ls: cannot access 'missing': No such file or directory\n```\n"
    )
    assert _failures(tmp_path, text) == []


def test_a_command_past_its_time_is_stopped(tmp_path):
    [message] = _failures(tmp_path, "```console\n$ sleep 20 && echo late\n```\n", timeout=0.5)
    assert "timed out" in message and "+late" not in message


def test_placeholders_stand_for_what_varies_and_only_that():
    assert matches(["replayed in ... s"], ["replayed in 13.2 s"])
    assert matches(["header", "...", "last"], ["header", "last"])
    assert matches(["header", "...", "last"], ["header", "a", "b", "last"])
    assert not matches(["header", "...", "last"], ["header", "a", "b"])
    assert not matches(["one"], ["one", "two"])
    assert matches(["one", ""], ["one  "])  # trailing spaces and blank lines do not count
    stamp = [r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"]
    row = "*       2  2026-11-23 15:51:42  publish  1         maria  savings"
    assert matches([row], [row.replace("2026-11-23 15:51:42", "2027-01-02 03:04:05")], stamp)
    assert not matches([row], [row.replace("maria", "maria-long")], stamp)
    assert not matches([row], [row.replace("2026-11-23 15:51:42", "2026-11-23 15:51")], stamp)


def test_a_mismatch_shows_lines_that_fit_a_placeholder_as_written():
    block = Block("doc.md", 1, "console", (), (("vary", r"\d+\.\d s"),))
    step = Step("nba simulate", 2, ("ran in 7.2 s", "learned 63,140"))
    message = mismatch(step, block, ["ran in 8.0 s", "learned 63,141"], 0)
    assert message is not None
    assert "\n ran in 7.2 s\n-learned 63,140\n+learned 63,141" in message


def test_directives_and_transcripts_are_read_strictly(tmp_path):
    with pytest.raises(DocsCheckError, match=r"doc\.md:1: unknown docs-check directive 'skipp'"):
        _document(tmp_path, "<!-- docs-check: skipp (needs a server) -->\n```console\n$ nba serve\n```\n")
    [block] = _document(tmp_path, "<!-- docs-check: skip needs a running server -->\n```console\n$ nba serve\n```\n")
    assert block.skip_reason == "needs a running server"
    with pytest.raises(DocsCheckError, match="starts with a command"):
        steps(Block("doc.md", 1, "console", ("output before any command",)))


def test_shell_lines_are_parsed_like_bash_reads_them(tmp_path):
    [block] = _document(
        tmp_path,
        "```sh\nnba serve --host 0.0.0.0 \\\n  --tls-cert c.pem \\   # a comment ends the command here\n"
        "  --auth-file auth.yaml\ngrpcurl -d '{\"a\":\n  1}' host nba.v1.DecisionService/Decide\n```\n",
    )
    commands = [command for _, command in command_lines(block)]
    assert nba_argv(commands[0]) == ["serve", "--host", "0.0.0.0", "--tls-cert", "c.pem", " "]
    assert _parse_error(nba_argv(commands[0]) or []) == "nba: error: unrecognized arguments:  "
    assert commands[2].startswith("grpcurl") and commands[2].endswith("Decide")
