"""dvc.yaml declares, for every stage, exactly the gradiend_core modules its script imports
(transitively).

Too few and an edit would not rerun the stage (the hermetic sandbox test also catches that as an
ImportError); too many and an unrelated edit reruns expensive stages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("gradiend_core")
    }


def import_closure(script: Path) -> set[str]:
    seen: set[str] = set()
    todo = list(_imports(script))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_imports(REPO / (module.replace(".", "/") + ".py")))
    return {m.replace(".", "/") + ".py" for m in seen} | {"gradiend_core/__init__.py"}


def test_code_deps_equal_import_closure():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert len(stages) == 9
    for name, stage in stages.items():
        declared = {d for d in stage["deps"] if d.startswith("gradiend_core")}
        script = REPO / "stages" / f"{name}.py"
        assert f"stages/{name}.py" in stage["deps"] and "stages/__init__.py" in stage["deps"], name
        assert declared == import_closure(script), (
            f"{name}: declared {sorted(declared)} != imported {sorted(import_closure(script))}"
        )


def test_closure_follows_transitive_imports():
    closure = import_closure(REPO / "stages" / "train.py")
    assert "gradiend_core/mlm_head.py" in closure  # train -> gradients -> mlm_head
    assert "gradiend_core/decoder_eval.py" not in closure


def test_training_module_is_a_dependency_of_the_train_stages_only():
    """Editing the training loop reruns train@* (and what consumes their outputs), nothing else."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    using = sorted(
        name for name, stage in stages.items() if "gradiend_core/training.py" in stage["deps"]
    )
    assert using == ["train"]
    select_deps = set(stages["select"]["deps"])
    torch_modules = {
        "gradiend_core/gradients.py",
        "gradiend_core/base_model.py",
        "gradiend_core/gradiend.py",
    }
    assert not select_deps & torch_modules  # select reads reports, not weights
