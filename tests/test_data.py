"""Raw text -> masked examples (docs/method.md §1): matching, masking, casing, filters, balancing,
splits, neutral set, errors."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import data_settings

from gradiend_core.data import (
    EXAMPLE_COLUMNS,
    build_dataset,
    load_examples,
    read_documents,
    read_neutral_sources,
    read_sources,
    require_split_rows,
    rows_per_class_and_split,
    take_balanced,
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


def build(docs: list[str], feature: dict = HE_SHE, prepared=None, **overrides):
    feature = SimpleNamespace(classes=feature["classes"], targets=feature["targets"], mask="[MASK]")
    return build_dataset(docs, feature, data_settings(SPLIT, **overrides), prepared=prepared)


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


def test_no_neutral_sentence_leaves_the_neutral_set_empty_with_a_warning(caplog):
    """Without neutral text the LMS falls back to the filled test rows (§7.4), so no error."""
    docs = numbered("The clerk number {} said he was there.", 5) + numbered(
        "The clerk number {} said she was there.", 5
    )
    corpus = build(docs)
    assert list(corpus.neutral.columns) == ["text"] and corpus.neutral.empty
    assert len(corpus.examples) == 10
    assert "no neutral sentence" in caplog.text


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


# ---- what users bring: encodings, empty files, column names, splits ------------------------------


def test_non_utf8_text_names_the_file_the_byte_and_the_encoding_param(tmp_path):
    txt = tmp_path / "latin.txt"
    txt.write_bytes("Le café était fermé.\nZweite Zeile über nichts.\n".encode("latin-1"))
    with pytest.raises(GradiendError) as exc:
        read_documents(str(txt), "text")
    message = str(exc.value)
    # 'Le caf' is 6 bytes, so the latin-1 byte of 'é' (0xe9) is at offset 6 on line 1.
    assert message.startswith(f"{txt}: is not valid utf-8 text at byte 6 (line 1, b'\\xe9')")
    assert "'data.encoding: latin-1'" in message and "\n" not in message
    assert read_documents(str(txt), "text", "latin-1") == [
        "Le café était fermé.",
        "Zweite Zeile über nichts.",
    ]


def test_decode_error_offset_counts_from_the_start_of_a_large_file(tmp_path):
    """Readers decode in chunks; the byte named is the offset in the whole file."""
    body = (b"a" * 99 + b"\n") * 200  # 20,000 bytes, 200 lines
    txt = tmp_path / "big.txt"
    txt.write_bytes(body + b"caf\xe9\n")
    with pytest.raises(GradiendError, match=r"at byte 20003 \(line 201, b'\\xe9'\)"):
        read_documents(str(txt), "text")
    csv = tmp_path / "big.csv"
    csv.write_bytes(b"text\n" + (b"x" * 50 + b"\n") * 3000 + b"caf\xe9\n")
    # 5 header bytes + 3000 rows of 51 bytes + 'caf' = 153,008; the header is line 1.
    with pytest.raises(GradiendError) as exc:
        read_documents(str(csv), "text")
    assert str(exc.value).startswith(f"{csv}: is not valid utf-8 text at byte 153008 (line 3002,")
    assert "data.encoding" in str(exc.value)
    docs = read_documents(str(csv), "text", "latin-1")
    assert len(docs) == 3001 and docs[-1] == "café" and docs[0] == "x" * 50


def test_read_sources_decodes_with_data_encoding(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_bytes("Ça va très bien.\n".encode("cp1252"))
    csv = tmp_path / "b.csv"
    csv.write_bytes("body\n“Quoted” text.\n".encode("cp1252"))
    settings = SimpleNamespace(sources=[str(txt), str(csv)], text_column="body", encoding="cp1252")
    assert read_sources(settings).documents == ["Ça va très bien.", "“Quoted” text."]
    assert read_sources(settings).prepared.empty


@pytest.mark.parametrize(
    ("name", "content", "what"),
    [
        ("empty.txt", b"", "no non-blank line"),
        ("blank.txt", b"\n  \n\t\n", "no non-blank line"),
        ("empty.csv", b"", "0 bytes"),
        ("newlines.csv", b"\n\n", "no header and no rows"),
        ("header.csv", b"text\n", "no text in column 'text' (data.text_column)"),
        ("empty.parquet", b"", "0 bytes"),
    ],
)
def test_empty_file_is_an_error_naming_it(tmp_path, name, content, what):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(GradiendError) as exc:
        read_documents(str(path), "text")
    assert str(exc.value) == (
        f"{path}: is empty ({what}); put the text in it or remove it from 'data.sources'."
    )


def test_parquet_without_rows_or_text_is_empty(tmp_path):
    no_rows = tmp_path / "no_rows.parquet"
    pd.DataFrame({"text": pd.Series([], dtype=str)}).to_parquet(no_rows)
    only_missing = tmp_path / "only_missing.parquet"
    pd.DataFrame({"text": [None, "  "]}).to_parquet(only_missing)
    for path in (no_rows, only_missing):
        with pytest.raises(GradiendError, match=rf"^{path}: is empty \(no text in column 'text'"):
            read_documents(str(path), "text")


def test_text_column_under_another_name_suggests_the_closest_column(tmp_path):
    csv = tmp_path / "c.csv"
    pd.DataFrame({"label": [1], "Texts": ["a b"]}).to_csv(csv, index=False)
    with pytest.raises(GradiendError) as exc:
        read_documents(str(csv), "text")
    assert str(exc.value) == (
        f"{csv}: no column 'text' (data.text_column); found ['label', 'Texts']; did you mean"
        " 'Texts'? set 'data.text_column: Texts'."
    )
    parquet = tmp_path / "c.parquet"
    pd.DataFrame({"sentence": ["a b"], "label": [1]}).to_parquet(parquet)
    with pytest.raises(GradiendError) as exc:
        read_documents(str(parquet), "text")
    assert str(exc.value) == (
        f"{parquet}: no column 'text' (data.text_column); found ['sentence', 'label']; set"
        " 'data.text_column' to the column that holds the text."
    )


def split_frame(splits: dict[str, list[str]]) -> pd.DataFrame:
    """Example rows: class -> the split of each of its rows, in order (masked text numbers them)."""
    rows = [
        (f"{cls} row {i} [MASK]", split, cls)
        for cls, row_splits in splits.items()
        for i, split in enumerate(row_splits)
    ]
    frame = example_frame([m for m, _, _ in rows])
    frame["split"] = [s for _, s, _ in rows]
    frame["factual_class"] = [c for _, _, c in rows]
    return frame


def test_take_balanced_takes_the_first_rows_of_each_class_in_the_split():
    frame = split_frame(
        {"he": ["train", "test", "test", "test"], "she": ["test", "validation", "test"]}
    )
    got = take_balanced(frame, "test", ["he", "she"], 2)
    assert got["masked"].tolist() == [
        "he row 1 [MASK]",
        "he row 2 [MASK]",
        "she row 0 [MASK]",
        "she row 2 [MASK]",
    ]


def test_a_class_without_rows_in_the_split_names_the_class_split_and_fix():
    frame = split_frame({"he": ["train", "validation", "test"], "she": ["train", "test", "train"]})
    with pytest.raises(GradiendError) as exc:
        take_balanced(frame, "validation", ["he", "she"], 5)
    assert str(exc.value) == (
        "data/examples.parquet: class 'she' has no row in split 'validation', which this stage"
        " reads (its rows per split: {'train': 2, 'validation': 0, 'test': 1}); rebuild the file"
        " with 'dvc repro data', which puts every class in train, validation and test."
    )
    require_split_rows(frame, "test", ["he", "she"])  # both classes have test rows
    with pytest.raises(GradiendError) as exc:
        require_split_rows(frame, "train", ["he", "they"])
    assert str(exc.value) == (
        "data/examples.parquet: class 'they' (feature.classes) has no row in any split; the file"
        " holds classes ['he', 'she'] - rebuild it with 'dvc repro data'."
    )


# ---- contractions, mixed sources (issue 8) -------------------------------------------------------


def test_contractions_of_target_words_are_rows_and_never_neutral():
    """Apostrophes and hyphens end a target word: "he's", "She'd", "he’ll" are he/she rows."""
    he = ["Then he's tired.", "Now He'd go home.", "So he’ll win it."]
    she = ["Then she's tired.", "Now She'd go home.", "So she-wolf won."]
    corpus = build([*he, *she, *NEUTRAL_DOCS])
    got = as_records(corpus.examples)
    assert got["Then he's tired."] == ("Then [MASK]'s tired.", "he", "she", "he", "she", "he->she")
    assert got["Now She'd go home."] == (
        "Now [MASK]'d go home.",
        "she",
        "he",
        "She",
        "He",
        "she->he",
    )
    assert got["So he’ll win it."][0] == "So [MASK]’ll win it."
    assert sorted(got) == sorted(he + she)
    assert set(corpus.neutral["text"]) == set(NEUTRAL_DOCS)


def test_raw_text_and_a_prepared_table_combine_per_class(tmp_path):
    table = pd.DataFrame(
        {
            "masked": ["Table row one [MASK] ran.", "Table row two [MASK] sat."],
            "split": ["test", "train"],
            "class": ["he", "she"],
            "token": ["He", "she"],
            "alternative": ["She", "he"],
        }
    )
    path = tmp_path / "table.csv"
    table.to_csv(path, index=False)
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join([*numbered("Clerk {} said he ran.", 3), "It rained."]), "utf-8")
    raw_she = numbered("Clerk {} said she ran.", 3)
    feature = SimpleNamespace(**HE_SHE, pairs=None, mask="[MASK]")
    settings = SimpleNamespace(sources=[str(raw), str(path)], text_column="text", encoding="utf-8")
    sources = read_sources(settings, feature)
    assert len(sources.documents) == 4 and len(sources.prepared) == 2
    corpus = build(sources.documents + raw_she, prepared=sources.prepared)
    split_of = dict(zip(corpus.examples["text"], corpus.examples["split"], strict=True))
    assert split_of["Table row one He ran."] == "test"  # the table's split is kept
    assert split_of["Table row two she sat."] == "train"
    # The raw rows of each class are split on their own: 3 rows -> 1 train, 1 validation, 1 test.
    assert rows_per_class_and_split(corpus.examples) == {
        "he": {"train": 1, "validation": 1, "test": 2},
        "she": {"train": 2, "validation": 1, "test": 1},
    }
    assert list(corpus.neutral["text"]) == ["It rained."]


def test_neutral_sources_are_read_as_raw_text_and_errors_name_their_param(tmp_path):
    txt = tmp_path / "neutral.txt"
    txt.write_text("It rained all day.\n\nThe sun came out later.\n", encoding="utf-8")
    settings = SimpleNamespace(
        neutral_sources=[str(txt)], text_column="text", encoding="utf-8", sources=[]
    )
    assert read_neutral_sources(settings) == ["It rained all day.", "The sun came out later."]
    settings.neutral_sources = [str(tmp_path / "missing.txt")]
    with pytest.raises(GradiendError) as exc:
        read_neutral_sources(settings)
    assert "'data.neutral_sources' entry" in str(exc.value) and "does not exist" in str(exc.value)
