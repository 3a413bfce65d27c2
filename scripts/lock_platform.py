"""Print (or, with --write, record in .ci/lock_platform.json) the platform whose float kernels made
the committed dvc.lock: torch's CPU capability (the vector ISA its kernels use), the torch version
and the thread count. Byte-identical reruns hold on the same platform (RELIABILITY.md); the slow
test compares byte for byte only there. Run with --write after `dvc repro` when committing a new
dvc.lock; --write also drops the lock's entries of stages that dvc.yaml no longer has (DVC keeps
them, and DVC re-reads the whole lock after every stage it runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

RECORD = Path(__file__).resolve().parents[1] / ".ci" / "lock_platform.json"


def platform() -> dict:
    import torch
    import yaml

    params = yaml.safe_load((RECORD.parents[1] / "params.yaml").read_text(encoding="utf-8"))
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "num_threads": params["runtime"]["num_threads"],
    }


def drop_removed_stages(repo: Path = RECORD.parents[1]) -> list[str]:
    """Remove dvc.lock's entries of stages that dvc.yaml no longer defines; return their names."""
    from dvc.repo import Repo
    from dvc.utils.serialize import modify_yaml

    with Repo(str(repo)) as dvc_repo:
        names = {stage.addressing for stage in dvc_repo.index.stages}
    with modify_yaml(str(repo / "dvc.lock")) as lock:
        stale = [name for name in lock.get("stages", {}) if name not in names]
        for name in stale:
            del lock["stages"][name]
    return stale


if __name__ == "__main__":
    now = platform()
    if "--write" in sys.argv:
        removed = drop_removed_stages()
        if removed:
            print(f"dvc.lock: dropped the entries of removed stages {', '.join(removed)}")
        RECORD.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(now, sort_keys=True))
