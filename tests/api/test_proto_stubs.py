"""The committed stubs are what `make proto` generates from protos/ today."""

from __future__ import annotations

import importlib.util
import pathlib

from tests.conftest import ROOT


def _generator():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_are_up_to_date(tmp_path: pathlib.Path):
    fresh = tmp_path / "proto"
    _generator().generate(fresh)
    committed = ROOT / "nba_service" / "proto"

    names = sorted(p.relative_to(fresh) for p in fresh.rglob("*.py*") if p.suffix in (".py", ".pyi"))
    assert names == sorted(p.relative_to(committed) for p in committed.rglob("*.py*") if p.suffix in (".py", ".pyi"))
    stale = [str(n) for n in names if (fresh / n).read_text() != (committed / n).read_text()]
    assert not stale, f"stale generated stubs {stale}: run `make proto` and commit the result"
