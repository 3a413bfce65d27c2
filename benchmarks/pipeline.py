"""Whole-pipeline timings: the default ``dvc repro`` from an empty DVC cache, a GRADIEND-only
experiment after it, and the cost of one more seed.

A fresh clone of this repository's HEAD is made under benchmarks/work/pipeline (its DVC cache is
empty, and its committed metrics/ and plots/ are removed so that every stage runs), then, with
this checkout's .venv on PATH and 2 torch threads as params.yaml says:

1. ``dvc repro``                                     -> ``default_repro_s``
2. ``dvc exp run -S train.learning_rate=<half>``     -> ``gradiend_only_exp_s``
3. ``dvc exp run -S train.seeds=[<seeds>, <new>]``   -> ``added_seed_s`` (the new train stage)
4. ``python -m gradiend_core.comparison --rev HEAD --rev lr-half`` -> results/compare_runs/
5. ``dvc exp run -S rewrite.direction=balance``     -> results/balance_rewrite.json (its probes)

Stage durations come from the stages' own logs (logs/<stage>.log). The figures are merged into
benchmarks/results/summary.json; ``first_seed_s`` is the gradients stage plus the first train
stage, the base-model work a single seed needs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from examples.run import collect, env, record, remove_committed_outputs, write_table

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "work" / "pipeline"
RESULTS = REPO / "benchmarks" / "results"
# The stages' warm worker (stages/_worker.py) gets a socket folder of its own, emptied first, so the
# default run pays the worker's start like a fresh machine does; the experiments after it find the
# worker warm, as a user's next `dvc exp run` does within its idle time.
WORKER_DIR = WORK.parent / "pipeline-worker"
FINISHED = re.compile(r"stage (\S+) finished in ([\d.]+) s")


def run(cmd: list[str], cwd: Path) -> float:
    """Run ``cmd``; return its wall time in seconds (the output goes to this terminal)."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env(WORKER_DIR), check=True)
    return time.perf_counter() - start


def stage_seconds(clone: Path) -> dict[str, float]:
    """The latest duration of each stage, from its log (train stages are logged as 'train')."""
    out: dict[str, float] = {}
    for log in sorted((clone / "logs").glob("*.log")):
        for stage, seconds in FINISHED.findall(log.read_text(encoding="utf-8", errors="replace")):
            out[stage] = float(seconds)
    return out


def train_seconds(clone: Path) -> list[float]:
    """Every train stage's duration in the order they ran."""
    log = clone / "logs" / "train.log"
    return [
        float(s) for st, s in FINISHED.findall(log.read_text(encoding="utf-8")) if st == "train"
    ]


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    shutil.rmtree(WORKER_DIR, ignore_errors=True)  # a worker left from an earlier run exits
    WORK.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(WORK)], check=True)
    params = yaml.safe_load((WORK / "params.yaml").read_text(encoding="utf-8"))
    lr = params["train"]["learning_rate"] / 2
    seeds = list(params["train"]["seeds"])
    remove_committed_outputs(WORK)
    repro_s = run(["dvc", "repro"], WORK)
    stages = stage_seconds(WORK)
    # The fresh clone's run must reproduce the committed lock (same params + code = same bytes).
    reproduces = (
        subprocess.run(["git", "diff", "--quiet", "dvc.lock"], cwd=WORK, check=False).returncode
        == 0
    )
    # The default pipeline is also the documented example 'he_she': record this run as its result.
    he_she = {
        "name": "he_she",
        "command": "bash scripts/example.sh he_she",
        "model": params["model"]["source"],
        **collect(WORK),
        "wall_s": round(repro_s, 1),
    }
    record(he_she)
    write_table()
    trains = train_seconds(WORK)
    exp_s = run(["dvc", "exp", "run", "-n", "lr-half", "-S", f"train.learning_rate={lr}"], WORK)
    more = json.dumps([*seeds, max(seeds) + 1])
    base_lr = params["train"]["learning_rate"]
    seed_cmd = ["dvc", "exp", "run", "-S", f"train.learning_rate={base_lr}"]
    seed_exp_s = run([*seed_cmd, "-S", f"train.seeds={more}"], WORK)
    added = train_seconds(WORK)[-1]
    # The debiasing rewrite, one -S away: its behaviour probes, for the README.
    defaults = ["-S", f"train.seeds={json.dumps(seeds)}", "-S", f"train.learning_rate={base_lr}"]
    run(["dvc", "exp", "run", "-n", "balance", *defaults, "-S", "rewrite.direction=balance"], WORK)
    balance = {
        name: json.loads(
            (WORK / "metrics" / name / f"{params['feature']['pairs'][0]}.json").read_text(
                encoding="utf-8"
            )
        )
        for name in ("rewrite", "probe_generation", "probe_bias")
    }
    (RESULTS / "balance_rewrite.json").write_text(
        json.dumps(balance, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    # Across runs: the committed run's GRADIENDs (read from this clone's DVC cache) against the
    # half-learning-rate experiment's, with the documented command.
    compare_out = RESULTS / "compare_runs"
    run(
        [
            "python",
            "-m",
            "gradiend_core.comparison",
            "--rev",
            "HEAD",
            "--rev",
            "lr-half",
            "--out",
            str(compare_out),
        ],
        WORK,
    )
    first_seed = stages.get("gradients", 0.0) + trains[0]
    figures = {
        "default_repro_reproduces_committed_lock": reproduces,
        "default_repro_s": repro_s,
        "gradiend_only_exp_s": exp_s,
        "added_seed_exp_s": seed_exp_s,
        "added_seed_s": added,
        "first_seed_s": first_seed,
        "added_seed_ratio": added / first_seed,
        "stage_seconds": stages,
    }
    summary_file = RESULTS / "summary.json"
    summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.exists() else {}
    summary.update(figures)
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary_file.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
