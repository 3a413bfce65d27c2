"""Features beyond one pronoun pair (docs/method.md §1.1, §1.3, §1.7, §6, §7.4): N classes and the
contrasted pair, identity rows, per-word counterfactuals, contractions, prepared datasets in each
layout, extra neutral sources and the LMS on filled test rows."""

from __future__ import annotations

import copy
import random
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, gpt2_pieces
from conftest import data_settings as shared_data_settings
from test_gradients import word_ids
from torch import nn

from gradiend_core.data import (
    EXAMPLE_COLUMNS,
    build_dataset,
    for_pair,
    lms_text,
    read_sources,
    rows_per_class_and_split,
)
from gradiend_core.decoder_eval import build_lms_set, language_modelling_score
from gradiend_core.encoder_eval import encoder_metrics
from gradiend_core.errors import GradiendError
from gradiend_core.feature import (
    ClassPair,
    alternative_word,
    feature_for_pair,
    identity_classes,
    other_classes,
)
from gradiend_core.params import parse_params

MASK = "[MASK]"
SPLIT = {"train": 0.6, "validation": 0.2, "test": 0.2}
PRONOUNS = {"he": ["he", "him", "his"], "she": ["she", "her", "her"]}


def feature(classes, targets, pair=None, identity=False) -> SimpleNamespace:
    return SimpleNamespace(
        classes=classes,
        pairs=None if pair is None else ["-".join(pair)],
        targets=targets,
        mask=MASK,
        identity_for_other_classes=identity,
    )


HE_SHE_THEY = feature(["he", "she", "they"], {"he": ["he"], "she": ["she"], "they": ["they"]})


def data_settings(**overrides) -> SimpleNamespace:
    return shared_data_settings(SPLIT, **overrides)


def records(examples: pd.DataFrame) -> dict[str, tuple]:
    """text -> (masked, factual_class, alternative_class, factual, alternative, transition)."""
    cols = ["masked", "factual_class", "alternative_class", "factual", "alternative", "transition"]
    return {r["text"]: tuple(r[c] for c in cols) for r in examples.to_dict("records")}


def numbered(template: str, n: int) -> list[str]:
    return [template.format(w) for w in ["one", "two", "three", "four", "five", "six"][:n]]


# ---- params: classes, pair, targets --------------------------------------------------------------


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def with_feature(raw: dict, **values) -> dict:
    out = copy.deepcopy(raw)
    out["feature"].update(values)
    return out


THREE = {
    "classes": ["he", "she", "they"],
    "targets": {"he": ["he"], "she": ["she"], "they": ["they"]},
}


def test_the_default_pair_is_the_first_two_classes_and_the_rest_are_other_classes(raw):
    assert raw["feature"]["pairs"] == ["he-she"]  # today's params.yaml: one pair
    two = parse_params(raw).feature
    assert ClassPair.of_feature(two) == ClassPair("he", "she") and other_classes(two) == []
    params = parse_params(with_feature(raw, **THREE))
    assert ClassPair.of_feature(params.feature) == ClassPair("he", "she")
    assert other_classes(params.feature) == ["they"] and identity_classes(params.feature) == []
    on = parse_params(with_feature(raw, **THREE, identity_for_other_classes=True)).feature
    assert identity_classes(on) == ["they"]
    chosen = parse_params(with_feature(raw, **THREE, pairs=["they-he"])).feature
    assert ClassPair.of_feature(chosen) == ClassPair("they", "he")  # pair[0] encodes to +1
    assert other_classes(chosen) == ["she"]


