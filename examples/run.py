"""Run one documented example end to end and record its real results.

    bash scripts/example.sh <name>        # = bootstrap, then python -m examples.run <name>

An example is ``examples/<name>.yaml``: a one-line description, extra PyPI packages it needs, and
the params it changes. The run clones this repository's HEAD into ``examples/work/<name>`` (its own
DVC cache, nothing shared with the workspace), installs the extra packages into ``.venv``, writes
the overrides into the clone's params.yaml, runs ``dvc repro`` there, and records the headline
metrics in ``examples/results.json`` (one entry per example, replaced on a rerun). The README's
examples table is generated from that file (``python -m examples.run --table``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "examples"
RESULTS = SPECS / "results.json"
WORK = SPECS / "work"
README = REPO / "README.md"
BEGIN, END = "<!-- examples:begin -->", "<!-- examples:end -->"
FIELDS = (
    "name",
    "command",
    "model",
    "correlation",
    "neutral_abs_mean",
    "converged_seeds",
    "trained_seeds",
    "rewrite_before",
    "rewrite_after",
    "lms_ratio",
    "wall_s",
)


def load_spec(name: str) -> dict:
    """``examples/<name>.yaml``; a missing example is a one-line error listing the known ones."""
    path = SPECS / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in SPECS.glob("*.yaml"))
        raise SystemExit(f"error: no example {name!r} ({path} is missing); known examples: {known}")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def merge(params: dict, overrides: dict) -> dict:
    """``params`` with each ``section.key`` of ``overrides`` replaced (sections merged by key)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
    for section, values in (overrides or {}).items():
        out.setdefault(section, {}).update(values)
    return out


# The stages' warm worker (stages/_worker.py) gets a folder of its own, emptied before each example,
# so every example's wall time includes the worker's start, as on a fresh machine.
WORKER_DIR = WORK / ".worker"


def env(worker_dir: Path = WORKER_DIR) -> dict[str, str]:
    """Offline, no analytics, this checkout's venv first on PATH, the worker in ``worker_dir``."""
    out = dict(
        os.environ, HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1", GRADIEND_WORKER_DIR=str(worker_dir)
    )
    out["PATH"] = str(REPO / ".venv" / "bin") + os.pathsep + out.get("PATH", "")
    return out


def collect(clone: Path) -> dict:
    """The headline numbers of a finished run, read from its metrics files."""

    def metric(name: str) -> dict:
        return json.loads((clone / "metrics" / f"{name}.json").read_text(encoding="utf-8"))

    pairs = yaml.safe_load((clone / "params.yaml").read_text(encoding="utf-8"))["feature"]["pairs"]
    select, encoder = metric("select"), metric("evaluate_encoder")
    per_pair = {}
    for pair in pairs:  # the headline columns are the first pair's (select/encoder files too)
        rewrite = metric(f"rewrite/{pair}")
        per_pair[pair] = {
            "rewrite_before": rewrite.get("target_probability_before"),
            "rewrite_after": rewrite.get("target_probability_after"),
            "lms_ratio": rewrite["lms_ratio"],
        }
    rows = {c: sum(by_split.values()) for c, by_split in metric("data")["rows"].items()}
    out = {
        "correlation": encoder["correlation"],
        "neutral_abs_mean": encoder["neutral"]["abs_mean"],
        "converged_seeds": select["convergent_count"],
        "trained_seeds": len(select["seeds_tried"]),
        **per_pair[pairs[0]],
    }
    out["rows"] = rows  # masked rows per class (all splits), metrics/data.json
    if len(pairs) > 1:
        out["pairs"] = {
            pair: {**encoder["pairs"][pair], **select["pairs"][pair], **per_pair[pair]}
            for pair in pairs
        }
    return out


def remove_committed_outputs(clone: Path) -> None:
    """Delete the clone's committed metrics/ and plots/ outputs (``cache: false``). Left in
    place, DVC would find the stages that write only those up to date and skip them, so the run
    would neither be whole nor its wall time honest."""
    import shutil

    lock = yaml.safe_load((clone / "dvc.lock").read_text(encoding="utf-8"))
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path = clone / out["path"]
            if out["path"].startswith(("metrics/", "plots/")) and path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def run_example(name: str) -> dict:
    spec = load_spec(name)
    if spec.get("install"):
        subprocess.run(
            [
                str(REPO / ".venv" / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                *spec["install"],
            ],
            check=True,
        )
    clone = WORK / name
    subprocess.run(["rm", "-rf", str(clone), str(WORKER_DIR)], check=True)
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    params_file = clone / "params.yaml"
    params = merge(yaml.safe_load(params_file.read_text(encoding="utf-8")), spec.get("params"))
    params_file.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    remove_committed_outputs(clone)
    start = time.perf_counter()
    subprocess.run(["dvc", "repro"], cwd=clone, env=env(), check=True)
    wall = time.perf_counter() - start
    entry = {
        "name": name,
        "command": f"bash scripts/example.sh {name}",
        "model": params["model"]["source"],
        **collect(clone),
        "wall_s": round(wall, 1),
    }
    return entry


def record(entry: dict) -> None:
    """Replace ``entry['name']``'s entry in examples/results.json (kept sorted by name)."""
    results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else []
    results = [r for r in results if r["name"] != entry["name"]] + [entry]
    results.sort(key=lambda r: r["name"])
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tmp.replace(RESULTS)


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table() -> str:
    """The README's examples table, from examples/results.json (and one row per pair of every
    suite below it)."""
    results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else []
    lines = [
        "| example | command | model | rows per class | test correlation | neutral \\|mean\\| |"
        " seeds converged | rewrite P before → after | LMS ratio | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        spec = load_spec(r["name"])
        rows = ", ".join(f"{c} {n}" for c, n in (r.get("rows") or {}).items()) or "–"
        lines.append(
            f"| {r['name']}: {spec.get('description', '')} | `{r['command']}` | `{r['model']}` "
            f"| {rows} | {fmt(r['correlation'], 4)} | {fmt(r['neutral_abs_mean'])} "
            f"| {r['converged_seeds']} / {r['trained_seeds']} "
            f"| {fmt(r['rewrite_before'])} → {fmt(r['rewrite_after'])} | {fmt(r['lms_ratio'], 4)} "
            f"| {fmt(r['wall_s'] / 60, 1)} min |"
        )
    suites = [r for r in results if r.get("pairs")]
    if suites:
        lines += [
            "",
            "Suites, one row per pair (the table above shows the first pair):",
            "",
            "| example | pair | test correlation | neutral \\|mean\\| | seeds converged |"
            " rewrite P before → after | LMS ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in suites:
            for pair, m in r["pairs"].items():
                lines.append(
                    f"| {r['name']} | {pair} | {fmt(m['correlation'], 4)} "
                    f"| {fmt(m['neutral_abs_mean'])} | {m['convergent_count']} / "
                    f"{m['trained_count']} | {fmt(m['rewrite_before'])} → "
                    f"{fmt(m['rewrite_after'])} | {fmt(m['lms_ratio'], 4)} |"
                )
    return "\n".join(lines)


def write_table() -> None:
    text = README.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(f"error: {README} needs exactly one {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    tmp = README.with_suffix(".md.tmp")
    tmp.write_text(f"{head}{BEGIN}\n{table()}\n{END}{tail}", encoding="utf-8")
    tmp.replace(README)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", nargs="?", help="example to run (examples/<name>.yaml)")
    parser.add_argument("--table", action="store_true", help="only regenerate the README table")
    args = parser.parse_args()
    if args.name:
        entry = run_example(args.name)
        record(entry)
        print(json.dumps(entry, indent=2))
    write_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
