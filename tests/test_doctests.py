"""The runnable examples in every module's docstrings stay true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import nba_service


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(nba_service.__path__, "nba_service."):
        if ".proto." in info.name or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        if doctest.DocTestFinder(exclude_empty=True).find(module) and any(
                test.examples for test in doctest.DocTestFinder().find(module)):
            names.append(info.name)
    return names


MODULES = _modules_with_examples()


def test_the_modules_that_promise_examples_have_them():
    for name in ("nba_service.learning.exploration", "nba_service.tools.off_policy",
                 "nba_service.tools.evaluation.rules", "nba_service.tools.evaluation.replay",
                 "nba_service.tools.simulate", "nba_service.domain.journeys", "nba_service.store.script_connection"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