@pytest.mark.parametrize(
    ("values", "needles"),
    [
        ({**THREE, "pairs": ["he-it"]}, ["'feature.pairs'", "'it'", "not in feature.classes"]),
        ({**THREE, "pairs": ["he-he"]}, ["'feature.pairs'", "out of range"]),
        ({**THREE, "pairs": ["he-she", "he-she"]}, ["'feature.pairs'", "out of range"]),
        ({**THREE, "pairs": ["he_she"]}, ["'feature.pairs'", "out of range"]),
        (
            {"classes": ["he", "she-x"], "targets": {"he": ["he"], "she-x": ["she"]}},
            ["'she-x'", "contains '-'", "use '_'"],
        ),
        ({**THREE, "pair": ["he", "she"]}, ["unknown key 'feature.pair'", "'pairs'"]),
        ({"classes": ["he"], "targets": {"he": ["he"]}}, ["'feature.classes'", "out of range"]),
        (
            {"targets": {"he": ["he", "him", "his"], "she": ["she", "her"]}},
            ["'feature.targets'", "3 words for 'he' but 2 for 'she'", "same length"],
        ),
        (
            {"targets": {"he": ["he", "him"], "she": ["she", "Him"]}},
            ["'feature.targets'", "'Him'", "'he' and 'she'"],
        ),
    ],
)
def test_bad_classes_pairs_and_targets_are_one_line_errors(raw, values, needles):
    with pytest.raises(GradiendError) as exc:
        parse_params(with_feature(raw, **values))
    message = str(exc.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_a_word_may_repeat_within_a_class_and_other_classes_need_not_align(raw):
    targets = {**PRONOUNS, "they": ["they"]}
    params = parse_params(with_feature(raw, classes=["he", "she", "they"], targets=targets))
    assert params.feature.targets["she"] == ["she", "her", "her"]


def test_rewrite_target_class_and_male_class_must_be_classes_of_the_feature(raw):
    # A pair of a suite without the target class rewrites its first class (stage rewrite);
    # a name that is no class at all is a typo.
    moved = with_feature(raw, **THREE, pairs=["she-they"])
    assert parse_params(moved).rewrite.target_class == "he"
    moved["rewrite"]["target_class"] = "it"
    with pytest.raises(GradiendError) as exc:
        parse_params(moved)
    assert "'rewrite.target_class' = 'it'" in str(exc.value) and "feature.classes" in str(exc.value)
    moved["rewrite"]["target_class"] = "he"
    moved["probe_bias"]["male_class"] = "man"
    with pytest.raises(GradiendError, match=r"'probe_bias.male_class' = 'man'"):
        parse_params(moved)


def test_each_pair_of_a_suite_sees_the_feature_as_its_own_pair(raw):
    suite = parse_params(with_feature(raw, **THREE, pairs=["he-she", "he-they", "she-they"]))
    f = suite.feature
    assert ClassPair.of_feature(f) == ClassPair("he", "she")  # the first pair heads the suite
    view = feature_for_pair(f, "she-they")
    assert ClassPair.of_feature(view) == ClassPair("she", "they")
    assert ClassPair("she", "they").name == "she-they"
    assert other_classes(view) == ["he"] and view.pairs == ["she-they"]
    assert view.targets == f.targets and f.pairs == ["he-she", "he-they", "she-they"]


def test_for_pair_rederives_alternatives_as_if_the_data_were_built_for_that_pair():
    docs = [*numbered("Then {} said he left.", 3), *numbered("Then {} said she left.", 3)]
    docs += [*numbered("Then {} said They left.", 3), *numbered("Then {} said him.", 3)]
    targets = {"he": ["he", "him"], "she": ["she", "her"], "they": ["they", "them"]}
    first = feature(["he", "she", "they"], targets, pair=["he", "she"])
    built = build_dataset(docs, first, data_settings()).examples
    assert for_pair(built, first, 0) is built  # the data stage's own pair: nothing to do
    for a, b in (("she", "they"), ("they", "he")):
        other = feature(["he", "she", "they"], targets, pair=[a, b])
        direct = build_dataset(docs, other, data_settings()).examples
        pd.testing.assert_frame_equal(for_pair(built, other, 0), direct)
    # by hand: 'They' (she-they) -> 'She' in its casing; 'him' outside the pair -> itself
    rows = records(for_pair(built, feature(["he", "she", "they"], targets, ["she", "they"]), 0))
    assert rows["Then one said They left."][2:] == ("she", "They", "She", "they->she")
    assert rows["Then one said him."][2:] == ("he", "him", "him", "he->he")


# ---- classes outside the pair --------------------------------------------------------------------


@pytest.mark.parametrize("source", ["factual", "alternative", "diff"])
def test_a_class_outside_the_pair_has_label_zero_and_is_its_own_group(source):
    pair = ClassPair("he", "she")
    assert "they" not in pair and "he" in pair
    assert pair.direction("they") == 0 and pair.label("they", source) == 0
    assert pair.source_class("they", source) == "they"
    # The pair keeps its rules: source alternative feeds the other class's gradient, label negated.
    assert pair.label("he", source) == (-1 if source == "alternative" else 1)
    with pytest.raises(KeyError):
        pair.strengthen_factor("they", source)


# ---- per-word counterfactuals --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "word", "expected"),
    [
        ("he", "he", "she"),
        ("he", "him", "her"),
        ("he", "his", "her"),
        ("he", "His", "Her"),
        ("she", "her", "him"),  # 'her' is listed twice: its first position (1) pairs with 'him'
        ("she", "HER", "HIM"),
        ("she", "She", "He"),
        ("they", "They", "They"),  # outside the pair: an identity row
    ],
)
def test_alternative_is_the_word_at_the_same_position_in_the_factual_casing(cls, word, expected):
    targets = {**PRONOUNS, "they": ["they"]}
    assert alternative_word(targets, ClassPair("he", "she"), cls, word) == expected


