"""Raw text -> masked examples (docs/method.md §1): matching, masking, casing, filters, balancing,
splits, neutral set, errors."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from gradiend_core.data import (
    EXAMPLE_COLUMNS,
    build_dataset,
    load_examples,
    read_documents,
    rows_per_class_and_split,
)
from gradiend_core.errors import GradiendError

HE_SHE = {"classes": ["he", "she"], "targets": {"he": ["he"], "she": ["she"]}}
SPLIT = {"train": 0.8, "validation": 0.1, "test": 0.1}
NEUTRAL_DOCS = [
    "The weather there was cold then and the theme was dark.",
    "They sheltered in the shed when the heat rose.",
    "We told him that the theme was dark.",
    "The man himself stood there quietly.",
]


def build(docs: list[str], feature: dict = HE_SHE, **overrides):
    kwargs = {
        "min_words": 1,
        "max_words": 100,
        "min_left_context_words": 0,
        "max_per_class": 1000,
        "balance": False,
        "split": SPLIT,
        "neutral_size": 1000,
        "neutral_excluded_words": [],
        "seed": 0,
    }
    kwargs.update(overrides)
    feature = SimpleNamespace(classes=feature["classes"], targets=feature["targets"], mask="[MASK]")
    return build_dataset(docs, feature, SimpleNamespace(**kwargs))


def as_records(examples: pd.DataFrame) -> dict[str, tuple]:
    """text -> (masked, factual_class, alternative_class, factual, alternative, transition)."""
    cols = ["masked", "factual_class", "alternative_class", "factual", "alternative", "transition"]
    return {r["text"]: tuple(r[c] for c in cols) for r in examples.to_dict("records")}


def numbered(template: str, n: int) -> list[str]:
    """n distinct sentences (a number word makes each one unique)."""
    words = [
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
    ]
    assert n <= len(words)
    return [template.format(w) for w in words[:n]]


# ---- matching and masking ------------------------------------------------------------------------


def test_matching_masking_factual_and_alternative_casing():
    he = {
        "Then there was the man who said he was fine.": (
            "Then there was the man who said [MASK] was fine.",
            "he",
            "she",
        ),
        "Then the teacher told us that He would come back soon.": (
            "Then the teacher told us that [MASK] would come back soon.",
            "He",
            "She",
        ),
        "Later the nurse shouted that HE was late and he knew it.": (
            "Later the nurse shouted that [MASK] was late and [MASK] knew it.",
            "HE",
            "SHE",
        ),
        "Her brother said he thought he saw the hen.": (
            "Her brother said [MASK] thought [MASK] saw the hen.",
            "he",
            "she",
        ),
    }
    she = {
        "In the shed there she found the theme of her song.": (
            "In the shed there [MASK] found the theme of her song.",
            "she",
            "he",
        ),
        "Sheer luck meant that She won, and then she smiled.": (
            "Sheer luck meant that [MASK] won, and then [MASK] smiled.",
            "She",
            "He",
        ),
        "Over the hill the shepherd said she was fine.": (
            "Over the hill the shepherd said [MASK] was fine.",
            "she",
            "he",
        ),
    }
    both = [
        "He said that she was right about it.",
        "The doctor told her that SHE and he were late.",
    ]
    docs = list(he) + list(she) + both + NEUTRAL_DOCS + ["A line with [MASK] already he said."]
    corpus = build(docs)
    got = as_records(corpus.examples)
    expected = {t: (m, "he", "she", f, a, "he->she") for t, (m, f, a) in he.items()}
    expected.update({t: (m, "she", "he", f, a, "she->he") for t, (m, f, a) in she.items()})
    assert got == expected
    assert list(corpus.examples.columns) == EXAMPLE_COLUMNS
    # Words containing 'he'/'she' (there, then, the, shed, sheer, shepherd, hen) are never masked or
    # matched.
    assert set(corpus.neutral["text"]) == set(NEUTRAL_DOCS)
    assert corpus.sentences_scanned == len(docs)


def test_whole_word_matching_for_a_short_target_inside_other_words():
    feature = {"classes": ["the", "a"], "targets": {"the": ["the"], "a": ["a"]}}
    the = {
        "There and then we saw the cat.": ("There and then we saw [MASK] cat.", "the", "a"),
        "Thereafter they bathed the other dog there.": (
            "Thereafter they bathed [MASK] other dog there.",
            "the",
            "a",
        ),
        "Then, at the end, The Band played the theme.": (
            "Then, at [MASK] end, [MASK] Band played [MASK] theme.",
            "the",
            "a",
        ),
        "Well, THE END was near.": ("Well, [MASK] END was near.", "THE", "A"),
    }
    a = {
        "They saw a cat there.": ("They saw [MASK] cat there.", "a", "the"),
        "Then we ate a pear and a plum.": ("Then we ate [MASK] pear and [MASK] plum.", "a", "the"),
        "Mostly it was A Good Day then.": ("Mostly it was [MASK] Good Day then.", "A", "The"),
    }
    neutral = ["Their theory thereby held up.", "Other thermal baths exist."]
    corpus = build(list(the) + list(a) + neutral + ["The cat saw a dog."], feature)
    expected = {t: (m, "the", "a", f, alt, "the->a") for t, (m, f, alt) in the.items()}
    expected.update({t: (m, "a", "the", f, alt, "a->the") for t, (m, f, alt) in a.items()})
    assert as_records(corpus.examples) == expected
    assert set(corpus.neutral["text"]) == set(neutral)


def test_documents_are_split_into_sentences_and_duplicates_dropped():
    docs = [
        "It rained all day. Then the neighbour said he was tired. Later she left the party early.",
        "Then the neighbour said he was tired.",
        "My aunt said he had gone. Her son said she had gone. The doctor said he would come.",
        "Her friend said she was here. The nurse said she would stay.",
    ]
    corpus = build(docs)
    got = as_records(corpus.examples)
    assert sorted(got) == sorted(
        [
            "Then the neighbour said he was tired.",
            "My aunt said he had gone.",
            "The doctor said he would come.",
            "Later she left the party early.",
            "Her son said she had gone.",
            "Her friend said she was here.",
            "The nurse said she would stay.",
        ]
    )
    assert list(corpus.neutral["text"]) == ["It rained all day."]
    assert corpus.sentences_scanned == 3 + 1 + 3 + 2


# ---- filters -----------------------------------------------------------------------------------


def test_min_left_context_words_counts_words_before_the_first_match():
    he = [
        "He went home early today.",
        "Yes he went home.",
        "Well, then he went home.",
        "So, well, then he left.",
        "My old friend said he left.",
        "He knew that he was right.",
    ]
    she = [
        "She went home late.",
        "Yes she went out.",
        "Well, then she went out.",
        "Oh so then she sang.",
        "The young girl said she stayed.",
    ]
    corpus = build(he + she + NEUTRAL_DOCS, min_left_context_words=2)
    got = as_records(corpus.examples)
    assert sorted(got) == sorted(
        [
            "Well, then he went home.",
            "So, well, then he left.",
            "My old friend said he left.",
            "Well, then she went out.",
            "Oh so then she sang.",
            "The young girl said she stayed.",
        ]
    )
    assert sorted(
        as_records(build(he + she + NEUTRAL_DOCS, min_left_context_words=0).examples)
    ) == sorted(he + she)
    with pytest.raises(
        GradiendError, match="too few"
    ):  # 4 words before the mask: one row per class is left
        build(he + she + NEUTRAL_DOCS, min_left_context_words=4)


def test_min_and_max_words_filter_sentences():
    he = [
        "I think he is.",
        "Today at noon he said so.",
        "At least the clerk said he would come back later on today for sure.",
    ]
    she = [
        "I think she is.",
        "Today at noon she said so.",
        "At least the clerk said she would come back later on today for sure.",
    ]
    with pytest.raises(GradiendError, match="too few"):
        build(he + she + NEUTRAL_DOCS, min_words=5, max_words=10)  # only one row per class survives
    corpus = build(he + she + NEUTRAL_DOCS, min_words=4, max_words=14)
    assert sorted(as_records(corpus.examples)) == sorted(he + she)
    corpus = build(
        [*he, *she, "I think he was.", "I think she was.", *NEUTRAL_DOCS], min_words=4, max_words=6
    )
    assert sorted(as_records(corpus.examples)) == sorted(
        [
            "I think he is.",
            "Today at noon he said so.",
            "I think he was.",
            "I think she is.",
            "Today at noon she said so.",
            "I think she was.",
        ]
    )


# ---- balancing, caps, splits -------------------------------------------------------------------


def test_balancing_and_max_per_class():
    he, she = (
        numbered("The clerk number {} said he was there.", 7),
        numbered("The clerk number {} said she was there.", 4),
    )
    docs = he + she + NEUTRAL_DOCS
    counts = lambda corpus: corpus.examples["factual_class"].value_counts().to_dict()  # noqa: E731
    assert counts(build(docs, balance=False)) == {"he": 7, "she": 4}
    balanced = build(docs, balance=True)
    assert counts(balanced) == {"he": 4, "she": 4}
    assert set(balanced.examples["text"]) <= set(he + she)
    assert set(balanced.examples.loc[balanced.examples["factual_class"] == "she", "text"]) == set(
        she
    )
    assert counts(build(docs, balance=False, max_per_class=5)) == {"he": 5, "she": 4}
    assert counts(build(docs, balance=True, max_per_class=3)) == {"he": 3, "she": 3}


@pytest.mark.parametrize(
    ("n", "split", "expected"),
    [
        (10, SPLIT, {"train": 8, "validation": 1, "test": 1}),
        (
            20,
            {"train": 0.5, "validation": 0.3, "test": 0.2},
            {"train": 10, "validation": 6, "test": 4},
        ),
        (
            3,
            SPLIT,
            {"train": 1, "validation": 1, "test": 1},
        ),  # at least one row in validation and test
        (
            17,
            {"train": 0.6, "validation": 0.2, "test": 0.2},
            {"train": 11, "validation": 3, "test": 3},
        ),
    ],
)
def test_split_counts_per_class(n, split, expected):
    docs = (
        numbered("The clerk number {} said he was there.", n)
        + numbered("The clerk number {} said she was there.", n)
        + NEUTRAL_DOCS
    )
    corpus = build(docs, split=split)
    assert rows_per_class_and_split(corpus.examples) == {"he": expected, "she": expected}
    assert sorted(corpus.examples["split"].unique()) == sorted(expected)


def test_neutral_set_excludes_target_and_excluded_words_and_respects_size():
    docs = [
        "The clerk said he was there.",
        "The nurse said he was here.",
        "The boss said he was away.",
        "The clerk said she was there.",
        "The nurse said she was here.",
        "The boss said she was away.",
        *NEUTRAL_DOCS,
    ]
    corpus = build(docs, neutral_excluded_words=["him", "himself"])
    assert sorted(corpus.neutral["text"]) == sorted(
        [
            "The weather there was cold then and the theme was dark.",
            "They sheltered in the shed when the heat rose.",
        ]
    )
    corpus = build(docs, neutral_excluded_words=["HIMSELF"])  # case-insensitive whole word
    assert sorted(corpus.neutral["text"]) == sorted(NEUTRAL_DOCS[:3])
    small = build(docs, neutral_size=2)
    assert len(small.neutral) == 2 and set(small.neutral["text"]) <= set(NEUTRAL_DOCS)
    assert list(small.neutral.columns) == ["text"]


def test_same_seed_is_deterministic_and_another_seed_shuffles_differently():
    docs = (
        numbered("The clerk number {} said he was there.", 25)
        + numbered("The clerk number {} said she was there.", 25)
        + NEUTRAL_DOCS * 1
    )
    a, b = build(docs, seed=3, max_per_class=20), build(docs, seed=3, max_per_class=20)
    pd.testing.assert_frame_equal(a.examples, b.examples)
    pd.testing.assert_frame_equal(a.neutral, b.neutral)
    c = build(docs, seed=4, max_per_class=20)
    assert list(c.examples["text"]) != list(a.examples["text"])
    assert sorted(c.examples["text"]) != sorted(
        a.examples["text"]
    )  # a different 20-of-25 subset, not only a new order


# ---- errors ------------------------------------------------------------------------------------


def test_target_word_absent_from_the_corpus_is_an_error():
    docs = numbered("The clerk number {} said he was there.", 5) + NEUTRAL_DOCS
    feature = {"classes": ["he", "they"], "targets": {"he": ["he"], "they": ["they"]}}
    with pytest.raises(GradiendError) as exc:
        build(docs, feature)
    assert "'they'" in str(exc.value) and "\n" not in str(exc.value)


def test_class_with_fewer_than_three_rows_cannot_be_split():
    docs = (
        numbered("The clerk number {} said he was there.", 5)
        + numbered("The clerk number {} said she was there.", 2)
        + NEUTRAL_DOCS
    )
    with pytest.raises(GradiendError) as exc:
        build(docs)
    assert "'she'" in str(exc.value) and "too few" in str(exc.value)


def test_no_neutral_sentence_is_an_error():
    docs = numbered("The clerk number {} said he was there.", 5) + numbered(
        "The clerk number {} said she was there.", 5
    )
    with pytest.raises(GradiendError, match="neutral"):
        build(docs)


def test_read_documents_txt_csv_parquet(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("first line\n\n  \nsecond line\n", encoding="utf-8")
    assert read_documents(str(txt), "text") == ["first line", "second line"]
    csv = tmp_path / "c.csv"
    pd.DataFrame({"body": ["a b", None, "c d"], "other": [1, 2, 3]}).to_csv(csv, index=False)
    assert read_documents(str(csv), "body") == ["a b", "c d"]
    parquet = tmp_path / "c.parquet"
    pd.DataFrame({"text": ["x y", "z"]}).to_parquet(parquet)
    assert read_documents(str(parquet), "text") == ["x y", "z"]


def test_read_documents_errors(tmp_path):
    csv = tmp_path / "c.csv"
    pd.DataFrame({"body": ["a b"]}).to_csv(csv, index=False)
    with pytest.raises(GradiendError) as exc:
        read_documents(str(csv), "text")
    assert "'text'" in str(exc.value) and "data.text_column" in str(exc.value)
    other = tmp_path / "c.json"
    other.write_text("{}", encoding="utf-8")
    with pytest.raises(GradiendError, match="unsupported type"):
        read_documents(str(other), "text")
    with pytest.raises(GradiendError, match="does not exist"):
        read_documents(str(tmp_path / "missing.txt"), "text")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"this is not a parquet file at all" * 10)
    with pytest.raises(GradiendError, match="cannot be read"):
        read_documents(str(junk), "text")
    with pytest.raises(GradiendError, match="not an embedded corpus"):
        read_documents("pypi:nothing/here", "text")


def example_frame(masked: list[str]) -> pd.DataFrame:
    n = len(masked)
    return pd.DataFrame(
        {
            "masked": masked,
            "text": ["t"] * n,
            "split": ["train"] * n,
            "factual_class": ["he"] * n,
            "alternative_class": ["she"] * n,
            "factual": ["he"] * n,
            "alternative": ["she"] * n,
            "transition": ["he->she"] * n,
        }
    )


def test_load_examples_round_trip_and_errors(tmp_path):
    good = tmp_path / "good.parquet"
    frame = example_frame(["a [MASK] b", "[MASK] c"])
    frame.to_parquet(good)
    pd.testing.assert_frame_equal(load_examples(good, "[MASK]"), frame)

    no_mask = tmp_path / "no_mask.parquet"
    example_frame(["a [MASK] b", "no placeholder here", "[MASK]"]).to_parquet(no_mask)
    with pytest.raises(GradiendError) as exc:
        load_examples(no_mask, "[MASK]")
    assert "row 1" in str(exc.value) and "'[MASK]'" in str(exc.value) and "\n" not in str(exc.value)

    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1" + bytes(range(256)) * 4)
    with pytest.raises(GradiendError) as exc:
        load_examples(corrupt, "[MASK]")
    assert "corrupt" in str(exc.value) and "\n" not in str(exc.value)

    missing_col = tmp_path / "missing_col.parquet"
    example_frame(["a [MASK]"]).drop(columns=["factual"]).to_parquet(missing_col)
    with pytest.raises(GradiendError, match="factual"):
        load_examples(missing_col, "[MASK]")

    with pytest.raises(GradiendError, match="missing"):
        load_examples(tmp_path / "absent.parquet", "[MASK]")
