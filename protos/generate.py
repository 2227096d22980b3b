"""Regenerate the committed protobuf / gRPC Python modules from protos/promptwire/v1/*.proto."""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

__all__ = ["PROTO_DIR", "ROOT", "generate", "generated_files", "main"]

ROOT = Path(__file__).resolve().parent  # the protos/ directory: the proto import root
PROTO_DIR = ROOT / "promptwire" / "v1"
_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

# protoc writes `from promptwire.v1 import x_pb2`; the modules live in the installed package `protos`.
_IMPORT = re.compile(r"^from promptwire\.v1 import ", re.MULTILINE)


def generated_files(directory: Path) -> list[Path]:
    """The generated modules under `directory`/promptwire/v1, sorted."""
    v1 = directory / "promptwire" / "v1"
    return sorted(p for p in v1.iterdir() if p.name.endswith(_SUFFIXES))


def generate(out: Path) -> list[Path]:
    """Run protoc on every .proto into `out` (a directory mirroring protos/) and fix imports."""
    import grpc_tools  # dev dependency: only regeneration needs it
    from grpc_tools import protoc

    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    (out / "promptwire" / "v1").mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    files = generated_files(out)
    for path in files:
        text = path.read_text(encoding="utf-8")
        path.write_text(_IMPORT.sub("from protos.promptwire.v1 import ", text), encoding="utf-8")
    return files


def _differences(left: Path, right: Path) -> list[str]:
    names_left = {p.name: p for p in generated_files(left)}
    names_right = {p.name: p for p in generated_files(right)}
    problems = [f"missing: {n}" for n in sorted(names_left.keys() - names_right.keys())]
    problems += [f"stale (no .proto produces it): {n}" for n in sorted(names_right.keys() - names_left.keys())]
    for name in sorted(names_left.keys() & names_right.keys()):
        if names_left[name].read_bytes() != names_right[name].read_bytes():
            problems.append(f"differs: {name}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed files are out of date")
    args = parser.parse_args(argv)
    if not args.check:
        for path in generate(ROOT):
            print(path.relative_to(ROOT.parent))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        problems = _differences(Path(tmp), ROOT)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
