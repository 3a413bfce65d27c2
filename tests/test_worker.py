"""The warm stage worker (stages/_worker.py): a ``python -m stages.x`` served by the worker behaves
like a fresh interpreter (arguments, working directory, environment, umask, streams, exit status,
signals), and the worker serves many stages, keys itself on the import-time environment and exits
when idle. That real stages write the same bytes either way is pinned by the pipeline tests (their
two tiny repositories run with and without the worker and must agree byte for byte)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, os, sys, time
from pathlib import Path

mode = sys.argv[1]
if mode == "info":
    mask = os.umask(0)
    os.umask(mask)
    print(json.dumps({
        "pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "argv": sys.argv[1:],
        "var": os.environ.get("PROBE_VAR"), "umask": mask, "name": __name__,
        "path0": sys.path[0], "stages": sys.modules["stages"].__file__,
    }))
    print("a line on stderr", file=sys.stderr)
elif mode == "exit":
    sys.exit(int(sys.argv[2]))
elif mode == "raise":
    raise RuntimeError("probe failure")
elif mode == "sleep":
    Path(sys.argv[2]).write_text(str(os.getpid()))
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project with the real stages/__init__.py and _worker.py plus a probe stage."""
    root = tmp_path_factory.mktemp("worker_project")
    (root / "stages").mkdir()
    for name in ("__init__.py", "_worker.py"):
        shutil.copy(REPO / "stages" / name, root / "stages" / name)
    (root / "stages" / "probe.py").write_text(PROBE, encoding="utf-8")
    return root


def env_for(project: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GRADIEND_WORKER="1",
        GRADIEND_WORKER_DIR=str(project / "w"),
        GRADIEND_WORKER_PRELOAD="json",  # fast to start; the pipeline tests preload the real list
        GRADIEND_WORKER_IDLE="60",
    )
    env.update(extra)
    return env


def probe(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stages.probe", *args],
        cwd=project,
        env=env_for(project, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def info(project: Path, **env: str) -> dict:
    result = probe(project, "info", "two words", **env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1] == "a line on stderr"
    return json.loads(result.stdout)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def wait_until(condition, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_a_stage_in_the_worker_sees_its_own_arguments_cwd_environment_and_umask(project):
    first = info(project, PROBE_VAR="first")
    second = info(project, PROBE_VAR="second")
    assert first["ppid"] == second["ppid"] != os.getpid(), "both stages must be worker children"
    assert first["pid"] != second["pid"]
    assert first["var"] == "first" and second["var"] == "second"
    assert first["argv"] == ["info", "two words"]
    assert first["cwd"] == str(project) and first["path0"] == str(project)
    assert first["name"] == "__main__"
    assert first["stages"] == str(project / "stages" / "__init__.py")
    mask = os.umask(0)
    os.umask(mask)
    assert first["umask"] == mask


def test_the_umask_of_the_client_reaches_the_stage(project):
    result = subprocess.run(
        [sys.executable, "-m", "stages.probe", "info"],
        cwd=project,
        env=env_for(project),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(0o027),
    )
    assert json.loads(result.stdout)["umask"] == 0o027


def test_with_the_worker_off_the_stage_runs_in_the_client_itself(project):
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.probe", "info"],
        cwd=project,
        env=env_for(project, GRADIEND_WORKER="0"),
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=120)
    assert json.loads(out)["pid"] == proc.pid


def test_exit_status_and_tracebacks_reach_the_client(project):
    assert probe(project, "exit", "3").returncode == 3
    failed = probe(project, "raise")
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1] == "RuntimeError: probe failure"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill_9"])
def test_a_stopped_client_stops_its_stage(project, tmp_path, sig):
    pid_file = tmp_path / "pid"
    client = subprocess.Popen(
        [sys.executable, "-m", "stages.probe", "sleep", str(pid_file)],
        cwd=project,
        env=env_for(project),
    )
    assert wait_until(pid_file.exists), "the stage did not start"
    stage = int(pid_file.read_text())
    assert stage != client.pid, "the stage should run in the worker"
    client.send_signal(sig)
    assert client.wait(timeout=30) == -sig
    assert wait_until(lambda: not alive(stage)), f"the stage {stage} outlived its client"


def test_the_import_time_environment_selects_the_worker(project):
    a = info(project, HF_HOME="/nonexistent/a")
    b = info(project, HF_HOME="/nonexistent/b")
    again = info(project, HF_HOME="/nonexistent/a")
    assert a["ppid"] != b["ppid"]
    assert again["ppid"] == a["ppid"]


def test_an_idle_worker_exits_and_removes_its_socket(project, tmp_path):
    sockets = tmp_path / "idle"
    worker = info(project, GRADIEND_WORKER_IDLE="0.5", GRADIEND_WORKER_DIR=str(sockets))["ppid"]
    assert list(sockets.glob("*.sock")), "the worker should listen while busy"
    assert wait_until(lambda: not alive(worker)), "the idle worker did not exit"
    assert not list(sockets.glob("*.sock"))
