"""Regenerate the committed Python code for the wire contract.

`python -m foreshard_broker.protogen` rewrites `foreshard_broker/proto/`; the staleness test calls
`generate()` into a temporary directory and compares. protoc emits absolute imports
(`from foreshard.v1 import broker_pb2`) that would collide with the operator's `foreshard` package,
so the generated gRPC module is rewritten to import its sibling relatively.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
PROTO_FILES = ("foreshard/v1/broker.proto",)
PACKAGE_DIR = Path(__file__).resolve().parent / "proto"
_ABSOLUTE_IMPORT = "from foreshard.v1 import broker_pb2 as"
_RELATIVE_IMPORT = "from . import broker_pb2 as"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on the contract and write the flattened modules into `out_dir`."""
    protoc = importlib.import_module("grpc_tools.protoc")
    resources = importlib.import_module("grpc_tools").__path__[0] + "/_proto"
    raw = out_dir / "_raw"
    raw.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{resources}", f"--python_out={raw}", f"--grpc_python_out={raw}"]
    if protoc.main([*args, *PROTO_FILES]) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(PROTO_FILES))
    written = [out_dir / "__init__.py"]
    written[0].write_text(
        '"""Generated from proto/foreshard/v1 by foreshard_broker.protogen; do not edit."""\n'
    )
    for produced in sorted((raw / "foreshard" / "v1").glob("*.py")):
        target = out_dir / produced.name
        target.write_text(produced.read_text().replace(_ABSOLUTE_IMPORT, _RELATIVE_IMPORT))
        written.append(target)
    _remove_tree(raw)
    return written


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    path.rmdir()


def main() -> int:
    PACKAGE_DIR.mkdir(exist_ok=True)
    for path in generate(PACKAGE_DIR):
        print(path.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