def test_rows_pair_each_word_with_its_counterpart():
    f = feature(["he", "she"], PRONOUNS)
    he = {
        "Then I told him that it was late.": ("Then I told [MASK] that it was late.", "him", "her"),
        "Yes, I gave him his hat.": ("Yes, I gave [MASK] [MASK] hat.", "him", "her"),
        "Later His car was red.": ("Later [MASK] car was red.", "His", "Her"),
    }
    she = {
        "Yesterday I saw her dog run.": ("Yesterday I saw [MASK] dog run.", "her", "him"),
        "Then SHE left.": ("Then [MASK] left.", "SHE", "HE"),
        "Then she took her coat.": ("Then [MASK] took [MASK] coat.", "she", "he"),
    }
    docs = [*he, *she, "I gave her his hat.", "It rained."]  # both classes: dropped
    got = records(build_dataset(docs, f, data_settings()).examples)
    expected = {t: (m, "he", "she", a, b, "he->she") for t, (m, a, b) in he.items()}
    expected.update({t: (m, "she", "he", a, b, "she->he") for t, (m, a, b) in she.items()})
    assert got == expected


# ---- N-class data and identity rows --------------------------------------------------------------


def test_every_class_gets_rows_and_a_class_outside_the_pair_gets_identity_rows():
    he = numbered("The clerk number {} said he was there.", 3)
    she = numbered("The clerk number {} said she was there.", 3)
    they = numbered("The clerk number {} said They were there.", 3)
    docs = [*he, *she, *they, "He said they were late.", "It rained all day."]
    corpus = build_dataset(docs, HE_SHE_THEY, data_settings())
    got = records(corpus.examples)
    assert "He said they were late." not in got  # words of two classes: no factual class
    for text in they:
        masked = text.replace("They", MASK)
        assert got[text] == (masked, "they", "they", "They", "They", "they->they")
    for text in he:
        assert got[text][1:] == ("he", "she", "he", "she", "he->she")
    # metrics/data.json: rows keyed by class, then split; 3 rows at 60/20/20 give one per split
    one_each = {"train": 1, "validation": 1, "test": 1}
    assert rows_per_class_and_split(corpus.examples) == {c: one_each for c in ("he", "she", "they")}
    assert corpus.summary()["rows"]["they"] == one_each
    assert list(corpus.neutral["text"]) == ["It rained all day."]


def test_another_pair_makes_the_remaining_class_the_identity_class():
    f = feature(HE_SHE_THEY.classes, HE_SHE_THEY.targets, pair=["they", "she"])
    docs = [*numbered("Then {} said he left.", 3), *numbered("Then {} said she left.", 3)]
    docs += numbered("Then {} said they left.", 3)
    got = records(build_dataset(docs, f, data_settings()).examples)
    assert got["Then one said he left."][1:] == ("he", "he", "he", "he", "he->he")
    assert got["Then one said they left."][1:] == ("they", "she", "they", "she", "they->she")
    assert got["Then one said she left."][1:] == ("she", "they", "she", "they", "she->they")


# ---- contractions --------------------------------------------------------------------------------


