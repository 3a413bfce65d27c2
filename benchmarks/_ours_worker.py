"""Our side of the side-by-side benchmark (run by benchmarks/reference.py in its own process).

    python -m benchmarks._ours_worker WORKLOAD.json

Same workload as benchmarks/_reference_worker.py, through gradiend_core's own code path (the one the
stages use), with the objective taken from the workload (``clm_next_token``) by constructing
``GradientComputer`` directly rather than through params.yaml. Prints ``GRADIEND_BENCH_RESULT
{json}``.

* training step: the round-robin batch's gradient vectors computed on the fly (``computer.vectors``,
  as the reference does each step; the pipeline's training reads them from the gradients stage
  instead) and training's GRADIEND update (``Gradiend.fused_update``: the closed-form gradients and
  AdamW); the first ``warmup`` steps are dropped, the median of the rest is reported;
* encoder evaluation: the test rows' and neutral texts' vectors (``row_vectors``,
  ``neutral_vectors``: what the gradients stage stores) encoded with ``encode_rows`` (what the
  evaluate_encoder stage does), wall time / rows;
* decoder grid: ``build_probe_set`` + ``build_lms_set`` + ``decoder_grid`` (what the
evaluate_decoder
  stage does), wall time / measured points (grid points + the base point).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from types import SimpleNamespace

import pandas as pd
import torch

from gradiend_core.base_model import load_base_model, select_param_space
from gradiend_core.data import load_examples, take_balanced
from gradiend_core.decoder_eval import build_lms_set, build_probe_set, decoder_grid
from gradiend_core.encoder_eval import encode_rows
from gradiend_core.feature import ClassPair
from gradiend_core.gradiend import Gradiend, GradiendAdamW
from gradiend_core.gradients import (
    GradientComputer,
    fixed_batches,
    needed_kinds,
    neutral_vectors,
    row_vectors,
)
from gradiend_core.pruning import importance, stratified_sample, top_k
from gradiend_core.runtime import configure_torch, seed_everything
from gradiend_core.training import ADAM_EPS, batch_schedule


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as fh:
        w = json.load(fh)
    configure_torch(int(w["threads"]), "cpu")
    seed_everything(int(w["seed"]))
    classes, mask, source, target = list(w["classes"]), w["mask"], w["source"], w["target"]
    t0 = time.perf_counter()
    base = load_base_model(w["model_dir"], "cpu", "float32")
    load_s = time.perf_counter() - t0
    g = w["selection"]
    full = select_param_space(base.model, SimpleNamespace(**g))
    if list(full.names) != list(w["param_names"]) or full.full_size != int(w["n_full"]):
        raise SystemExit(
            "ours worker: the parameter set differs from the workload's param_names; rerun"
            " benchmarks/reference.py."
        )
    examples = load_examples(w["examples"], mask)
    train_rows = examples[examples["split"] == "train"]

    pp = w["pre_prune"]
    t0 = time.perf_counter()
    space = full
    if pp["enabled"]:
        sample = stratified_sample(train_rows, classes, int(pp["n_samples"]), int(pp["seed"]))
        scores = importance(
            GradientComputer(base, full, w["objective"], mask, int(w["max_length"])),
            sample,
            pp["source"],
        )
        space = full.with_kept(top_k(scores, pp["topk"]))
    pre_prune_s = time.perf_counter() - t0

    computer = GradientComputer(base, space, w["objective"], mask, int(w["max_length"]))
    kinds = needed_kinds(source, target)
    model = Gradiend.initialised(space.size, int(w["seed"])).to(base.device)
    optimizer = GradiendAdamW(
        model, lr=float(w["learning_rate"]), weight_decay=float(w["weight_decay"]), eps=ADAM_EPS
    )
    batches = fixed_batches(train_rows, classes, int(w["batch_size"]))
    n_steps = int(w["warmup"]) + int(w["steps"])
    order = batch_schedule(
        [str(b["factual_class"].iloc[0]) for b in batches],
        ClassPair.of(classes),
        n_steps,
        int(w["seed"]),
    )
    times, losses = [], []
    for i in order:
        batch = batches[i]
        start = time.perf_counter()
        vec = computer.vectors(
            batch["masked"].tolist(),
            batch["factual"].tolist(),
            batch["alternative"].tolist(),
            kinds,
        )
        losses.append(model.fused_update(vec[source], vec[target], optimizer))
        times.append(time.perf_counter() - start)
    step_times = times[int(w["warmup"]) :]
    rss_after_train = peak_rss_gb()

    enc, dec = w["encoder"], w["decoder"]
    neutral = pd.read_json(w["neutral_texts"], lines=True, dtype=False)["text"].tolist()
    t0 = time.perf_counter()
    test = take_balanced(examples, "test", classes, int(enc["max_per_class"]))
    frame = pd.concat(
        [
            encode_rows(
                model, row_vectors(computer, test, source, "test"), ClassPair.of(classes), source
            ),
            encode_rows(
                model,
                neutral_vectors(computer, neutral[: int(enc["neutral_size"])], int(w["seed"])),
                ClassPair.of(classes),
                source,
            ),
        ],
        ignore_index=True,
    )
    encoder_s = time.perf_counter() - t0
    rows_by_type = {str(k): int(v) for k, v in frame["type"].value_counts().items()}

    t0 = time.perf_counter()
    rows = take_balanced(examples, "test", classes, int(dec["max_per_class"]))
    probe = build_probe_set(base, rows, classes, w["targets"], mask, int(w["max_length"]))
    lms_set = build_lms_set(base, neutral[: int(dec["neutral_size"])], int(w["max_length"]))
    _, points = decoder_grid(
        base,
        model,
        space,
        probe,
        lms_set,
        SimpleNamespace(
            feature_factors=dec["feature_factors"],
            learning_rates=dec["learning_rates"],
            batch_size=int(dec["batch_size"]),
            lms_ratio=float(dec.get("lms_ratio", 0.99)),
            search="grid",  # the reference measures every point
        ),
    )
    decoder_s = time.perf_counter() - t0
    decoder_points = len(points) + 1  # + the base point

    result = {
        "side": "ours",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "torch_threads": torch.get_num_threads(),
        "load_s": load_s,
        "pre_prune_s": pre_prune_s,
        "step_s": statistics.median(step_times),
        "step_times_s": step_times,
        "losses": losses,
        "n": space.size,
        "n_full": full.full_size,
        "param_tensors": len(space.names),
        "encoder_eval_s": encoder_s,
        "encoder_rows": int(len(frame)),
        "encoder_rows_by_type": rows_by_type,
        "encoder_example_s": encoder_s / max(len(frame), 1),
        "decoder_eval_s": decoder_s,
        "decoder_points": decoder_points,
        "decoder_point_s": decoder_s / decoder_points,
        "decoder_test_rows": len(rows),
        "decoder_lms_texts": len(lms_set.sequences),
        "peak_rss_gb_after_train": rss_after_train,
        "peak_rss_gb": peak_rss_gb(),
        "pid": os.getpid(),
    }
    print("GRADIEND_BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
