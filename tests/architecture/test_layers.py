"""The layers of nba_service point one way (README "Layout"; plain ``ast``, no dependency).

Each module belongs to a layer; a module may import its own layer and the
layers listed for it below, nothing else of nba_service. So a lower layer
never imports a higher one, no two layers import each other, the transport
(``api``) is imported only by the composition root and the CLI, and the
engine imports neither grpc, redis nor the generated stubs.
"""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

import nba_service

PACKAGE = pathlib.Path(nba_service.__file__).parent
ROOT = PACKAGE
"""The tree checked (a copy in the test that plants imports)."""

BASE = {"domain"}
MAY_IMPORT: dict[str, set[str]] = {
    "domain": set(),
    "settings": BASE,
    "observability": set(),
    "proto": set(),
    "policies": BASE,
    "store": BASE,
    "engine": BASE | {"policies"},
    "learning": BASE | {"policies", "engine", "store", "settings", "observability"},
    "dataplane": BASE | {"policies", "engine", "store", "learning", "settings", "observability"},
    "api": BASE | {"campaigns", "dataplane", "settings", "observability", "proto"},
    "app": BASE | {"api", "campaigns", "dataplane", "policies", "store", "learning", "settings", "observability",
                   "proto"},
    "tools": BASE | {"app", "dataplane", "policies", "engine", "store", "learning", "settings", "observability",
                     "proto"},
    "campaigns": BASE | {"dataplane", "policies", "engine", "store", "learning", "settings", "observability"},
    "console": BASE | {"api", "tools", "campaigns", "dataplane", "policies", "engine", "store", "learning",
                       "settings", "observability"},
    "cli": BASE | {"app", "api", "tools", "campaigns", "console", "dataplane", "policies", "engine", "store",
                   "learning", "settings", "observability", "proto", "data"},
    "data": set(),
    "__init__": set(),
}
"""Layer -> the other layers it may import. Offline tools sit above the runtime and reach the
service only through the composition root (never the transport); nothing imports tools but the CLI."""

THIRD_PARTY_BANNED = {
    "domain": {"grpc", "redis", "numpy", "river", "prometheus_client", "yaml"},
    "policies": {"grpc", "redis", "river"},
    "engine": {"grpc", "redis", "river", "prometheus_client"},
    "store": {"grpc", "river", "numpy"},
}
"""Layer -> top-level packages it must not import (the engine: no I/O, no generated code)."""


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: pathlib.Path) -> str:
    relative = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            if name == "nba_service":  # from nba_service import x: a module x is the layer
                found += [(node.lineno, f"nba_service.{alias.name}") for alias in node.names
                          if (PACKAGE / alias.name).is_dir() or (PACKAGE / f"{alias.name}.py").is_file()]
    return found


def violations(path: pathlib.Path) -> list[str]:
    module = module_name(path)
    layer = layer_of(module)
    allowed = MAY_IMPORT[layer] | {layer}
    banned = THIRD_PARTY_BANNED.get(layer, set())
    found = []
    for line, name in imports_of(path):
        top = name.split(".")[0]
        if top == "nba_service" and name != "nba_service":
            target = layer_of(name)
            if target not in allowed:
                found.append(f"{path.relative_to(ROOT.parent)}:{line}: {layer} imports {name} ({target})")
        elif top in banned:
            found.append(f"{path.relative_to(ROOT.parent)}:{line}: {layer} imports {name}")
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "proto" not in p.relative_to(PACKAGE).parts[:1])


def test_every_module_belongs_to_a_known_layer():
    assert {layer_of(module_name(p)) for p in SOURCES} <= set(MAY_IMPORT)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_point_down(path):
    assert violations(path) == []


def test_no_two_layers_import_each_other():
    pairs = {(layer, other) for layer, others in MAY_IMPORT.items() for other in others}
    assert not {(a, b) for a, b in pairs if (b, a) in pairs}


@pytest.mark.parametrize(("layer", "source", "reason"), [
    ("policies/snapshot.py", "from nba_service.engine.contact_policy import check_caps\n", "policies -> engine"),
    ("policies/parser.py", "from nba_service.engine.features import vectorize\n", "policies -> engine"),
    ("store/state.py", "from nba_service.engine.pipeline import DecisionEngine\n", "store -> engine"),
    ("api/converters.py", "from nba_service.store.state import StateStore\n", "api -> store"),
    ("api/servicer.py", "from nba_service.store import keys\n", "api -> store"),
    ("tools/preview.py", "from nba_service.api.event_log import append_request\n", "tools -> api"),
    ("engine/pipeline.py", "import redis\n", "engine -> redis"),
    ("engine/pipeline.py", "from nba_service.proto.nba.v1 import decision_pb2\n", "engine -> proto"),
    ("domain/objects.py", "from nba_service import settings\n", "domain -> settings"),
    ("learning/models.py", "from nba_service.dataplane import DataPlane\n", "learning -> dataplane"),
    ("dataplane.py", "from nba_service.app.server import NbaServer\n", "dataplane -> app"),
    ("learning/learner.py", "from ..tools import evaluation\n", "relative learning -> tools"),
])
def test_the_check_catches_an_upward_import(tmp_path, monkeypatch, layer, source, reason):
    """Each import the layering forbids, planted in a copy of a real module, is reported."""
    planted = PACKAGE / layer
    copy = tmp_path / "nba_service" / layer
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(source + planted.read_text())
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path / "nba_service")
    assert violations(copy), reason
