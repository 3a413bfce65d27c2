"""Stage mlm_head: train the auxiliary MLM head on the frozen decoder (or record that none is used)."""

import logging

from gradiend_core.data import load_examples
from gradiend_core.errors import GradiendError
from gradiend_core.io import atomic_dir, write_json
from gradiend_core.mlm_head import fit_mlm_head, write_unused_record
from gradiend_core.modeling import open_base
from gradiend_core.params import load_params
from gradiend_core.runtime import run_stage, seed_everything
from gradiend_core.workspace import EXAMPLES, METRICS, MLM_HEAD

LOG = logging.getLogger("stages.mlm_head")


def main() -> None:
    params = load_params()
    g, h, f = params.gradient, params.mlm_head, params.feature
    if g.objective != "clm_mlm_head":
        with atomic_dir(MLM_HEAD) as tmp:
            write_unused_record(tmp, g.objective)
        write_json(METRICS / "mlm_head.json", {"used": False, "objective": g.objective})
        LOG.info("objective %s uses no MLM head; wrote a record to %s", g.objective, MLM_HEAD)
        return
    seed_everything(h.seed)
    base = open_base(params)
    if base.kind != "causal":
        raise GradiendError("params.yaml: 'gradient.objective' = 'clm_mlm_head' needs a causal (decoder-only) model; use 'mlm' for masked LMs.")
    examples = load_examples(EXAMPLES, f.mask)
    head, metrics = fit_mlm_head(base.model, base.tokenizer, examples, f.classes, f.targets, f.mask, max_length=g.max_length, pooling_length=g.pooling_length,
                                 epochs=h.epochs, batch_size=h.batch_size, learning_rate=h.learning_rate, weight_decay=h.weight_decay, max_per_class=h.max_per_class, seed=h.seed)
    with atomic_dir(MLM_HEAD) as tmp:
        head.save(tmp, {})
    write_json(METRICS / "mlm_head.json", metrics)
    LOG.info("MLM head: train accuracy %.3f, validation accuracy %.3f; saved to %s", metrics["train_accuracy"], metrics["validation_accuracy"], MLM_HEAD)


if __name__ == "__main__":
    run_stage("mlm_head", main)
