"""Stage pre_prune: gradient statistics over n_samples examples -> the kept coordinates of θ."""

import logging

from gradiend_core.data import load_examples
from gradiend_core.gradients import open_computer
from gradiend_core.io import atomic_dir, write_json
from gradiend_core.modeling import open_base, select_param_space
from gradiend_core.params import load_params
from gradiend_core.pruning import importance, stratified_sample, top_k
from gradiend_core.runtime import run_stage, seed_everything
from gradiend_core.workspace import EXAMPLES, METRICS, PRE_PRUNE

LOG = logging.getLogger("stages.pre_prune")


def main() -> None:
    params = load_params()
    g, p, f = params.gradient, params.pre_prune, params.feature
    seed_everything(p.seed)
    base = open_base(params)
    full = select_param_space(base.model, g.include, g.exclude, g.exclude_embeddings, g.first_layer, g.last_layer)
    LOG.info("gradient vector: %d parameters in %d tensors", full.full_size, len(full.names))
    examples = load_examples(EXAMPLES, f.mask)
    sample = stratified_sample(examples[examples["split"] == "train"], f.classes, p.n_samples, p.seed)
    scores = importance(open_computer(params, base, full), sample, p.source)
    pruned = full.with_kept(top_k(scores, p.topk))
    with atomic_dir(PRE_PRUNE) as tmp:
        pruned.save(tmp)
    kept = scores[pruned.kept]
    write_json(METRICS / "pre_prune.json", {
        "n_before": full.full_size, "n_after": pruned.size, "kept_fraction": pruned.size / full.full_size, "n_samples": len(sample), "source": p.source,
        "kept_per_tensor": pruned.share_per_tensor(), "importance_kept_min": float(kept.min()), "importance_max": float(scores.max()),
    })
    LOG.info("kept %d of %d coordinates (%.4f); written to %s", pruned.size, full.full_size, pruned.size / full.full_size, PRE_PRUNE)


if __name__ == "__main__":
    run_stage("pre_prune", main)