def test_apostrophes_and_hyphens_end_a_target_word():
    f = feature(["he", "she"], {"he": ["he"], "she": ["she"]})
    he = {
        "I think he's late.": "I think [MASK]'s late.",
        "I know He’ll come.": "I know [MASK]’ll come.",
        "Then he-who-waits won.": "Then [MASK]-who-waits won.",
    }
    she = {
        "Well, She'd go home.": "Well, [MASK]'d go home.",
        "I saw she's here.": "I saw [MASK]'s here.",
        "So she’s sure she is.": "So [MASK]’s sure [MASK] is.",
    }
    neutral = ["The theme's dark.", "The shed's roof and hers.", "Sheila's hen ran."]
    corpus = build_dataset([*he, *she, *neutral], f, data_settings())
    got = records(corpus.examples)
    assert {t: r[0] for t, r in got.items()} == {**he, **she}
    assert got["I know He’ll come."][1:5] == ("he", "she", "He", "She")
    assert got["Well, She'd go home."][1:5] == ("she", "he", "She", "He")
    # Words that merely contain the letters (the, shed, hers, Sheila) stay neutral, and no
    # contraction of a target word reaches the neutral set.
    assert sorted(corpus.neutral["text"]) == sorted(neutral)


def test_contractions_of_excluded_words_keep_a_sentence_out_of_the_neutral_set():
    f = feature(["he", "she"], {"he": ["he"], "she": ["she"]})
    docs = [*numbered("Then {} said he left.", 3), *numbered("Then {} said she left.", 3)]
    docs += ["I met him-and-me twice.", "It rained."]
    corpus = build_dataset(docs, f, data_settings(neutral_excluded_words=["him"]))
    assert list(corpus.neutral["text"]) == ["It rained."]


# ---- neutral sources -----------------------------------------------------------------------------


def test_neutral_sources_join_the_generated_neutral_set_through_the_same_filters():
    f = feature(["he", "she"], {"he": ["he"], "she": ["she"]})
    docs = [*numbered("Then {} said he left.", 3), *numbered("Then {} said she left.", 3)]
    docs.append("It rained all day.")
    extra = ["The sun came out. Later he's back. Too short. It rained all day.", "A cat sat."]
    corpus = build_dataset(docs, f, data_settings(min_words=3), neutral_documents=extra)
    # 'Later he's back.' holds a target word, 'Too short.' has 2 words, the repeat is dropped.
    assert sorted(corpus.neutral["text"]) == sorted(
        ["It rained all day.", "The sun came out.", "A cat sat."]
    )
    assert corpus.sentences_scanned == 7 + 5


# ---- prepared datasets ---------------------------------------------------------------------------

HE_SHE = feature(["he", "she"], PRONOUNS)


def read(sources: list[str], f=HE_SHE):
    settings = SimpleNamespace(sources=sources, text_column="text", encoding="utf-8")
    return read_sources(settings, f)


def test_one_table_with_a_class_column_in_the_published_layout(tmp_path):
    """Columns masked, label (the factual token), label_class, no split, no alternative for the
    he rows: the alternative is drawn from the she rows' tokens with data.seed."""
    he = [f"Row {i} then [MASK] left." for i in range(4)]
    she = [f"Row {i} then [MASK] came." for i in range(3)]
    table = pd.DataFrame(
        {
            "masked": [*he, *she, "An it row [MASK]."],
            "label": ["he", "His", "him", "HE", "she", "her", "Her", "it"],
            "label_class": ["he"] * 4 + ["she"] * 3 + ["it"],  # 'it' is no feature class: skipped
            "alternative": [None] * 4 + ["he", "him", "Him", None],
        }
    )
    path = tmp_path / "prepared.csv"
    table.to_csv(path, index=False)
    sources = read([str(path)])
    assert sources.documents == [] and len(sources.prepared) == 7
    corpus = build_dataset([], HE_SHE, data_settings(seed=3), prepared=sources.prepared)
    got = records(corpus.examples)
    # The she rows' tokens, lowercased: her x2, she x1 -> p(her) = 2/3, p(she) = 1/3 (sorted).
    rng = np.random.default_rng(3)
    drawn = [["her", "she"][rng.choice(2, p=[2 / 3, 1 / 3])] for _ in range(4)]
    casing = [str.lower, str.title, str.lower, str.upper]
    for i, (masked, factual) in enumerate(zip(he, ["he", "His", "him", "HE"], strict=True)):
        text = masked.replace(MASK, factual)
        assert got[text] == (masked, "he", "she", factual, casing[i](drawn[i]), "he->she")
    assert got["Row 2 then Her came."] == (she[2], "she", "he", "Her", "Him", "she->he")
    assert corpus.neutral.empty
    assert rows_per_class_and_split(corpus.examples)["she"] == {
        "train": 1,
        "validation": 1,
        "test": 1,
    }


