"""Stage gradients: the base-model gradient vectors every seed and evaluation reuses."""

import logging

from gradiend_core.base_model import ParamSpace, open_base
from gradiend_core.data import load_examples, load_neutral, take_balanced
from gradiend_core.feature import ClassPair, identity_classes
from gradiend_core.gradients import compute_store, open_computer
from gradiend_core.params import load_params
from gradiend_core.runtime import run_stage, seed_everything
from gradiend_core.workspace import EXAMPLES, GRADIENT_STORE, NEUTRAL, PRE_PRUNE

LOG = logging.getLogger("stages.gradients")


def main() -> None:
    params = load_params()
    train, encoder, feature = params.train, params.evaluate_encoder, params.feature
    seed_everything(encoder.seed)
    base = open_base(params)
    computer = open_computer(params, base, ParamSpace.load(PRE_PRUNE))
    examples = load_examples(EXAMPLES, feature.mask)
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
    store.save(GRADIENT_STORE)
    LOG.info(
        "stored %d training batches, %d validation, %d test and %d neutral vectors of size %d "
        "in %s",
        len(store.train.classes),
        len(validation),
        len(test),
        len(neutral),
        computer.size,
        GRADIENT_STORE,
    )


if __name__ == "__main__":
    run_stage("gradients", main)
