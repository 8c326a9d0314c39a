"""Where code lives: a Celery worker's code imports no gRPC (docs/architecture.md, "Rooms")."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_WORKERS = ("grpc", "reapi.gen", "reapi.grpc_edge")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_nothing_under_workers_imports_grpc_or_generated_code() -> None:
    sources = sorted((ROOT / "workers").rglob("*.py"))
    assert len(sources) > 10  # the folder was found and read
    offending = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in sources
        for name in imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_WORKERS)
    }
    assert offending == set()


def test_the_check_sees_an_import_of_grpc(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("def f():\n    from reapi.grpc_edge import rpc_status\n    import grpc\n")
    assert {"reapi.grpc_edge", "reapi.grpc_edge.rpc_status", "grpc"} <= imported_modules(source)
