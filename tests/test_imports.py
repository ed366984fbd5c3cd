"""The module graph: no import cycle among tuner's modules, and the run loop imports no
presentation module (the dashboard note is wired in by the CLI and ``tuner.tune``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tuner"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """tuner modules imported when ``path`` is imported (not under TYPE_CHECKING, not inside
    functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuner"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tuner")}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in top_level_imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_no_import_cycle() -> None:
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(f"{node}."):
                continue  # a package importing its own submodules is not a cycle
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*trail, node, nxt])}")
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_config_imports_no_other_tuner_module() -> None:
    assert import_graph()["tuner.config"] == set()


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split())


def test_the_pipeline_imports_no_presentation_module() -> None:
    loaded = loaded_after("import tuner.pipeline")
    assert not loaded & {"tuner.dashboard", "tuner.report", "tuner.report_data",
                         "tuner.report_svg", "tuner.status", "optuna_dashboard", "plotly"}


def test_stage_modules_and_storage_import_no_training_path() -> None:
    loaded = loaded_after("import tuner.stages, tuner.storage, tuner.budget")
    assert not loaded & {"torch", "tuner.train", "tuner.context", "tuner.pipeline"}
