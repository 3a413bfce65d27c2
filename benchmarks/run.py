"""Benchmarks: floor ratio, phase split, decoder grid-point cost and scaling in n.

    python -m benchmarks.run [--steps 5] [--scaling 0.001,0.01,0.1,1.0]
    python -m benchmarks.run --decoder-only OUT.json   # the decoder evaluation alone

Needs the pipeline's base model, data and pre-prune outputs (run `dvc repro pre_prune` first; the
README's first command does). Prints a table and writes benchmarks/results/summary.json plus
benchmarks/results/scaling.json and scaling.png. Wall-clock figures depend on the machine; the JSON
names it in ``device``.

* floor: the base model's own passes a training step needs — one forward and one backward per needed
  vector (alternative + diff = 2), plain ``loss.backward()`` into ``.grad`` over θ's tensors;
* full step: the same passes, the gradient vector (a pruned θ's kept coordinates gathered into one
  flat buffer; an unpruned θ's gradients read where autograd put them, ``Segments``) + GRADIEND
  update (closed form + AdamW, ``Gradiend.fused_update``), as a training step that computes its
  gradients on the fly;
* grid point: apply the edit in place, measure probabilities + LMS, restore; compared with one plain
  measurement of the unedited model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from gradiend_core.base_model import ParamSpace, open_base, select_param_space
from gradiend_core.data import load_examples, take_balanced
from gradiend_core.decoder_eval import (
    build_lms_set,
    build_probe_set,
    decoder_grid,
    measure,
    select,
)
from gradiend_core.gradiend import Gradiend, load_gradiend
from gradiend_core.gradients import fixed_batches, needed_kinds, open_computer
from gradiend_core.io import read_parquet, write_json
from gradiend_core.params import load_params
from gradiend_core.pruning import top_k
from gradiend_core.weight_edit import WeightEditor, update_direction
from gradiend_core.workspace import EXAMPLES, NEUTRAL, pre_prune_dir, selected_dir

RESULTS = Path("benchmarks/results")


def device_line() -> str:
    cpu = platform.processor() or platform.machine()
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}"
    isa = torch.backends.cpu.get_cpu_capability()  # AVX2 and AVX-512 hosts differ ~1.4x in speed
    return (
        f"CPU {cpu} ({isa} kernels), {os.cpu_count()} cores, {torch.get_num_threads()} torch"
        f" threads; torch {torch.__version__}"
    )


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def sync() -> None:
    """GPU work is asynchronous: wait for it before reading the clock."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gpu_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else None


