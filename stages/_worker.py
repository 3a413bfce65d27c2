"""Warm stage worker: start-up paid once per run instead of once per stage.

Every stage is a fresh ``python -m stages.<name>`` (DVC runs each stage's ``cmd``), and most of a
light stage's time is importing torch, transformers and pandas (3-8 s on 2 cores; the default
pipeline runs 16 stages, a learning-rate experiment 10). The first stage of a run starts a worker
that imports those libraries once and then waits on a Unix socket; every ``python -m stages.x``
after it sends its arguments, working directory, environment, umask and standard streams to the
worker, which forks a child that runs the stage as a fresh interpreter would
(``runpy.run_module``; the project's own modules are imported fresh from the stage's working
directory, never cached in the worker). The client waits, forwards Ctrl-C/SIGTERM/SIGHUP to the
child and exits with the child's status. Outputs are byte-identical either way
(tests/test_worker.py checks it); only start-up time changes.

The worker imports no project code, so edits to ``gradiend_core`` or ``stages`` take effect at
once. It is keyed by the interpreter, this file's content, the installed packages (the mtimes of
``sys.path``) and the environment variables that libraries read at import time (``HF_*``,
``TORCH*``, ``OMP_*``, ...): change any and a new worker starts. It exits after
``GRADIEND_WORKER_IDLE`` seconds (default 300) without a stage. ``GRADIEND_WORKER=0`` turns it
off (every stage runs in its own interpreter); ``GRADIEND_WORKER=1`` uses it even where an NVIDIA
device is present (off by default there: forking after CUDA initialisation is unsafe, and GPU
stages are dominated by compute, not start-up). Any failure to reach or start a worker before the
stage begins falls back to running the stage in-process. The worker's own log sits next to its
socket: ``$TMPDIR/gradiend-worker-<uid>/<key>.log`` (``GRADIEND_WORKER_DIR`` moves both).

Standard library only: this file runs before anything else of a stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import time

PRELOAD = (
    "numpy",
    "torch",
    "pandas",
    "pyarrow.parquet",
    "yaml",
    "safetensors.torch",
    "tqdm.auto",
    "matplotlib.pyplot",
    "transformers",
    "transformers.modeling_utils",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "datasets",
)
"""Third-party modules the worker imports once; never project modules (they would go stale).
``GRADIEND_WORKER_PRELOAD`` (comma-separated, may be empty) replaces the list."""

IMPORT_TIME_ENV = (
    "GRADIEND_WORKER_PRELOAD",
    "HF_",
    "HUGGINGFACE",
    "TRANSFORMERS",
    "TOKENIZERS",
    "DATASETS",
    "TORCH",
    "PYTORCH",
    "CUDA",
    "NVIDIA",
    "OMP_",
    "MKL",
    "KMP_",
    "OPENBLAS",
    "MPL",
    "PYTHON",
    "LD_",
    "XDG_",
    "HOME",
    "TMPDIR",
    "VIRTUAL_ENV",
    "PATH",
    "LANG",
    "LC_",
)
"""Variables read when libraries are imported: a worker serves only clients that agree on them."""

START_TIMEOUT_S = 90.0
SUFFIX = ".sock"
_HEADER = struct.Struct("!I")


# ---- shared --------------------------------------------------------------------------------------


def _send(conn: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    payload = _HEADER.pack(len(data)) + data
    if fds:
        socket.send_fds(conn, [payload], fds)
    else:
        conn.sendall(payload)


def _recv_exact(conn: socket.socket, size: int, fds: list[int] | None = None) -> bytes:
    data = b""
    while len(data) < size:
        if fds is not None and not data:
            chunk, got, _, _ = socket.recv_fds(conn, size, 3)
            fds.extend(got)
        else:
            chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def _recv(conn: socket.socket, fds: list[int] | None = None) -> dict:
    (size,) = _HEADER.unpack(_recv_exact(conn, _HEADER.size, fds))
    return json.loads(_recv_exact(conn, size))


def _key() -> str:
    """What a worker must share with its clients: interpreter, this file, packages, env."""
    h = hashlib.sha256()
    h.update(sys.executable.encode() + b"\0" + sys.version.encode())
    with open(__file__, "rb") as f:
        h.update(f.read())
    for entry in sys.path[1:]:
        try:
            h.update(f"{entry}\0{os.stat(entry).st_mtime_ns}\0".encode())
        except OSError:
            h.update(f"{entry}\0-\0".encode())
    for name in sorted(os.environ):
        if name.startswith(IMPORT_TIME_ENV):
            h.update(f"{name}={os.environ[name]}\0".encode())
    return h.hexdigest()[:20]


def _socket_path() -> str:
    base = os.environ.get("GRADIEND_WORKER_DIR") or os.path.join(
        tempfile.gettempdir(), f"gradiend-worker-{os.getuid()}"
    )
    path = os.path.join(base, _key() + SUFFIX)
    if len(path.encode()) > 100:  # AF_UNIX path limit
        path = os.path.join("/tmp", f"gradiend-worker-{os.getuid()}", _key() + SUFFIX)
    return path


# ---- client --------------------------------------------------------------------------------------


def _enabled() -> bool:
    setting = os.environ.get("GRADIEND_WORKER", "auto").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return False
    if setting in ("1", "on", "true", "yes"):
        return True
    return not os.path.exists("/dev/nvidiactl")


def _module_invocation() -> list[str] | None:
    """[module, *args] when this interpreter was started exactly as ``python -m stages.x ...``."""
    orig = getattr(sys, "orig_argv", None)
    if not orig or len(orig) < 3 or orig[1] != "-m" or not orig[2].startswith("stages."):
        return None
    return orig[2:]


def _connect(path: str) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    return conn


def _start_worker(path: str) -> socket.socket | None:
    import subprocess

    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path[: -len(SUFFIX)] + ".log", "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__worker__')",
                os.path.abspath(__file__),
                path,
            ],
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        conn = _connect(path)
        if conn is not None:
            return conn
        if proc.poll() is not None:
            return None
        time.sleep(0.05)
    return None


def delegate() -> None:
    """Run this ``python -m stages.x`` in the warm worker and exit with the stage's status;
    return (the caller then runs the stage itself) when the worker is off or unreachable."""
    invocation = _module_invocation()
    if invocation is None or not _enabled():
        return
    try:
        path = _socket_path()
        conn = _connect(path) or _start_worker(path)
        if conn is None:
            return
        request = {
            "argv": invocation,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "umask": _current_umask(),
        }
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        _send(conn, request, [0, 1, 2])
        child = _recv(conn)["pid"]
    except (OSError, ConnectionError, ValueError, KeyError):
        return  # nothing of the stage ran yet: run it here

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        status = _recv(conn)
    except (OSError, ConnectionError, ValueError):
        print("error: the stage worker went away; rerun with GRADIEND_WORKER=0", file=sys.stderr)
        os._exit(1)
    if "signal" in status:
        signal.signal(status["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), status["signal"])
        os._exit(128 + status["signal"])
    os._exit(status["code"])


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- worker --------------------------------------------------------------------------------------


def _preload() -> None:
    import importlib
    import threading

    names = os.environ.get("GRADIEND_WORKER_PRELOAD")
    for name in PRELOAD if names is None else [n.strip() for n in names.split(",") if n.strip()]:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing optional library is imported by the stage, if at all
            print(f"worker: not preloading {name}: {exc}", file=sys.stderr)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise SystemExit("worker: CUDA got initialised while preloading; not forking")
    # Python threads do not survive a fork; native pools (OpenBLAS, jemalloc) re-arm in the child
    # through their own pthread_atfork handlers.
    if threading.active_count() != 1:
        raise SystemExit("worker: a library started Python threads while preloading; not forking")


def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the stage's interpreter, run the stage, never return."""
    import atexit
    import random
    import runpy

    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_DFL)
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdout.reconfigure(line_buffering=os.isatty(1))
        os.umask(request["umask"])
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        module, *args = request["argv"]
        sys.argv = [module, *args]
        sys.path.insert(0, request["cwd"])
        random.seed()  # a fresh interpreter's unseeded state, not the worker's
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            numpy.random.seed()
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            code = 130
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def serve(path: str) -> None:
    """Preload, listen on ``path`` and fork one child per request until idle."""
    import select

    if not path.endswith(SUFFIX):
        raise SystemExit(f"worker: refusing socket path {path!r} (must end in {SUFFIX})")
    sys.path[:] = [p for p in sys.path if p not in ("", "/")]
    idle_s = float(os.environ.get("GRADIEND_WORKER_IDLE", "300"))
    started = time.monotonic()
    _preload()
    print(f"worker {os.getpid()}: ready in {time.monotonic() - started:.1f} s", file=sys.stderr)

    temp = f"{path[: -len(SUFFIX)]}.{os.getpid()}.tmp"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(temp)
    os.chmod(temp, 0o600)
    server.listen(16)
    os.replace(temp, path)
    identity = os.stat(path).st_ino

    running: dict[int, socket.socket] = {}  # child pid -> its client's connection
    abandoned: set[int] = set()
    last = time.monotonic()
    try:
        while True:
            readable, _, _ = select.select([server, *running.values()], [], [], 0.2)
            for conn in readable:
                if conn is server:
                    continue
                # a client that sends anything (or closes) while its stage runs has gone away
                pid = next(p for p, c in running.items() if c is conn)
                if pid not in abandoned:
                    abandoned.add(pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            while running:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = running.pop(pid, None)
                abandoned.discard(pid)
                if conn is None:
                    continue
                message = (
                    {"signal": os.WTERMSIG(status)}
                    if os.WIFSIGNALED(status)
                    else {"code": os.WEXITSTATUS(status)}
                )
                with contextlib.suppress(OSError):
                    _send(conn, message)
                conn.close()
                last = time.monotonic()
            if server in readable:
                conn, _ = server.accept()
                fds: list[int] = []
                try:
                    conn.settimeout(10)
                    request = _recv(conn, fds)
                    conn.settimeout(None)
                    if len(fds) != 3:
                        raise ValueError("expected the client's three standard streams")
                except (OSError, ConnectionError, ValueError) as exc:
                    print(f"worker: bad request: {exc}", file=sys.stderr)
                    for fd in fds:
                        os.close(fd)
                    conn.close()
                    continue
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                pid = os.fork()
                if pid == 0:
                    server.close()
                    for other in running.values():
                        other.close()
                    conn.close()
                    _run_child(request, fds)
                for fd in fds:
                    os.close(fd)
                running[pid] = conn
                with contextlib.suppress(OSError):
                    _send(conn, {"pid": pid})
                last = time.monotonic()
            if running:
                continue
            if time.monotonic() - last > idle_s:
                break
            try:
                if os.stat(path).st_ino != identity:
                    break  # another worker took over the socket path
            except FileNotFoundError:
                break
    finally:
        try:
            if os.stat(path).st_ino == identity:
                os.unlink(path)
        except OSError:
            pass
        print(f"worker {os.getpid()}: exiting", file=sys.stderr)


if __name__ == "__worker__":
    serve(sys.argv[-1])
