"""Helpers for the pipeline-level tests: temporary DVC repositories built from this checkout.

A temporary repository holds the checkout's tracked and untracked-but-not-ignored files (never its
generated outputs or dvc.lock), a tiny ``params.yaml`` and a fresh git history. Stage commands run
as subprocesses with the venv's python first on PATH, exactly as ``dvc repro`` runs them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = os.path.dirname(sys.executable)
GENERATED = ("data/", "metrics/", "models/", "plots/")
OUTPUT_DIRS = ("data", "metrics", "models", "plots")
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "pipeline test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "pipeline test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def stage_env(**extra: str) -> dict[str, str]:
    """The environment of DVC and the stage commands: offline, no analytics, no progress bars."""
    env = dict(os.environ)
    env.update(GIT_IDENTITY)
    env.update(
        DVC_NO_ANALYTICS="1",
        CI="1",
        GRADIEND_NO_PROGRESS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PATH=VENV_BIN + os.pathsep + env.get("PATH", ""),
    )
    for var in (
        "GRADIEND_LOG_DIR",
        "PYTHONDONTWRITEBYTECODE",
    ):  # users' shells write __pycache__; so do we
        env.pop(var, None)
    env.update(extra)
    return env


def project_files() -> list[str]:
    """Tracked plus untracked-but-not-ignored files of this checkout, minus generated outputs and
    dvc.lock."""

    def git(*args: str) -> list[str]:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        return [line for line in out.splitlines() if line]

    files = set(git("ls-files")) | set(git("ls-files", "--others", "--exclude-standard"))
    return sorted(
        f for f in files if f != "dvc.lock" and not f.startswith(GENERATED) and (REPO / f).is_file()
    )


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def read_params(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))


def make_repo(dest: Path, params: dict) -> Path:
    """A committed git + DVC repository at ``dest`` with this checkout's sources and ``params``."""
    dest.mkdir(parents=True)
    for name in project_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    write_params(dest, params)
    env = stage_env()
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "config", "user.name", GIT_IDENTITY["GIT_AUTHOR_NAME"]],
        ["git", "config", "user.email", GIT_IDENTITY["GIT_AUTHOR_EMAIL"]],
        ["git", "config", "commit.gpgsign", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "tiny pipeline"],
    ):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)
    return dest


def dvc_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def dvc(
    repo: Path, *args: str, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        dvc_cmd(*args), cwd=repo, env=stage_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"dvc {' '.join(args)} failed"
            f" ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def start_dvc(repo: Path, *args: str, **env: str) -> subprocess.Popen:
    """``dvc <args>`` in the background, in its own process group (so it can be killed with its
    stage); ``env``: extra environment variables."""
    return subprocess.Popen(
        dvc_cmd(*args),
        cwd=repo,
        env=stage_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, what: str, timeout: float = 900) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def run_shell(cmd: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """A stage's ``cmd`` as DVC runs it (through the shell, cwd = repository root)."""
    return subprocess.run(
        cmd, shell=True, cwd=cwd, env=stage_env(**env), capture_output=True, text=True, timeout=900
    )


def run_module(module: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=stage_env(**env),
        capture_output=True,
        text=True,
        timeout=900,
    )


def file_hashes(root: Path, paths: Iterable[str] = OUTPUT_DIRS) -> dict[str, str]:
    """sha256 of each file (or every file under each folder) in ``paths``, keyed by its path
    relative to ``root``.

    Python bytecode caches are skipped: they appear in source folders whenever a stage imports them.
    """
    hashes = {}
    for rel in paths:
        base = root / rel
        files = (
            [base]
            if base.is_file()
            else sorted(p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        )
        for path in files:
            hashes[path.relative_to(root).as_posix()] = hashlib.sha256(
                path.read_bytes()
            ).hexdigest()
    return hashes


def temp_leftovers(root: Path, dirs: Iterable[str] = OUTPUT_DIRS) -> list[str]:
    """Atomic-write temporaries (``.<name>.<random>.tmp``) or ``.<name>.old`` folders under the
    output dirs."""
    found = []
    for d in dirs:
        base = root / d
        if base.exists():
            found += [
                p.relative_to(root).as_posix()
                for p in base.rglob(".*")
                if p.name.endswith((".tmp", ".old"))
            ]
    return sorted(found)


def copy_repo(src: Path, dest: Path) -> Path:
    """A copy of a finished repository (git history, DVC cache and outputs included)."""
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


_BUILT: dict[str, Path] = {}
REPRO_LOGS: dict[str, str] = {}
_PENDING: dict[str, tuple[Path, subprocess.Popen]] = {}
_FAILED: dict[str, str] = {}


def start_tiny_repo(name: str, root: Path, params: dict, **env: str) -> None:
    """Create repository ``name``; start its ``dvc repro`` in the background (once a session)."""
    if name not in _BUILT and name not in _PENDING and name not in _FAILED:
        repo = make_repo(root / name, params)
        _PENDING[name] = (repo, start_dvc(repo, "repro", **env))


def tiny_repo(name: str, root: Path, params: dict) -> Path:
    """Repository ``name`` after a complete ``dvc repro`` (built once per test session, then
    shared)."""
    if name in _FAILED:
        raise AssertionError(_FAILED[name])
    start_tiny_repo(name, root, params)
    if name in _PENDING:
        repo, proc = _PENDING.pop(name)
        try:
            REPRO_LOGS[name] = finish(proc, f"dvc repro in {repo}")
        except AssertionError as exc:
            _FAILED[name] = str(exc)
            raise
        _BUILT[name] = repo
    return _BUILT[name]


def finished_tiny_repos(tmp_path_factory, model_dir: Path, corpus: Path) -> tuple[Path, Path]:
    """Two independent tiny causal repositories, reproduced concurrently (2 cores, 1 torch thread
    each).

    The first is shared by the pipeline and bad-input tests (copy it before changing anything); the
    second exists to check that a run from scratch reproduces the first byte for byte. The first
    runs its stages in the warm worker (stages/_worker.py), the second each in a fresh
    interpreter, so the comparison also pins that the worker changes no output.
    """
    from conftest import tiny_params

    root = tmp_path_factory.getbasetemp() / "tiny_repos"
    root.mkdir(exist_ok=True)
    params = tiny_params(model_dir, corpus)
    start_tiny_repo("first", root, params, GRADIEND_WORKER="1")
    start_tiny_repo("second", root, params, GRADIEND_WORKER="0")
    return tiny_repo("first", root, params), tiny_repo("second", root, params)


def wait_for_stage_processes(root: Path, timeout: float = 60) -> None:
    """Wait until no process works inside ``root``: a stage run by the warm worker is the worker's
    child, not dvc's, and outlives a killed dvc by the moment the worker needs to notice."""
    root = root.resolve()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = []
        for proc in Path("/proc").iterdir():
            try:
                cwd = Path(os.readlink(proc / "cwd"))
            except OSError:
                continue
            if cwd == root or root in cwd.parents:
                busy.append(proc.name)
        if not busy:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes still working in {root}: {busy}")


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "the stage printed nothing on stderr"
    return lines[-1]
