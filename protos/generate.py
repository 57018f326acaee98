"""Generate the Python gRPC stubs from ``protos/``; run by ``make proto``.

The stubs are committed under ``nba_service/proto/`` and never edited by hand.
``tests/api/test_proto_stubs.py`` regenerates them into a temporary folder and
fails when the committed copy is stale.

Usage: python protos/generate.py [OUT_DIR]
"""

from __future__ import annotations

import pathlib
import re
import sys

from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = PROTO_ROOT.parent / "nba_service" / "proto"
PACKAGE = "nba_service.proto"


def proto_files() -> list[pathlib.Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Write ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted(p for p in out_dir.rglob("*.py*") if p.suffix in (".py", ".pyi"))
    for path in written:
        # protoc writes absolute imports of the proto package ("from nba.v1 import");
        # make them point into this Python package instead.
        text = path.read_text()
        text = re.sub(r"^from nba\.v1 import", f"from {PACKAGE}.nba.v1 import", text, flags=re.M)
        path.write_text(text)
    for folder in {p.parent for p in written} | {out_dir, out_dir / "nba"}:
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text("")
    return written


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(target):
        print(path)
