"""Seeding, determinism, devices, logging and the stage entry-point wrapper.

Wall-clock durations go to ``logs/<stage>.log`` (git- and DVC-ignored); nothing time-dependent is
ever written into a DVC-tracked output.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gradiend_core.errors import GradiendError

LOG = logging.getLogger("gradiend")


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# glibc mallopt parameters (malloc.h) and the values tune_allocator sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap and are reused when freed
TRIM_THRESHOLD = (1 << 31) - 1  # freed heap memory stays with the process instead of the OS


def tune_allocator() -> bool:
    """Keep freed large blocks for reuse instead of returning them to the OS (glibc only).

    By default glibc serves every block above 32 MB with its own mmap and unmaps it when freed, and
    trims freed heap memory soon after: each training step's fresh gradient tensors (142 MB at
    n = 35.4 M) and every batch's activations fault their pages in again, which on 2 cores costs
    as much as a third of a step. With both thresholds raised, freed blocks are reused; the peak
    memory is unchanged (the same blocks are live at once). Off with ``GRADIEND_MALLOC_TUNE=0``
    and on other C libraries. Returns whether both settings were applied."""
    import ctypes
    import platform

    if os.environ.get("GRADIEND_MALLOC_TUNE", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    done = [mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD), mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
    return all(done)


def configure_torch(num_threads: int, device: str = "cpu") -> None:
    """Deterministic kernels, a fixed thread count (reduction order depends on it) and the
    allocator's reuse of freed blocks (``tune_allocator``)."""
    import torch

    tune_allocator()

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(num_threads)
    # torch.use_deterministic_algorithms also imports torch._inductor to set its flag (~1.5 s of
    # every stage's start on 2 cores); nothing here compiles, so only the eager switch is set.
    set_eager = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_eager is None:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        set_eager(True, warn_only=True)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GradiendError(
                f"params.yaml: 'runtime.device' = {device!r} but no CUDA device is visible; use"
                " 'cpu'."
            )
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def setup_logging(stage: str) -> Path:
    """Log to stderr and to an untracked ``logs/<stage>.log`` (durations live only there)."""
    log_dir = Path(os.environ.get("GRADIEND_LOG_DIR", "logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{stage.replace('@', '_')}.log"
    fmt = logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(log_file, mode="a")):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    for noisy in (
        "transformers",
        "datasets",
        "huggingface_hub",
        "matplotlib",
        "filelock",
        "urllib3",
        "httpx",
    ):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    return log_file


def run_stage(stage: str, main: Callable[[], None]) -> None:
    """Run a stage's ``main``; user errors print one line and exit 2, durations go to the log."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    log_file = setup_logging(stage)
    start = time.perf_counter()
    try:
        main()
    except GradiendError as exc:
        LOG.error("stage %s failed after %.1f s", stage, time.perf_counter() - start)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    LOG.info("stage %s finished in %.1f s (log: %s)", stage, time.perf_counter() - start, log_file)


def progress(iterable=None, **kwargs):
    """tqdm progress bar on stderr; disabled when GRADIEND_NO_PROGRESS is set (tests)."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable, disable=bool(os.environ.get("GRADIEND_NO_PROGRESS")), dynamic_ncols=True, **kwargs
    )
