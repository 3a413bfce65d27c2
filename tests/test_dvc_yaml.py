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


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (annotations only; never run, so no dep)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and (
            (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        ):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_only(tree)
    return {
        n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom)
        and n.module
        and n.module.startswith("gradiend_core")
        and id(n) not in skipped
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
    # every stage script is a stage, every stage has a script (_-prefixed modules are helpers)
    scripts = {p.stem for p in (REPO / "stages").glob("*.py") if not p.stem.startswith("_")}
    assert set(stages) == scripts
    for name, stage in stages.items():
        declared = {d for d in stage["deps"] if d.startswith("gradiend_core")}
        script = REPO / "stages" / f"{name}.py"
        # stages/__init__.py runs first and hands the stage to the warm worker (stages/_worker.py)
        for path in (f"stages/{name}.py", "stages/__init__.py", "stages/_worker.py"):
            assert path in stage["deps"], f"{name}: {path} is not a dep"
        assert declared == import_closure(script), (
            f"{name}: declared {sorted(declared)} != imported {sorted(import_closure(script))}"
        )


def test_closure_follows_transitive_imports():
    closure = import_closure(REPO / "stages" / "gradients.py")
    assert "gradiend_core/mlm_head.py" in closure  # gradients stage -> gradients -> mlm_head
    assert "gradiend_core/decoder_eval.py" not in closure
    # train reads stored vectors: no objective code, so editing an objective does not rerun it
    assert "gradiend_core/gradients.py" not in import_closure(REPO / "stages" / "train.py")


def test_training_module_is_a_dependency_of_the_train_stages_only():
    """Editing the training loop reruns train@* (and what consumes their outputs), nothing else."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    using = sorted(
        name for name, stage in stages.items() if "gradiend_core/training.py" in stage["deps"]
    )
    assert using == ["train"]


def test_imports_for_type_checking_only_are_not_dependencies():
    """pruning.py names GradientComputer only in annotations (``if TYPE_CHECKING:``), so post-
    pruning (select) does not depend on the gradient code, while pre-pruning (which imports it
    itself) does; select reads reports and the chosen weights but never computes gradients."""
    select = import_closure(REPO / "stages" / "select.py")
    assert "gradiend_core/pruning.py" in select
    assert not select & {"gradiend_core/gradients.py", "gradiend_core/mlm_head.py"}
    assert "gradiend_core/gradients.py" in import_closure(REPO / "stages" / "pre_prune.py")
    assert _type_checking_only(ast.parse("if TYPE_CHECKING:\n    import x\ny = 1\n"))
    assert not _type_checking_only(ast.parse("if DEBUG:\n    import x\n"))


def test_lock_has_entries_only_for_stages_dvc_yaml_defines():
    """DVC never removes the lock entry of a stage that dvc.yaml dropped or renamed, and it re-reads
    and rewrites the whole lock after every stage it runs: stale entries only cost time
    (``python scripts/lock_platform.py --write`` drops them)."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        names = {stage.addressing for stage in repo.index.stages}
    lock = yaml.safe_load((REPO / "dvc.lock").read_text(encoding="utf-8"))
    assert "train@he-she-0" in names  # the matrix stages are named as the lock names them
    assert sorted(set(lock["stages"]) - names) == []