def test_a_table_with_a_split_column_keeps_its_splits(tmp_path):
    rows = []
    for cls, word, other in (("he", "he", "she"), ("she", "she", "he")):
        for i, split in enumerate(["train", "train", "dev", "TEST", "val"]):
            rows.append((f"{cls} {i} said [MASK] ran.", split, cls, word, other))
    table = pd.DataFrame(rows, columns=["masked", "split", "factual_class", "factual", "he"])
    table["alternative"] = table.pop("he").where(table["factual_class"] == "he", None)
    table.loc[table["factual_class"] == "she", "alternative"] = "he"
    path = tmp_path / "prepared.parquet"
    table.to_parquet(path)
    corpus = build_dataset([], HE_SHE, data_settings(), prepared=read([str(path)]).prepared)
    counts = {"train": 2, "validation": 2, "test": 1}
    assert rows_per_class_and_split(corpus.examples) == {"he": counts, "she": counts}
    split_of = dict(zip(corpus.examples["masked"], corpus.examples["split"], strict=True))
    assert split_of["he 2 said [MASK] ran."] == "validation"  # 'dev'
    assert split_of["she 3 said [MASK] ran."] == "test"  # 'TEST'
    assert list(corpus.examples.columns) == EXAMPLE_COLUMNS
    assert set(corpus.examples["alternative"]) == {"she", "he"}


def test_a_folder_with_one_file_per_class(tmp_path):
    folder = tmp_path / "per_class"
    folder.mkdir()
    he = pd.DataFrame(
        {
            "masked": [f"He row {i} [MASK] ran." for i in range(3)],
            "he": ["he", "him", "his"],  # the factual token in the column named by the class
            "she": ["she", "her", "her"],  # the alternative in the column of the other class
        }
    )
    she = pd.DataFrame({"masked": [f"She row {i} [MASK] ran." for i in range(3)], "token": "she"})
    he.to_csv(folder / "he.csv", index=False)
    she.to_parquet(folder / "she.parquet")
    (folder / "notes.txt").write_text("ignored", encoding="utf-8")
    prepared = read([str(folder)]).prepared
    assert prepared["factual_class"].tolist() == ["he"] * 3 + ["she"] * 3
    assert prepared["alternative"].tolist()[:3] == ["she", "her", "her"]
    corpus = build_dataset([], HE_SHE, data_settings(), prepared=prepared)
    got = records(corpus.examples)
    assert got["He row 1 him ran."] == (
        "He row 1 [MASK] ran.",
        "he",
        "she",
        "him",
        "her",
        "he->she",
    )
    # she rows give no alternative: drawn from the he rows' tokens (he, him, his, one each)
    assert {r[4] for t, r in got.items() if r[1] == "she"} <= {"he", "him", "his"}
    (folder / "she.parquet").unlink()
    with pytest.raises(GradiendError) as exc:
        read([str(folder)])
    assert "no file for class 'she'" in str(exc.value) and "\n" not in str(exc.value)


class FakeHub:
    """Stands in for datasets.get_dataset_config_names / load_dataset: one config per class."""

    def __init__(self, frames: dict[str, dict[str, pd.DataFrame]]):
        self.frames, self.calls = frames, []

    def configs(self, name):
        return list(self.frames)

    def load(self, name, config=None, split=None):
        import datasets

        self.calls.append((name, config, split))
        parts = {
            s: datasets.Dataset.from_dict(f.to_dict("list")) for s, f in self.frames[config].items()
        }
        return parts[split] if split else datasets.DatasetDict(parts)


