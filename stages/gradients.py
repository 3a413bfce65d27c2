"""Stage gradients@<pair>: the base-model gradient vectors every seed and evaluation of one pair
reuses."""

import logging

from gradiend_core.base_model import ParamSpace, open_base
from gradiend_core.data import for_pair, load_examples, load_neutral, take_balanced
from gradiend_core.feature import ClassPair, feature_for_pair, identity_classes
from gradiend_core.gradients import compute_store, open_computer
from gradiend_core.params import load_params
from gradiend_core.runtime import run_stage, seed_everything
from gradiend_core.workspace import EXAMPLES, NEUTRAL, gradient_store, pre_prune_dir
from stages import stage_args

LOG = logging.getLogger("stages.gradients")


def main() -> None:
    name = stage_args(__doc__).pair
    params = load_params()
    train, encoder = params.train, params.evaluate_encoder
    feature = feature_for_pair(params.feature, name)
    seed_everything(encoder.seed)
    base = open_base(params)
    computer = open_computer(params, base, ParamSpace.load(pre_prune_dir(name)))
    examples = for_pair(load_examples(EXAMPLES, feature.mask), feature, params.data.seed)
    pair, identity = ClassPair.of_feature(feature), identity_classes(feature)
    classes = [*pair.classes, *identity]
    validation = take_balanced(examples, "validation", classes, train.eval_max_per_class)
    test = take_balanced(examples, "test", classes, encoder.max_per_class)
    texts = load_neutral(NEUTRAL)
    neutral = texts[: encoder.neutral_size]
    validation_neutral = texts[
        encoder.neutral_size : encoder.neutral_size + train.eval_neutral_size
    ]
    store = compute_store(
        computer,
        examples,
        validation,
        test,
        neutral,
        pair,
        train,
        encoder.seed,
        identity,
        validation_neutral,
    )
    store.save(gradient_store(name))
    LOG.info(
        "stored %d training batches, %d validation, %d test and %d neutral vectors of size %d "
        "in %s",
        len(store.train.classes),
        len(validation),
        len(test),
        len(neutral),
        computer.size,
        gradient_store(name),
    )


if __name__ == "__main__":
    run_stage("gradients", main)
