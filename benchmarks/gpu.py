"""GPU figures for benchmarks.run, on a machine that cannot hold the real weights.

    python -m benchmarks.gpu prepare        # here: copy what the GPU run needs to a folder
    python -m benchmarks.gpu run --out DIR  # there: random-weight base model, fp32 and bf16 runs

A lent GPU machine receives at most 64 MiB of files, so the SmolLM2 weights (538 MB) cannot travel.
``prepare`` copies the base model's config and tokenizer, the pre-pruned θ, the selected GRADIEND,
the MLM head and the data tables; ``run`` builds the same architecture with seeded random weights
(the cost of a step, a grid point or a decoder evaluation does not depend on the weight values;
the decoder evaluation's *choices* do, so only its timings are reported), then once per dtype with
``runtime.device: cuda`` recomputes the rows' lower-block states from those weights (stage
lower_states) and runs ``benchmarks.run``. The results land in
``DIR/gpu_<dtype>.json`` and are recorded in benchmarks/results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

CARRY = Path("benchmarks/work/gpu")
COPIES = {
    "models/pre_prune": "pre_prune",
    "models/selected": "selected",
    "models/mlm_head": "mlm_head",
    "data/examples.parquet": "examples.parquet",
    "data/neutral.parquet": "neutral.parquet",
}


def prepare() -> None:
    if CARRY.exists():
        shutil.rmtree(CARRY)
    (CARRY / "base").mkdir(parents=True)
    for f in Path("models/base").iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, CARRY / "base" / f.name)
    for src, dst in COPIES.items():
        (shutil.copytree if Path(src).is_dir() else shutil.copy)(src, CARRY / dst)
    size = sum(f.stat().st_size for f in CARRY.rglob("*") if f.is_file())
    print(f"{CARRY}: {size / 2**20:.1f} MiB to carry")


def random_base() -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(CARRY / "base")
    model = AutoModelForCausalLM.from_config(config)
    out = Path("models/base")
    out.mkdir(parents=True, exist_ok=True)
    for f in (CARRY / "base").iterdir():
        shutil.copy(f, out / f.name)
    model.save_pretrained(out)


def run(out: Path, steps: int) -> None:
    for src, dst in COPIES.items():
        target = Path(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        (shutil.copytree if (CARRY / dst).is_dir() else shutil.copy)(CARRY / dst, target)
    random_base()
    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    for dtype in ("float32", "bfloat16"):
        params["runtime"].update(device="cuda", dtype=dtype)
        Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        results = Path("benchmarks/results/summary.json")
        results.unlink(missing_ok=True)
        # the rows' lower-block states belong to the random weights and the dtype: recomputed here
        subprocess.run([sys.executable, "-m", "stages.lower_states"], check=True)
        subprocess.run([sys.executable, "-m", "benchmarks.run", "--steps", str(steps)], check=True)
        summary = json.loads(results.read_text(encoding="utf-8"))
        summary["scaling"] = json.loads(
            Path("benchmarks/results/scaling.json").read_text(encoding="utf-8")
        )
        summary["weights"] = "random (seed 0), SmolLM2-135M architecture"
        summary["dtype"] = dtype
        (out / f"gpu_{dtype}.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["prepare", "run"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/work/gpu_out"))
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    prepare() if args.action == "prepare" else run(args.out, args.steps)


if __name__ == "__main__":
    main()