def test_a_hub_dataset_with_one_config_per_class(monkeypatch):
    import datasets

    def config(word: str, alternative: str) -> dict[str, pd.DataFrame]:
        def part(split: str, n: int) -> pd.DataFrame:
            masked = [f"The {split} row {i} [MASK] ran." for i in range(n)]
            return pd.DataFrame({"masked": masked, "label": [word] * n, "alternative": alternative})

        return {
            "train": part("train", 2),
            "validation": part("validation", 1),
            "test": part("test", 1),
        }

    hub = FakeHub({"he": config("he", "she"), "she": config("She", "He"), "it": config("x", "y")})
    monkeypatch.setattr(datasets, "get_dataset_config_names", hub.configs)
    monkeypatch.setattr(datasets, "load_dataset", hub.load)
    prepared = read(["hf:someone/pronouns"]).prepared
    assert hub.calls == [("someone/pronouns", "he", None), ("someone/pronouns", "she", None)]
    corpus = build_dataset([], HE_SHE, data_settings(), prepared=prepared)
    counts = {"train": 2, "validation": 1, "test": 1}
    assert rows_per_class_and_split(corpus.examples) == {"he": counts, "she": counts}
    got = records(corpus.examples)
    assert got["The test row 0 She ran."][3:] == ("She", "He", "she->he")


def test_an_unreachable_hub_dataset_is_a_one_line_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "get_dataset_config_names", offline)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(GradiendError) as exc:
        read(["hf:someone/pronouns"])
    message = str(exc.value)
    assert "'hf:someone/pronouns'" in message and "offline?" in message and "\n" not in message


@pytest.mark.parametrize(
    ("columns", "needle"),
    [
        ({"masked": ["a [MASK] b"], "label": ["he"]}, "needs a class column"),
        ({"masked": ["a [MASK] b"], "class": ["he"], "label": ["it"]}, "not in feature.targets"),
        ({"masked": ["a [MASK] b"], "class": ["he"], "label": ["he"], "split": ["x"]}, "split 'x'"),
        ({"masked": ["no mask"], "class": ["he"], "label": ["he"]}, "no '[MASK]'"),
        ({"masked": ["a [MASK] b"], "class": ["he"], "other": ["he"]}, "no factual token"),
        (
            {"masked": ["a [MASK] b"], "class": ["he"], "label": ["he"], "alternative": ["it"]},
            "'she' token 'it'",
        ),
    ],
)
def test_bad_prepared_tables_name_the_file_and_the_fix(tmp_path, columns, needle):
    path = tmp_path / "bad.csv"
    pd.DataFrame(columns).to_csv(path, index=False)
    with pytest.raises(GradiendError) as exc:
        read([str(path)])
    message = str(exc.value)
    assert message.startswith(str(path)) and needle in message and "\n" not in message


# ---- LMS on the filled test rows -----------------------------------------------------------------


TEST_ROWS = pd.DataFrame(
    {
        "masked": [
            "My brother said that [MASK] was very tired after the long day at work .",
            "The nurse wrote that [MASK] had found the lost keys .",
        ],
        "factual": ["he", "She"],
    }
)
FEATURE = feature(["he", "she"], {"he": ["he"], "she": ["she"]})


def test_lms_text_is_neutral_when_there_is_any_else_the_filled_test_rows():
    neutral = lms_text(["It rained ."], TEST_ROWS, FEATURE)
    assert (neutral.texts, neutral.kind, neutral.left_out_words) == (["It rained ."], "neutral", [])
    filled = lms_text([], TEST_ROWS, FEATURE)
    assert filled.kind == "test_filled" and filled.left_out_words == ["he", "she"]
    assert filled.texts == [
        "My brother said that he was very tired after the long day at work .",
        "The nurse wrote that She had found the lost keys .",
    ]


def test_causal_lms_on_filled_rows_leaves_every_target_token_out(causal_base):
    tok, model = causal_base.tokenizer, causal_base.model
    filled = lms_text([], TEST_ROWS, FEATURE)
    lms_set = build_lms_set(causal_base, filled.texts, 64, filled.left_out_words)
    # Every single-token casing, bare and after a space: he He she She (no HE/SHE in the vocab).
    targets = ["he", "He", "she", "She"]
    expected_ids = sorted(word_ids(tok, targets + ["Ġ" + w for w in targets]))
    assert list(lms_set.left_out) == expected_ids
    total, count = 0.0, 0
    for text in filled.texts:
        ids = torch.tensor(word_ids(tok, gpt2_pieces(text)))
        with torch.no_grad():
            logits = model(input_ids=ids[None]).logits[0]
        nll = nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="none")
        keep = torch.tensor([int(t) not in expected_ids for t in ids[1:]])
        total += float(nll[keep].sum())
        count += int(keep.sum())
    assert count == sum(len(t.split()) - 1 for t in filled.texts) - 2  # one target per row
    got = language_modelling_score(causal_base, lms_set, batch_size=2)
    assert got["tokens"] == count
    assert got["mean_nll"] == pytest.approx(total / count, rel=1e-5)
    assert got["lms"] == pytest.approx(1 / (1 + total / count), rel=1e-5)


