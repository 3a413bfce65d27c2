"""Side by side with the reference package (gradiend==0.2.3) on the same workload.

    python -m benchmarks.reference                # full run (~10 min on 2 CPU cores) python -m
    benchmarks.reference --smoke        # 1 step, tiny sizes: proves both sides run end to end
    python -m benchmarks.reference --no-prune     # both sides without pre-pruning (pre_prune.topk
    1.0)

Run from the repository root with .venv/bin on PATH, after `dvc repro data base_model` (needs
models/base and data/examples.parquet, data/neutral.parquet). The reference is a benchmark-only
tool: it is installed into its own venv, benchmarks/work/refvenv (git-ignored), on first use, and
only ever run in a separate process through its public API (benchmarks/_reference_worker.py). It is
never a dependency of this project and none of its code is copied here.

Each side runs in its own process, one after the other (never concurrently), with the same torch
thread count. Measured per side: seconds per training step (median over --steps after --warmup),
seconds per encoder-evaluation example, seconds per decoder-grid point (one (feature factor,
learning rate) evaluation incl. LMS on the same neutral texts), and peak RSS (ru_maxrss of the
worker).

Writes benchmarks/results/reference.json (both sides, the workload, versions) and updates
benchmarks/results/summary.json (created if missing): ``speedup_vs_reference_step`` = reference step
/ our step, ``rss_ratio_vs_reference`` = our peak RSS / reference peak RSS, ``device``. Run
benchmarks.run first: it rewrites summary.json with these two keys as null. --smoke writes only
benchmarks/work/smoke/reference.json and leaves benchmarks/results alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from gradiend_core.io import write_json

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work"
REFVENV = WORK / "refvenv"
RESULTS = ROOT / "benchmarks" / "results"
RESULT_MARK = "GRADIEND_BENCH_RESULT "

# The reference and what it needs; torch is pinned (this machine installs the CPU build from a local
# wheel; an unpinned torch would pull the CUDA build). transformers<6 is the reference's own bound.
REF_TORCH = "torch==2.13.0"
REF_PACKAGES = [
    "transformers==5.23.0",
    "safetensors",
    "pandas",
    "numpy",
    "tqdm",
    "matplotlib",
    "gradiend==0.2.3",
]
REF_PINS = {"gradiend": "0.2.3", "torch": "2.13.0", "transformers": "5.23.0"}


# --------------------------------------------------------------------------------------------------
# The reference's venv
# --------------------------------------------------------------------------------------------------


def _rel(path: Path) -> str:
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return str(path)


def refvenv_python() -> Path:
    return REFVENV / "bin" / "python"


def refvenv_versions() -> dict[str, str] | None:
    """Installed versions of the pinned packages in refvenv, or None if it is missing or broken."""
    py = refvenv_python()
    if not py.exists():
        return None
    code = (
        "import importlib.metadata as m, json, sys; json.dump({k: m.version(k) for k in"
        " sys.argv[1:]}, sys.stdout)"
    )
    proc = subprocess.run(
        [str(py), "-c", code, *REF_PINS], capture_output=True, text=True, env=_clean_env()
    )
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)


def _pins_ok(versions: dict[str, str] | None) -> bool:
    return versions is not None and all(
        versions.get(k, "").split("+")[0] == v for k, v in REF_PINS.items()
    )


def ensure_refvenv() -> dict[str, str]:
    """Create benchmarks/work/refvenv with the pinned reference if it is missing or incomplete."""
    versions = refvenv_versions()
    if _pins_ok(versions):
        return versions
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / "refvenv_pip.log"
    print(f"installing the reference into {_rel(REFVENV)} (pip log: {_rel(log)}) ...", flush=True)
    python3 = shutil.which("python3") or sys.executable
    with log.open("a", encoding="utf-8") as fh:
        steps = []
        if not refvenv_python().exists():
            steps.append([python3, "-m", "venv", str(REFVENV)])
        steps += [
            [str(refvenv_python()), "-m", "pip", "install", REF_TORCH],
            [str(refvenv_python()), "-m", "pip", "install", *REF_PACKAGES],
        ]
        for cmd in steps:
            fh.write(f"\n$ {' '.join(cmd)}\n")
            fh.flush()
            rc = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=_clean_env()
            ).returncode
            if rc != 0:
                raise SystemExit(f"error: '{' '.join(cmd[-3:])}' failed (exit {rc}); see {log}.")
    versions = refvenv_versions()
    if not _pins_ok(versions):
        raise SystemExit(
            f"error: {REFVENV} does not hold {REF_PINS} after installing (found {versions}); see"
            f" {log}."
        )
    return versions


# --------------------------------------------------------------------------------------------------
# The workload
# --------------------------------------------------------------------------------------------------


def parameter_names(model_dir: Path, g) -> tuple[list[str], int]:
    """θ's tensor names and size from the model's config alone (a meta-device model, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from gradiend_core.base_model import model_kind, select_param_space

    config = AutoConfig.from_pretrained(str(model_dir))
    if model_kind(config) != "causal":
        raise SystemExit(
            f"error: {model_dir} is not a causal LM; the comparison uses the clm_next_token"
            " objective."
        )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    space = select_param_space(model, g)
    return list(space.names), space.full_size


def build_workload(args, params) -> dict:
    import pandas as pd

    from gradiend_core.data import load_examples
    from gradiend_core.workspace import BASE_MODEL, EXAMPLES, NEUTRAL

    for path in (BASE_MODEL, EXAMPLES, NEUTRAL):
        if not (ROOT / path).exists():
            raise SystemExit(f"error: {path} is missing; run 'dvc repro data base_model' first.")
    g, t, p, d, f = (
        params.gradient,
        params.train,
        params.pre_prune,
        params.evaluate_decoder,
        params.feature,
    )
    model_dir = ROOT / BASE_MODEL
    names, n_full = parameter_names(model_dir, g)
    wdir = WORK / ("smoke" if args.smoke else "workload")
    wdir.mkdir(parents=True, exist_ok=True)

    # The same rows for both sides: ours reads data/examples.parquet, the reference its merged-table
    # format (label = factual token, label_class = factual class, explicit alternatives), as JSON
    # lines (its venv has no parquet engine).
    examples = load_examples(ROOT / EXAMPLES, f.mask)
    reference_rows = examples.rename(columns={"factual_class": "label_class", "factual": "label"})[
        ["masked", "split", "label_class", "label", "alternative", "alternative_class"]
    ]
    reference_rows.to_json(
        wdir / "examples_reference.jsonl", orient="records", lines=True, force_ascii=False
    )

    smoke = args.smoke
    enc_n = 1 if smoke else args.encoder_rows
    dec_rows = 2 if smoke else d.max_per_class
    dec_neutral = 2 if smoke else d.neutral_size
    neutral = pd.read_parquet(ROOT / NEUTRAL)[["text"]].head(max(enc_n, dec_neutral))
    neutral.to_json(wdir / "neutral_texts.jsonl", orient="records", lines=True, force_ascii=False)

    prune = not args.no_prune and not (isinstance(p.topk, float) and p.topk >= 1.0)
    return {
        "model_dir": str(model_dir),
        "examples": str(ROOT / EXAMPLES),
        "reference_examples": str(wdir / "examples_reference.jsonl"),
        "neutral_texts": str(wdir / "neutral_texts.jsonl"),
        "reference_experiment_dir": str(wdir / "reference_experiment"),
        "classes": list(f.classes),
        "targets": {k: list(v) for k, v in f.targets.items()},
        "mask": f.mask,
        "objective": "clm_next_token",
        "source": t.source,
        "target": t.target,
        "batch_size": t.batch_size,
        "learning_rate": t.learning_rate,
        "weight_decay": t.weight_decay,
        "seed": 0,
        "threads": params.runtime.num_threads,
        "max_length": g.max_length,
        "selection": {
            "include": list(g.include),
            "exclude": list(g.exclude),
            "exclude_embeddings": g.exclude_embeddings,
            "first_layer": g.first_layer,
            "last_layer": g.last_layer,
        },
        "param_names": names,
        "n_full": n_full,
        "pre_prune": {
            "enabled": prune,
            "topk": p.topk if prune else 1.0,
            "n_samples": 2 if smoke else p.n_samples,
            "source": p.source,
            "seed": p.seed,
        },
        "warmup": 1,
        "steps": 1 if smoke else args.steps,
        "encoder": {"max_per_class": enc_n, "max_size": enc_n, "neutral_size": enc_n},
        "decoder": {
            "max_per_class": dec_rows,
            "neutral_size": dec_neutral,
            "batch_size": d.batch_size,
            "learning_rates": (
                [1.0] if smoke else [float(x) for x in args.learning_rates.split(",")]
            ),
            "feature_factors": [
                float(x) for x in d.feature_factors
            ],  # the reference's summary needs both classes' factors
        },
        "smoke": smoke,
    }


# --------------------------------------------------------------------------------------------------
# Running the two sides
# --------------------------------------------------------------------------------------------------


def _clean_env(threads: int | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env.update(
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        GRADIEND_NO_PROGRESS="1",
        MPLBACKEND="Agg",
        PYTHONHASHSEED="0",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    if threads is not None:  # a worker: CPU only, same thread count on both sides
        env.update(
            OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES=""
        )
    return env


def run_worker(name: str, cmd: list[str], env: dict[str, str], log: Path, timeout: int) -> dict:
    print(
        f"[{name}] running ({' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))});"
        f" log: {_rel(log)}",
        flush=True,
    )
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        try:
            proc = subprocess.run(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=fh,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise SystemExit(f"error: the {name} worker ran past {timeout} s; see {log}.") from None
        fh.write("\n--- stdout ---\n" + proc.stdout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise SystemExit(
            f"error: the {name} worker failed (exit {proc.returncode}); see {log}. Last"
            f" lines:\n{tail}"
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if not lines:
        raise SystemExit(f"error: the {name} worker printed no result line; see {log}.")
    result = json.loads(lines[-1][len(RESULT_MARK) :])
    result["process_wall_s"] = wall
    print(f"[{name}] done in {wall:.1f} s", flush=True)
    return result


def table(ours: dict, ref: dict) -> str:
    rows = [
        ("seconds / training step (median)", "step_s", "{:.3f}"),
        ("seconds / encoder-eval example", "encoder_example_s", "{:.3f}"),
        ("seconds / decoder-grid point", "decoder_point_s", "{:.3f}"),
        ("peak RSS (GB)", "peak_rss_gb", "{:.2f}"),
        ("GRADIEND input size n", "n", "{:,d}"),
    ]
    out = [f"{'':34s} {'ours':>14s} {'reference':>14s} {'ref / ours':>11s}"]
    for label, key, fmt in rows:
        a, b = ours[key], ref[key]
        ratio = f"{b / a:.2f}x" if a else "-"
        out.append(f"{label:34s} {fmt.format(a):>14s} {fmt.format(b):>14s} {ratio:>11s}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="1 warm-up + 1 timed step, tiny eval sizes; writes only benchmarks/work/smoke/",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=5,
        help="timed training steps per side, after 1 warm-up step (default 5)",
    )
    parser.add_argument(
        "--encoder-rows",
        type=int,
        default=2,
        help=(
            "encoder eval: test rows per class (reference: per group and per neutral variant)"
            " (default 2)"
        ),
    )
    parser.add_argument(
        "--learning-rates",
        default="1.0",
        help="decoder grid learning rates (comma list; x params' feature factors; default 1.0)",
    )
    parser.add_argument(
        "--no-prune",
        action="store_true",
        help="compare with pre-pruning off on both sides (pre_prune.topk 1.0)",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=1800,
        help="seconds allowed per worker process (default 1800)",
    )
    args = parser.parse_args()
    os.chdir(ROOT)
    os.environ["CUDA_VISIBLE_DEVICES"] = (
        ""  # both sides are measured on the CPU; so is the device line
    )
    started = time.perf_counter()

    from gradiend_core.params import load_params

    params = load_params()
    ref_versions = ensure_refvenv()
    workload = build_workload(args, params)
    wdir = Path(workload["reference_examples"]).parent
    shutil.rmtree(workload["reference_experiment_dir"], ignore_errors=True)
    workload_file = wdir / "workload.json"
    write_json(workload_file, workload)
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    suffix = "_smoke" if args.smoke else ""
    threads = workload["threads"]

    ours = run_worker(
        "ours",
        [sys.executable, "-m", "benchmarks._ours_worker", str(workload_file)],
        _clean_env(threads),
        logs / f"ours{suffix}.log",
        args.timeout,
    )
    ref_env = _clean_env(threads)
    ref_env["PATH"] = f"{REFVENV / 'bin'}{os.pathsep}{ref_env.get('PATH', '')}"
    ref = run_worker(
        "reference",
        [
            str(refvenv_python()),
            str(ROOT / "benchmarks" / "_reference_worker.py"),
            str(workload_file),
        ],
        ref_env,
        logs / f"reference{suffix}.log",
        args.timeout,
    )
    shutil.rmtree(
        workload["reference_experiment_dir"], ignore_errors=True
    )  # the reference's checkpoints

    import torch

    from benchmarks.run import device_line

    torch.set_num_threads(threads)
    speedup = ref["step_s"] / ours["step_s"]
    rss_ratio = ours["peak_rss_gb"] / ref["peak_rss_gb"]
    print("\n" + table(ours, ref))
    print(
        f"\nspeedup per training step: {speedup:.2f}x (target >= 5x:"
        f" {'met' if speedup >= 5 else 'NOT met'}); peak RSS ours/reference: {rss_ratio:.2f}"
        f" (target <= 0.5: {'met' if rss_ratio <= 0.5 else 'NOT met'})"
    )

    prune = workload["pre_prune"]
    report = {
        "device": device_line(),
        "smoke": args.smoke,
        "wall_s": time.perf_counter() - started,
        "speedup_vs_reference_step": speedup,
        "rss_ratio_vs_reference": rss_ratio,
        "speedup_vs_reference_encoder_example": (
            ref["encoder_example_s"] / ours["encoder_example_s"]
        ),
        "speedup_vs_reference_decoder_point": ref["decoder_point_s"] / ours["decoder_point_s"],
        "targets": {
            "step_speedup_min": 5.0,
            "rss_ratio_max": 0.5,
            "step_speedup_met": speedup >= 5.0,
            "rss_ratio_met": rss_ratio <= 0.5,
        },
        "ours": ours,
        "reference": ref,
        "versions": {
            "python": platform.python_version(),
            "ours": {"torch": ours["torch"], "transformers": ours["transformers"]},
            "reference": {**ref_versions, "package": ref.get("package")},
        },
        "workload": {
            "model": (
                "models/base (SmolLM2-135M, safetensors), float32, CPU, same torch thread count on"
                " both sides"
            ),
            "data": (
                "data/examples.parquet (same rows; the reference reads them as its merged table:"
                " label = factual, label_class = factual_class, explicit"
                " alternative/alternative_class), split column 'split'"
            ),
            "objective": workload["objective"],
            "source_target": f"{workload['source']}/{workload['target']}",
            "batch_size": workload["batch_size"],
            "learning_rate": workload["learning_rate"],
            "weight_decay": workload["weight_decay"],
            "parameter_set": {
                **workload["selection"],
                "tensors": len(workload["param_names"]),
                "n_full": workload["n_full"],
                "reference_params": (
                    "the explicit list of the same tensor names (TrainingArguments.params); its"
                    " coordinate count is checked equal"
                ),
            },
            "pre_prune": (
                {
                    **prune,
                    "note": (
                        "both sides: |mean signed gradient| over n_samples stratified training"
                        " rows, top-k coordinates (the sampled rows differ: each side draws its"
                        " own)"
                    ),
                }
                if prune["enabled"]
                else {
                    **prune,
                    "note": (
                        "pre-pruning off on both sides (our pre_prune.topk 1.0; the reference"
                        " without pre_prune_config)"
                    ),
                }
            ),
            "steps": {
                "warmup": workload["warmup"],
                "timed": workload["steps"],
                "reported": "median of the timed steps",
            },
            "encoder_eval": workload["encoder"],
            "decoder_eval": workload["decoder"],
            "differences": [
                (
                    "training step, reference: its data loader's base-gradient rows (one"
                    " forward+backward per needed vector: alternative and factual separately, the"
                    " diff formed from them; inputs padded to 256 tokens) + autograd GRADIEND step"
                    " + its callbacks, timed between step ends with in-training evaluation off;"
                    " ours: one forward, one backward per needed vector (alternative, diff) on"
                    " packed prefixes (left-padded for a model that cannot pack), the closed-form"
                    " GRADIEND step and AdamW of training (Gradiend.fused_update)"
                ),
                (
                    "encoder eval, reference: test rows + 'neutral_training_masked' rows (test"
                    " templates re-masked) + 'neutral_dataset' rows; ours: test rows + neutral rows"
                    " (the pipeline has no re-masked-template variant); reported per encoded row,"
                    " counts per type in encoder_rows_by_type"
                ),
                (
                    "decoder grid point: the whole evaluate_decoder call / (grid points + base"
                    " point); reference deep-copies the base model per point, ours edits theta in"
                    " place and restores it"
                ),
                (
                    "the reference reloads its saved GRADIEND after train() (part of its peak RSS);"
                    " ours keeps it in memory"
                ),
                (
                    "pre-pruning samples: each side draws its own n_samples rows with its own RNG;"
                    " same n_samples, top-k fraction and source"
                ),
            ],
        },
    }
    if args.smoke:
        out = WORK / "smoke" / "reference.json"
        write_json(out, report)
        print(
            f"\nsmoke run: wrote {_rel(out)}; benchmarks/results left unchanged. Total"
            f" {report['wall_s']:.1f} s."
        )
        return
    write_json(RESULTS / "reference.json", report)
    summary_file = RESULTS / "summary.json"
    summary = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.exists() else {}
    summary.update(
        device=report["device"],
        speedup_vs_reference_step=speedup,
        rss_ratio_vs_reference=rss_ratio,
        reference_comparison=(
            f"gradiend {REF_PINS['gradiend']} side by side on the same workload; see"
            " benchmarks/results/reference.json"
        ),
    )
    write_json(summary_file, summary)
    print(
        "\nwrote benchmarks/results/reference.json and updated benchmarks/results/summary.json."
        f" Total {report['wall_s']:.1f} s."
    )


if __name__ == "__main__":
    main()
