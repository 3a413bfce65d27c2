"""Stage mlm_head: train the auxiliary MLM head on the frozen decoder (or record that none is
used)."""

import logging

from gradiend_core.base_model import open_base
from gradiend_core.data import load_examples
from gradiend_core.io import atomic_dir, write_csv, write_json
from gradiend_core.lower_states import load_row_states
from gradiend_core.mlm_head import fit_mlm_head, require_causal, write_unused_record
from gradiend_core.params import load_params
from gradiend_core.runtime import run_stage, seed_everything
from gradiend_core.workspace import EXAMPLES, LOWER_STATES, METRICS, MLM_HEAD, PLOTS

LOG = logging.getLogger("stages.mlm_head")


def main() -> None:
    params = load_params()
    objective = params.gradient.objective
    if objective != "clm_mlm_head":
        with atomic_dir(MLM_HEAD) as tmp:
            write_unused_record(tmp, objective)
        write_csv(PLOTS / "mlm_head" / "loss.csv", {"epoch": [], "loss": []})
        write_json(METRICS / "mlm_head.json", {"used": False, "objective": objective})
        LOG.info("objective %s uses no MLM head; wrote a record to %s", objective, MLM_HEAD)
        return
    seed_everything(params.mlm_head.seed)
    base = open_base(params)
    require_causal(base.kind)
    examples = load_examples(EXAMPLES, params.feature.mask)
    states = load_row_states(LOWER_STATES)
    fit = fit_mlm_head(
        base.model,
        base.tokenizer,
        examples,
        params.feature,
        params.gradient,
        params.mlm_head,
        states,
    )
    with atomic_dir(MLM_HEAD) as tmp:
        fit.head.save(tmp, {})
    losses = {"epoch": list(range(1, len(fit.epoch_losses) + 1)), "loss": fit.epoch_losses}
    write_csv(PLOTS / "mlm_head" / "loss.csv", losses)
    write_json(METRICS / "mlm_head.json", fit.metrics)
    LOG.info(
        "MLM head: train accuracy %.3f, validation accuracy %.3f; saved to %s",
        fit.metrics["train_accuracy"],
        fit.metrics["validation_accuracy"],
        MLM_HEAD,
    )


if __name__ == "__main__":
    run_stage("mlm_head", main)
