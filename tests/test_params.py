"""params.yaml validation: the repository file parses; bad keys, types and ranges fail with one
line naming the key; a misspelt key or section gets a "did you mean" hint."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from gradiend_core.errors import GradiendError
from gradiend_core.params import SECTIONS, load_params, parse_params


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def with_value(raw: dict, section: str, key: str, value) -> dict:
    out = copy.deepcopy(raw)
    out[section][key] = value
    return out


def assert_one_line_error(exc: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(exc.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def test_repository_params_file_parses_with_its_values(raw):
    params = load_params(REPO / "params.yaml")
    assert set(params.sections) == set(raw) == set(SECTIONS)
    assert params.train.seeds == raw["train"]["seeds"]
    assert params.train.learning_rate == pytest.approx(float(raw["train"]["learning_rate"]))
    assert params.feature.classes == raw["feature"]["classes"]
    assert params.feature.targets == raw["feature"]["targets"]
    assert params.data.split == raw["data"]["split"]
    assert params.pre_prune.topk == raw["pre_prune"]["topk"]
    assert params.gradient.last_layer is None
    assert params.rewrite.target_class in params.feature.classes


def test_load_params_reports_a_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(GradiendError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n  - x: {", encoding="utf-8")
    with pytest.raises(GradiendError) as exc:
        load_params(bad)
    assert_one_line_error(exc, "not valid YAML")


def test_unknown_section_is_rejected(raw):
    broken = copy.deepcopy(raw)
    broken["trainning"] = {"seeds": [0]}
    with pytest.raises(GradiendError) as exc:
        parse_params(broken)
    assert_one_line_error(exc, "unknown section", "trainning")


def test_unknown_key_is_rejected_with_section_dot_key(raw):
    with pytest.raises(GradiendError) as exc:
        parse_params(with_value(raw, "train", "max_stepz", 10))
    assert_one_line_error(exc, "train.max_stepz", "unknown key")


def test_misspelt_key_suggests_the_close_known_key(raw):
    with pytest.raises(GradiendError) as exc:
        parse_params(with_value(raw, "train", "learning_rte", 0.001))
    assert_one_line_error(
        exc,
        "params.yaml: unknown key 'train.learning_rte'; did you mean 'learning_rate'? "
        "known keys of 'train': seeds, source, target, learning_rate,",
        "convergence_mean_threshold.",
    )


def test_misspelt_key_suggests_within_its_own_section(raw):
    with pytest.raises(GradiendError) as exc:
        parse_params(with_value(raw, "data", "min_left_context_word", 5))
    assert_one_line_error(
        exc, "unknown key 'data.min_left_context_word'; did you mean 'min_left_context_words'?"
    )


def test_unrelated_unknown_key_gets_no_suggestion(raw):
    with pytest.raises(GradiendError) as exc:
        parse_params(with_value(raw, "train", "zzz", 1))
    message = assert_one_line_error(exc, "unknown key 'train.zzz'; known keys of 'train': seeds,")
    assert "did you mean" not in message


def test_misspelt_section_suggests_the_close_known_section(raw):
    broken = copy.deepcopy(raw)
    broken["evaluate_decodr"] = broken.pop("evaluate_decoder")
    with pytest.raises(GradiendError) as exc:
        parse_params(broken)
    assert_one_line_error(
        exc,
        "params.yaml: unknown section 'evaluate_decodr'; did you mean 'evaluate_decoder'? "
        "known sections: runtime, model, feature,",
    )


def test_unrelated_unknown_section_gets_no_suggestion(raw):
    broken = copy.deepcopy(raw)
    broken["qqq"] = {}
    with pytest.raises(GradiendError) as exc:
        parse_params(broken)
    message = assert_one_line_error(exc, "unknown section 'qqq'; known sections: runtime,")
    assert "did you mean" not in message


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("train", "max_steps", "ten"),
        ("train", "max_steps", 10.5),
        ("train", "max_steps", True),  # bools are not integers here
        ("train", "normalize_sign", "yes"),
        ("train", "source", "both"),  # not one of the literals
        ("train", "seeds", [0, "one"]),
        ("data", "split", {"train": "most", "validation": 0.1, "test": 0.1}),
        ("gradient", "first_layer", "20"),
        ("feature", "classes", "he, she"),
        ("runtime", "dtype", "float64"),
        ("train", "learning_rate", float("nan")),
    ],
)
def test_wrong_type_names_the_key(raw, section, key, value):
    with pytest.raises(GradiendError) as exc:
        parse_params(with_value(raw, section, key, value))
    assert_one_line_error(exc, f"'{section}.{key}'", "expected")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("pre_prune", "topk", 0),
        ("pre_prune", "topk", 1.5),
        ("pre_prune", "topk", 0.0),
        ("pre_prune", "topk", -3),
        ("pre_prune", "n_samples", 1),
        ("train", "seeds", []),
        ("train", "seeds", [1, 1]),
        ("train", "learning_rate", 0),
        ("train", "learning_rate", -1),
        ("train", "learning_rate", -0.001),
        ("train", "convergence_threshold", 1.5),
        ("train", "weight_decay", -0.01),
        ("train", "batch_size", 0),
        ("data", "split", {"train": 0.8, "validation": 0.1, "test": 0.2}),
        ("data", "split", {"train": 0.9, "validation": 0.1, "test": 0.0}),
        ("data", "split", {"train": 0.8, "validation": 0.2}),
        ("gradient", "max_length", 3),
        ("runtime", "device", "tpu"),
        ("runtime", "device_map", "everywhere"),
        ("evaluate_decoder", "feature_factors", [1.0, 0.0]),
        ("evaluate_decoder", "learning_rates", []),
        ("feature", "classes", ["he", "he"]),
        ("model", "source", "  "),
        ("data", "encoding", "utf-9"),  # no such codec
        ("data", "encoding", "hex"),  # a bytes-to-bytes codec, not a text encoding
    ],
)
def test_out_of_range_names_the_key(raw, section, key, value):
    with pytest.raises(GradiendError) as exc:
        parse_params(with_value(raw, section, key, value))
    assert_one_line_error(exc, f"'{section}.{key}'", "out of range")


@pytest.mark.parametrize(
    ("topk", "expected"), [(1, 1), (500, 500), (1.0, 1.0), (0.25, 0.25), ("1e-3", 0.001)]
)
def test_valid_topk_values_are_accepted(raw, topk, expected):
    assert parse_params(with_value(raw, "pre_prune", "topk", topk)).pre_prune.topk == expected


def test_numeric_string_is_coerced_where_a_float_is_expected(raw):
    params = parse_params(with_value(raw, "train", "learning_rate", "1e-4"))
    assert params.train.learning_rate == pytest.approx(1e-4)
    assert isinstance(params.train.learning_rate, float)


def test_absent_key_raises_on_access_naming_the_key(raw):
    broken = copy.deepcopy(raw)
    del broken["train"]["learning_rate"]
    params = parse_params(broken)  # parsing succeeds: a stage may only declare some params
    assert params.train.max_steps == raw["train"]["max_steps"]
    with pytest.raises(GradiendError) as exc:
        _ = params.train.learning_rate
    assert_one_line_error(exc, "'train.learning_rate'", "missing")


def test_absent_section_raises_on_access_naming_the_section(raw):
    partial = {"train": copy.deepcopy(raw["train"])}
    params = parse_params(partial)
    assert params.train.eval_steps == raw["train"]["eval_steps"]
    with pytest.raises(GradiendError) as exc:
        _ = params.rewrite
    assert_one_line_error(exc, "'rewrite'", "missing")


def test_section_that_is_not_a_mapping_is_rejected(raw):
    broken = copy.deepcopy(raw)
    broken["train"] = [1, 2]
    with pytest.raises(GradiendError) as exc:
        parse_params(broken)
    assert_one_line_error(exc, "'train'")


def test_rewrite_target_class_must_be_a_feature_class(raw):
    with pytest.raises(GradiendError) as exc:
        parse_params(with_value(raw, "rewrite", "target_class", "they"))
    assert_one_line_error(exc, "'rewrite.target_class'", "they")
    # The other feature class is fine.
    other = raw["feature"]["classes"][1]
    params = parse_params(with_value(raw, "rewrite", "target_class", other))
    assert params.rewrite.target_class == other


def test_cross_checks_on_targets_and_word_counts(raw):
    with pytest.raises(GradiendError) as exc:
        parse_params(with_value(raw, "feature", "targets", {"he": ["he"], "they": ["they"]}))
    assert_one_line_error(exc, "'feature.targets'")
    with pytest.raises(GradiendError) as exc:
        parse_params(
            with_value(raw, "feature", "targets", {"he": ["he", "one"], "she": ["she", "ONE"]})
        )
    assert_one_line_error(exc, "'feature.targets'")
    with pytest.raises(GradiendError) as exc:
        parse_params(with_value(raw, "data", "min_words", raw["data"]["max_words"] + 1))
    assert_one_line_error(exc, "'data.min_words'", "'data.max_words'")
