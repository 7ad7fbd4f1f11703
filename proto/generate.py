"""Generate the Python code of the wire contract from proto/clearline/v1/*.proto.

One command, run by `make proto` (and so by `make test`):  python proto/generate.py [OUT_DIR]

OUT_DIR defaults to proto/, so the generated modules sit beside their .proto files and are
imported as `clearline.v1.<name>_pb2`. The generated files are never edited by hand and never
committed; tests/unit/test_proto_fresh.py regenerates into a temporary directory and fails if what
is installed differs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
SOURCES = sorted((PROTO_ROOT / "clearline" / "v1").glob("*.proto"))
SERVICES = ("peer.proto", "ledger_api.proto", "admin.proto")


def generate(out_dir: Path) -> None:
    """Run protoc (messages, gRPC stubs and mypy stubs) for every .proto into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # protoc-gen-mypy and protoc-gen-mypy_grpc are installed beside this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    include = str(Path(protoc.__file__).parent / "_proto")
    rel = [str(p.relative_to(PROTO_ROOT)) for p in SOURCES]
    services = [r for r in rel if Path(r).name in SERVICES]
    common = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}"]
    if protoc.main([*common, f"--python_out={out_dir}", f"--mypy_out=quiet:{out_dir}", *rel]) != 0:
        raise SystemExit("protoc failed on the message definitions")
    if (
        protoc.main([*common, f"--grpc_python_out={out_dir}", f"--mypy_grpc_out=quiet:{out_dir}", *services])
        != 0
    ):
        raise SystemExit("protoc failed on the service definitions")
    for package in (out_dir / "clearline", out_dir / "clearline" / "v1"):
        init = package / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated wire contract of Clearline (see proto/)."""\n')


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT)
