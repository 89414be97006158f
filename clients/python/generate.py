#!/usr/bin/env python3
"""Regenerates the gRPC code of the Python client from ../../proto with grpcio-tools.

The generated modules are committed (so `pip install clients/python` needs no code generator);
CI runs `generate.py --check`, which fails when regeneration would change them, i.e. when
proto/ changed without them or they were edited by hand.

Usage: python generate.py [--check]   (needs grpcio-tools, pinned in requirements-dev.txt)
"""

from __future__ import annotations

import difflib
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
PROTO = "vodsigner/v1/signer.proto"
OUT = HERE / "src" / "vodsigner_client" / "_proto"
FILES = ("signer_pb2.py", "signer_pb2.pyi", "signer_pb2_grpc.py")
HEADER = "# Generated from proto/vodsigner/v1/signer.proto by clients/python/generate.py. DO NOT EDIT.\n"


def generate() -> dict[str, str]:
    """The generated files, by name, with imports made relative to the _proto package."""
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", PROTO]
        if protoc.main(args) != 0:
            sys.exit("grpc_tools.protoc failed")
        out = {}
        for name in FILES:
            text = (Path(tmp) / "vodsigner" / "v1" / name).read_text()
            # protoc writes `from vodsigner.v1 import signer_pb2`, which only works with the
            # proto root on sys.path; inside this package the sibling module is relative.
            text = text.replace("from vodsigner.v1 import signer_pb2 as",
                                "from . import signer_pb2 as")
            out[name] = HEADER + text
        return out


def main() -> int:
    check = "--check" in sys.argv[1:]
    generated = generate()
    stale = []
    for name, text in generated.items():
        path = OUT / name
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        if check:
            stale.append(name)
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(True), text.splitlines(True), f"committed/{name}",
                f"regenerated/{name}", n=1))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE)}")
    if stale:
        print(f"\nclients/python: generated code is stale ({', '.join(stale)}): "
              "run `python clients/python/generate.py` and commit the result")
        return 1
    if check:
        print("clients/python: generated code matches proto/ (regeneration gives no diff)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