def test_masked_lms_on_filled_rows_never_masks_a_target_token(bert_base):
    tok = bert_base.tokenizer
    filled = lms_text([], TEST_ROWS, FEATURE)
    lms_set = build_lms_set(bert_base, filled.texts, 64, filled.left_out_words)
    rng = random.Random(42)
    left_out = set(word_ids(tok, ["he", "He", "she", "She"]))
    for text, positions in zip(filled.texts, lms_set.masked_positions, strict=True):
        seq = [tok.cls_token_id] + word_ids(tok, text.split()) + [tok.sep_token_id]
        candidates = [i for i in range(1, len(seq) - 1) if seq[i] not in left_out]
        assert len(candidates) == len(seq) - 3
        assert positions == sorted(rng.sample(candidates, max(1, int(0.15 * len(candidates)))))


# ---- encoder evaluation with identity groups -----------------------------------------------------


def test_encoder_metrics_report_identity_groups_apart_from_the_pair():
    frame = pd.DataFrame(
        {
            "type": ["test"] * 4 + ["identity"] * 3 + ["neutral"] * 2,
            "source_class": ["he", "he", "she", "she", "they", "they", "it", "neutral", "neutral"],
            "label": [1, 1, -1, -1, 0, 0, 0, 0, 0],
            "encoded": [0.9, 0.5, -0.8, -0.2, 0.4, -0.2, -0.6, 0.1, -0.3],
            "text": [f"t{i}" for i in range(9)],
        }
    )
    m = encoder_metrics(frame, ["he", "she"])
    pair_only = encoder_metrics(frame[frame["type"] != "identity"], ["he", "she"])
    # Identity rows change nothing of the pair's metrics ...
    assert {k: v for k, v in m.items() if k != "groups"} == {
        k: v for k, v in pair_only.items() if k != "groups"
    }
    assert m["correlation"] == pytest.approx(
        np.corrcoef([0.9, 0.5, -0.8, -0.2], [1, 1, -1, -1])[0, 1]
    )
    # ... and are reported per class: they (0.4, -0.2), it (-0.6).
    assert m["groups"] == {
        "they": {"n": 2, "mean": pytest.approx(0.1), "abs_mean": pytest.approx(0.3)},
        "it": {"n": 1, "mean": pytest.approx(-0.6), "abs_mean": pytest.approx(0.6)},
    }
    assert pair_only["groups"] == {}
    assert m["neutral"]["abs_mean"] == pytest.approx(0.2)


def test_encoder_evaluation_without_neutral_rows_and_with_an_identity_class():
    """Prepared tables bring no neutral text: the evaluation runs on test and identity rows."""
    from gradiend_core.encoder_eval import evaluate_encoder
    from gradiend_core.gradiend import Gradiend, GradiendContext
    from gradiend_core.vectors import GradientStore, RowVectors

    model = Gradiend(2, 1)
    with torch.no_grad():
        model.encoder_weight.copy_(torch.tensor([[1.0, 0.0]]))
    values = [2.0, -1.0, 0.5, -0.5]  # he, she, they, they; tanh(x) is the encoding
    test = RowVectors(
        torch.tensor([[v, 0.0] for v in values]), ["he", "she", "they", "they"], list("abcd")
    )
    empty = RowVectors(torch.zeros(0, 2), [], [])
    store = GradientStore("factual", "diff", None, None, test, empty)
    context = GradiendContext(["he", "she"], "factual", "diff", "clm_next_token", "base")
    frame, m = evaluate_encoder(model, context, store)
    assert frame["type"].tolist() == ["test", "test", "identity", "identity"]
    assert frame["label"].tolist() == [1, -1, 0, 0] and frame["encoded"].dtype == "float64"
    assert m["correlation"] == pytest.approx(1.0) and m["neutral"]["n"] == 0
    they = np.tanh([0.5, -0.5])
    assert m["groups"] == {
        "they": {"n": 2, "mean": pytest.approx(0.0, abs=1e-7), "abs_mean": pytest.approx(they[0])}
    }