def timed_once(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    return statistics.median(timed_once(fn) for _ in range(repeats))


def bench_step(params, base, space: ParamSpace, batch, steps: int) -> dict:
    t = params.train
    kinds = needed_kinds(t.source, t.target)
    computer = open_computer(params, base, space)
    from gradiend_core.gradiend import GradiendAdamW  # training's update (Gradiend.fused_update)

    model = Gradiend.initialised(space.size, 0).to(base.device)
    optim = GradiendAdamW(model, lr=t.learning_rate, weight_decay=t.weight_decay)
    masked, fact, alt = (
        batch["masked"].tolist(),
        batch["factual"].tolist(),
        batch["alternative"].tolist(),
    )

    def floor() -> None:
        loss_of = computer._loss_fn(masked)
        t_f = torch.tensor([computer.target_index(w) for w in fact])
        t_a = torch.tensor([computer.target_index(w) for w in alt])
        losses = {
            "factual": lambda: loss_of(t_f),
            "alternative": lambda: loss_of(t_a),
            "diff": lambda: loss_of(t_f) - loss_of(t_a),
        }
        for i, k in enumerate(kinds):
            losses[k]().backward(retain_graph=i < len(kinds) - 1)
        base.model.zero_grad(set_to_none=True)

    phases = {"extract": [], "gradiend": []}

    def full() -> None:
        sync()
        a = time.perf_counter()
        # With θ's tensors kept whole, the gradients as autograd returns them (Segments, no n-sized
        # copy); the update reads them in place, and its loss is the NaN/inf check (training
        # raises on a non-finite loss). A pruned θ's vector is gathered into one flat buffer.
        vec = computer.vectors(masked, fact, alt, kinds, flat=not computer.whole_tensors)
        sync()
        b = time.perf_counter()
        loss = model.fused_update(vec[t.source], vec[t.target], optim)
        if not math.isfinite(loss):
            raise RuntimeError(f"non-finite GRADIEND loss {loss}")
        sync()
        c = time.perf_counter()
        phases["extract"].append(b - a)
        phases["gradiend"].append(c - b)

    # Floor and step alternate, so drift of a shared 2-core machine hits both alike; the ratio is
    # the median of the per-repeat ratios.
    floor()
    full()
    floors, fulls = [], []
    for _ in range(steps):
        floors.append(timed_once(floor))
        fulls.append(timed_once(full))
    return {
        "floor_s": statistics.median(floors),
        "step_s": statistics.median(fulls),
        "floor_ratio": statistics.median(s / f for s, f in zip(fulls, floors, strict=True)),
        "repeats": steps,
        "phase_extract_s": statistics.median(phases["extract"]),
        "phase_gradiend_update_s": statistics.median(phases["gradiend"]),
        "n": space.size,
    }


def bench_grid(params, base, space: ParamSpace, repeats: int) -> dict:
    d, f = params.evaluate_decoder, params.feature
    rows = take_balanced(load_examples(EXAMPLES, f.mask), "test", f.classes, d.max_per_class)
    probe = build_probe_set(base, rows, f.classes, f.targets, f.mask, params.gradient.max_length)
    lms_set = build_lms_set(
        base,
        read_parquet(NEUTRAL, ["text"], "neutral")["text"].tolist()[: d.neutral_size],
        params.gradient.max_length,
    )
    gradiend = Gradiend.initialised(space.size, 0)
    editor = WeightEditor(base.model, space)
    direction = update_direction(gradiend, 1.0)

    def point() -> None:
        editor.apply(0.1 * direction)
        measure(base, probe, lms_set, d.batch_size)
        editor.restore()

    plain = timed(lambda: measure(base, probe, lms_set, d.batch_size), repeats)
    edited = timed(point, repeats)
    return {"base_measure_s": plain, "grid_point_s": edited, "grid_point_ratio": edited / plain}


def bench_decoder(params, base) -> dict:
    """The evaluate_decoder stage's grid on the selected GRADIEND, the old way (every point, full
    passes) against today's (lower blocks reused, bracket search): at ``refine_steps: 0`` the
    search must choose the grid's points (the speedup at the same choices), and the default
    refinement is timed as well (its finer choice is reported)."""
    d, f = params.evaluate_decoder, params.feature
    gradiend, space, context = load_gradiend(selected_dir(params.feature.pairs[0]))
    rows = take_balanced(load_examples(EXAMPLES, f.mask), "test", f.classes, d.max_per_class)
    probe = build_probe_set(base, rows, f.classes, f.targets, f.mask, params.gradient.max_length)
    texts = read_parquet(NEUTRAL, ["text"], "neutral")["text"].tolist()[: d.neutral_size]
    lms_set = build_lms_set(base, texts, params.gradient.max_length)
    full_grid = SimpleNamespace(**{**vars_of(d), "search": "grid"})
    same = SimpleNamespace(**{**vars_of(d), "search": "bracket", "refine_steps": 0})
    runs = {}
    for name, settings, reuse in (
        ("before", full_grid, False),
        ("after", same, True),
        ("refined", d, True),
    ):
        sync()
        start = time.perf_counter()
        base_point, points = decoder_grid(
            base, gradiend, space, probe, lms_set, settings, reuse_lower_blocks=reuse
        )
        sync()
        runs[name] = {
            "seconds": time.perf_counter() - start,
            "points": len(points),
            "selection": select(points, base_point, context, d.lms_ratio, balance=False),
        }
        print(
            f"decoder grid {name}: {runs[name]['seconds']:.1f} s, {len(points)} points", flush=True
        )

    def chosen(run: dict) -> dict:
        return {
            k: (v["feature_factor"], v["learning_rate"]) if v else None
            for k, v in run["selection"].items()
        }

    goal = params.rewrite.target_class
    return {
        "decoder_eval_before_s": runs["before"]["seconds"],
        "decoder_eval_after_s": runs["after"]["seconds"],
        "decoder_eval_points_before": runs["before"]["points"],
        "decoder_eval_points_after": runs["after"]["points"],
        "decoder_eval_speedup": runs["before"]["seconds"] / runs["after"]["seconds"],
        "decoder_eval_same_choices": chosen(runs["before"]) == chosen(runs["after"]),
        "decoder_eval_refined_s": runs["refined"]["seconds"],
        "decoder_eval_points_refined": runs["refined"]["points"],
        "decoder_eval_refined_choice": {
            "learning_rate": runs["refined"]["selection"][goal]["learning_rate"],
            "value": runs["refined"]["selection"][goal]["value"],
            "grid_learning_rate": runs["before"]["selection"][goal]["learning_rate"],
            "grid_value": runs["before"]["selection"][goal]["value"],
        },
    }


def vars_of(section) -> dict:
    """A params section's fields as a dict (sections are frozen dataclasses)."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--scaling",
        default="0.001,0.01,0.1,1.0",
        help="pre-prune top-k fractions for the scaling curve",
    )
    parser.add_argument(
        "--decoder-only",
        type=Path,
        metavar="JSON",
        help="measure only the decoder evaluation (full passes over every grid point against"
        " lower blocks reused + bracket search) and write it to JSON; e.g. in an example's"
        " finished clone (examples/work/<name>) for another model",
    )
    args = parser.parse_args()
    params = load_params()
    torch.manual_seed(0)
    base = open_base(params)
    if args.decoder_only:
        decoder = {"device": device_line(), "model": params.model.source}
        decoder.update(bench_decoder(params, base))
        write_json(args.decoder_only, decoder)
        print(json.dumps(decoder, indent=2))
        return
    pruned = ParamSpace.load(pre_prune_dir(params.feature.pairs[0]))
    examples = load_examples(EXAMPLES, params.feature.mask)
    train_rows = examples[examples["split"] == "train"]
    batch = fixed_batches(train_rows, params.feature.classes, params.train.batch_size)[0]

    step = bench_step(params, base, pruned, batch, args.steps)
    grid = bench_grid(params, base, pruned, max(2, args.steps // 2))
    decoder = bench_decoder(params, base)
    g = params.gradient
    full = select_param_space(base.model, g)
    backbone = select_param_space(
        base.model, SimpleNamespace(**{**vars_of(g), "first_layer": None})
    )
    scores = torch.rand(full.full_size, generator=torch.Generator().manual_seed(0))
    scaling = []
    sizes = [(float(x), None) for x in args.scaling.split(",")] + [(1.0, "backbone")]
    for frac, whole in sizes:
        space = backbone if whole else full if frac >= 1.0 else full.with_kept(top_k(scores, frac))
        result = bench_step(params, base, space, batch, args.steps)
        scaling.append(
            {
                "theta": "all blocks" if whole else "gradient.first_layer..",
                "topk": frac,
                "n": space.size,
                "step_s": result["step_s"],
                "floor_s": result["floor_s"],
                "ratio": result["floor_ratio"],
                "repeats": result["repeats"],
                "phase_extract_s": result["phase_extract_s"],
                "phase_gradiend_update_s": result["phase_gradiend_update_s"],
                "peak_rss_gb": peak_rss_gb(),
                "peak_gpu_gb": peak_gpu_gb(),
            }
        )
        print(
            f"scaling topk={frac:<6} n={space.size:>11,d} step={result['step_s']:.3f}s"
            f" floor={result['floor_s']:.3f}s rss={peak_rss_gb():.2f} GB",
            flush=True,
        )

    summary = {
        "device": device_line(),
        "model": params.model.source,
        "batch_size": params.train.batch_size,
        "source_target": f"{params.train.source}/{params.train.target}",
        "objective": g.objective,
        **step,
        **grid,
        **decoder,
        "unpruned_floor_ratio": next(
            s["ratio"] for s in scaling if s["topk"] >= 1.0 and "all" not in s["theta"]
        ),
        "peak_rss_gb": peak_rss_gb(),
        "peak_gpu_gb": peak_gpu_gb(),
    }
    # benchmarks.reference and benchmarks.pipeline add their keys to the same file; keep the ones
    # this script does not measure (the reference side-by-side, the pipeline timings) until they
    # are measured again.
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary_file = RESULTS / "summary.json"
    previous = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.exists() else {}
    summary = {**previous, **summary}
    summary.setdefault("speedup_vs_reference_step", None)
    summary.setdefault("rss_ratio_vs_reference", None)
    write_json(summary_file, summary)
    write_json(RESULTS / "scaling.json", scaling)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([s["n"] for s in scaling], [s["step_s"] for s in scaling], "o-", label="full step")
    ax.plot(
        [s["n"] for s in scaling],
        [s["floor_s"] for s in scaling],
        "s--",
        label="floor (base passes)",
    )
    ax.set(
        xscale="log",
        xlabel="n (gradient vector size)",
        ylabel="seconds per step",
        title="GRADIEND step time vs n",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "scaling.png", dpi=100)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
