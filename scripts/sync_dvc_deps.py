"""Rewrite each dvc.yaml stage's gradiend_core code deps to the exact import closure of its script.

DVC re-runs a stage when one of its deps changes, so a stage must list exactly the gradiend_core
modules its script imports, transitively (tests/test_dvc_yaml.py checks it). After moving code
between modules run ``python scripts/sync_dvc_deps.py``; other deps and all formatting are kept.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    """gradiend_core modules imported anywhere in ``path`` (function-level imports included,
    ``if TYPE_CHECKING:`` blocks left out: they never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return {
        n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom)
        and n.module
        and n.module.startswith("gradiend_core")
        and id(n) not in skipped
    }


def closure(script: Path) -> list[str]:
    """Paths of every gradiend_core module ``script`` reaches, plus the package's __init__."""
    seen: set[str] = set()
    todo = list(imports(script))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imports(REPO / (module.replace(".", "/") + ".py")))
    return sorted({m.replace(".", "/") + ".py" for m in seen} | {"gradiend_core/__init__.py"})


def sync(text: str) -> str:
    """``text`` (dvc.yaml) with every stage's gradiend_core deps replaced by the closure."""
    out: list[str] = []
    stage = None
    in_deps = False
    for line in text.splitlines():
        if m := re.match(r"^  ([a-z_]+):$", line):
            stage, in_deps = m.group(1), False
        if line == "    deps:":
            in_deps = True
            out.append(line)
            continue
        if in_deps and not line.startswith("      - "):
            in_deps = False
        if in_deps and line.startswith("      - gradiend_core/"):
            continue  # dropped; the closure is inserted after the stage's script below
        out.append(line)
        if in_deps and line == "      - stages/__init__.py":
            out.extend(f"      - {dep}" for dep in closure(REPO / "stages" / f"{stage}.py"))
    return "\n".join(out) + "\n"


def main() -> int:
    path = REPO / "dvc.yaml"
    text = path.read_text(encoding="utf-8")
    new = sync(text)
    if new != text:
        path.write_text(new, encoding="utf-8")
        print("dvc.yaml: code deps updated", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
