"""Reference side of the side-by-side benchmark (run by benchmarks/reference.py, never imported).

Runs inside benchmarks/work/refvenv with the reference package ``gradiend==0.2.3`` and uses only its
public API (TextPredictionTrainer, TrainingArguments, PrePruneConfig, TrainingCallback); it imports
nothing from this repository, so it can run in that separate venv:

    benchmarks/work/refvenv/bin/python benchmarks/_reference_worker.py WORKLOAD.json

The workload JSON (written by benchmarks/reference.py) fixes model, data files, parameter names,
batch size, source/target, pre-pruning, step counts and evaluation sizes. Prints one line
``GRADIEND_BENCH_RESULT {json}`` at the end.

Timing:

* training step: a TrainingCallback stamps the end of every step; step k's time is the gap between
  the ends of steps k-1 and k, i.e. the base-gradient extraction done by the reference's data loader
  plus the GRADIEND forward/backward/AdamW and the callbacks. In-training evaluation is off
  (``do_eval=False``) and the first ``warmup`` steps are dropped (step 1 also writes the first
  "best" checkpoint), so the timed steps contain no evaluation and no checkpoint write;
* encoder evaluation: wall time of ``trainer.evaluate_encoder(...)`` / number of encoded rows;
* decoder grid: wall time of ``trainer.evaluate_decoder(...)`` / number of measured points
  (grid points + the base model), each a rewrite (deep copy) + probabilities + LMS.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as fh:
        w = json.load(fh)
    import pandas as pd
    import torch

    torch.set_num_threads(int(w["threads"]))
    t_import = time.perf_counter()
    import gradiend
    from gradiend import PrePruneConfig, TextPredictionTrainer, TrainingArguments
    from gradiend.trainer import TrainingCallback

    import_s = time.perf_counter() - t_import

    class StepTimer(TrainingCallback):
        """Stamps the end of each step; keeps what the GRADIEND looks like while training."""

        def __init__(self) -> None:
            self.ends: dict[int, float] = {}
            self.losses: dict[int, float] = {}
            self.input_dim: int | None = None
            self.param_names: list[str] | None = None
            self.unpruned: int | None = None

        def on_step_end(self, step, loss, model, config, **kwargs):  # noqa: ANN001 - reference callback signature
            if step > 0:
                self.ends[step] = time.perf_counter()
                self.losses[step] = float(loss)
            if self.input_dim is None:
                g = model.gradiend
                self.input_dim = int(g.input_dim)
                param_map = getattr(g, "param_map", None) or {}
                self.param_names = list(param_map)
                self.unpruned = (
                    int(sum(int(torch.Size(spec["shape"]).numel()) for spec in param_map.values()))
                    if param_map
                    else None
                )
            return None

    examples = pd.read_json(w["reference_examples"], lines=True, dtype=False)
    neutral = pd.read_json(w["neutral_texts"], lines=True, dtype=False)
    enc, dec, pp = w["encoder"], w["decoder"], w["pre_prune"]
    pre_prune = None
    if pp["enabled"]:
        pre_prune = PrePruneConfig(
            n_samples=int(pp["n_samples"]),
            topk=pp["topk"],
            source=pp["source"],
            seed=int(pp["seed"]),
        )
    steps_total = int(w["warmup"]) + int(w["steps"])
    args = TrainingArguments(
        experiment_dir=w["reference_experiment_dir"],
        use_cache=False,
        source=w["source"],
        target=w["target"],
        train_batch_size=int(w["batch_size"]),
        gradiend_batch_size=1,
        learning_rate=float(w["learning_rate"]),
        weight_decay=float(w["weight_decay"]),
        max_steps=steps_total,
        num_train_epochs=1,
        do_eval=False,
        eval_strategy="no",
        max_seeds=1,
        min_convergent_seeds=1,
        prediction_objective=w["objective"],
        params=list(w["param_names"]),
        pre_prune_config=pre_prune,
        seed=int(w["seed"]),
        eval_batch_size=int(dec["batch_size"]),
        encoder_eval_max_size=int(enc["max_size"]),
        decoder_eval_max_size_training_like=int(dec["max_per_class"]),
        decoder_eval_max_size_neutral=int(dec["neutral_size"]),
        torch_dtype=torch.float32,
    )
    trainer = TextPredictionTrainer(
        model=w["model_dir"],
        data=examples,
        target_classes=list(w["classes"]),
        split_col="split",
        masked_col="masked",
        label_col="label",
        label_class_col="label_class",
        alternative_col="alternative",
        alternative_class_col="alternative_class",
        eval_neutral_data=neutral.head(int(enc["neutral_size"])).reset_index(drop=True),
        training_args=args,
    )

    timer = StepTimer()
    t0 = time.perf_counter()
    trainer.train(callbacks=[timer])
    train_total_s = time.perf_counter() - t0
    rss_after_train = peak_rss_gb()
    ordered = sorted(timer.ends)
    step_times = [
        timer.ends[s] - timer.ends[s - 1]
        for s in ordered
        if s - 1 in timer.ends and s > int(w["warmup"])
    ]
    if len(step_times) < int(w["steps"]):
        raise SystemExit(
            f"reference worker: only {len(step_times)} timed steps were recorded (steps ended:"
            f" {ordered}); expected {w['steps']}."
        )
    if timer.unpruned is not None and timer.unpruned != int(w["n_full"]):
        raise SystemExit(
            f"reference worker: the reference's parameter set has {timer.unpruned} coordinates,"
            f" ours {w['n_full']}; the 'params' list did not select the same tensors."
        )

    t0 = time.perf_counter()
    enc_result = trainer.evaluate_encoder(
        split="test",
        max_size=int(enc["max_size"]),
        neutral_data_df=neutral.head(int(enc["neutral_size"])).reset_index(drop=True),
        use_cache=False,
        return_df=True,
        plot=False,
    )
    encoder_s = time.perf_counter() - t0
    encoder_df = enc_result["encoder_df"]
    encoder_rows = int(len(encoder_df))
    rows_by_type = (
        {str(k): int(v) for k, v in encoder_df["type"].value_counts().items()}
        if "type" in encoder_df.columns
        else {}
    )

    t0 = time.perf_counter()
    dec_result = trainer.evaluate_decoder(
        lrs=[float(x) for x in dec["learning_rates"]],
        feature_factors=[float(x) for x in dec["feature_factors"]],
        use_cache=False,
        split="test",
        max_size_training_like=int(dec["max_per_class"]),
        max_size_neutral=int(dec["neutral_size"]),
        eval_batch_size=int(dec["batch_size"]),
        neutral_df=neutral.head(int(dec["neutral_size"])).reset_index(drop=True),
        plot=False,
    )
    decoder_s = time.perf_counter() - t0
    grid = dec_result.get("grid", {})
    decoder_points = int(len(grid))

    result = {
        "side": "reference",
        "package": f"gradiend {gradiend.__version__}",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "torch_threads": torch.get_num_threads(),
        "import_s": import_s,
        "train_call_s": train_total_s,
        "step_s": statistics.median(step_times),
        "step_times_s": step_times,
        "losses": [timer.losses[s] for s in ordered],
        "n": timer.input_dim,
        "n_full": timer.unpruned,
        "param_tensors": len(timer.param_names or []),
        "encoder_eval_s": encoder_s,
        "encoder_rows": encoder_rows,
        "encoder_rows_by_type": rows_by_type,
        "encoder_example_s": encoder_s / max(encoder_rows, 1),
        "decoder_eval_s": decoder_s,
        "decoder_points": decoder_points,
        "decoder_point_s": decoder_s / max(decoder_points, 1),
        "peak_rss_gb_after_train": rss_after_train,
        "peak_rss_gb": peak_rss_gb(),
        "pid": os.getpid(),
    }
    print("GRADIEND_BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
