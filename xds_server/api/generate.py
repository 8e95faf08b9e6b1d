"""Regenerate the Python code of the project's own gRPC API (protos/ -> xds_server/api/).

    python -m xds_server.api.generate            # rewrite the generated files
    python -m xds_server.api.generate --check    # exit 1 if they are out of date

Every `protos/**/*.proto` is compiled with grpcio-tools' bundled protoc
(`-I protos` plus its well-known types) into `xds_server/api/`, producing
`*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` next to each other, e.g.
`xds_server/api/agentxds/v1/status_pb2.py`.

protoc writes imports relative to the proto root (`from agentxds.v1 import
status_pb2`), which only resolve if `xds_server/api` is on sys.path. Instead of
touching sys.path, the generated files are post-processed: those import lines
are rewritten to `from xds_server.api.agentxds.v1 import status_pb2`. The
generated files are committed; tests/unit/test_api_generated.py checks they are
current.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

#: Python package that the proto root maps to.
PACKAGE = "xds_server.api"

_API_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = _API_DIR
DEFAULT_PROTO_ROOT = _API_DIR.parents[1] / "protos"  # repository checkout layout

_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

#: The oldest grpcio the project supports (pyproject.toml's floor). grpcio-tools stamps its own
#: version into *_pb2_grpc.py as the minimum runtime; it is replaced by this floor, so the
#: generated files neither depend on which grpcio-tools patch release generated them nor
#: refuse a grpcio the project accepts.
MIN_GRPC_VERSION = "1.85.1"


def _top_packages(proto_root: Path) -> list[str]:
    return sorted(p.name for p in proto_root.iterdir() if p.is_dir())


def _rewrite_imports(text: str, tops: list[str]) -> str:
    """`from agentxds.v1 import x_pb2` -> `from xds_server.api.agentxds.v1 import x_pb2`."""
    for top in tops:
        text = re.sub(rf"^(from|import) {re.escape(top)}(\.|\s)", rf"\1 {PACKAGE}.{top}\2", text, flags=re.M)
    return text


def _pin_grpc_version(text: str) -> str:
    return re.sub(r"^GRPC_GENERATED_VERSION = '[^']*'$", f"GRPC_GENERATED_VERSION = '{MIN_GRPC_VERSION}'", text,
                  flags=re.M)  # fmt: skip


def generate(out_dir: Path = DEFAULT_OUT, proto_root: Path = DEFAULT_PROTO_ROOT) -> list[Path]:
    """Compile every .proto under `proto_root` into `out_dir`; return the files written."""
    from grpc_tools import protoc  # dev tool: imported only when generating

    protos = sorted(p.relative_to(proto_root).as_posix() for p in proto_root.rglob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files under {proto_root}")
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        tops = _top_packages(proto_root)
        written = []
        for src in sorted(Path(tmp).rglob("*")):
            if not src.name.endswith(_SUFFIXES):
                continue
            dest = out_dir / src.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(_pin_grpc_version(_rewrite_imports(src.read_text(), tops)))
            written.append(dest)
    return written


def stale_files(out_dir: Path = DEFAULT_OUT, proto_root: Path = DEFAULT_PROTO_ROOT) -> list[str]:
    """Generated files (relative paths) that are missing or differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp), proto_root)
        stale = []
        for path in fresh:
            rel = path.relative_to(tmp)
            current = out_dir / rel
            if not current.exists() or current.read_bytes() != path.read_bytes():
                stale.append(rel.as_posix())
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xds_server.api.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--proto-root", type=Path, default=DEFAULT_PROTO_ROOT)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="only report out-of-date files")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out, args.proto_root)
        for rel in stale:
            print(f"out of date: {rel}", file=sys.stderr)
        return 1 if stale else 0
    for path in generate(args.out, args.proto_root):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
