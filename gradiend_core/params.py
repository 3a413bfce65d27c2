"""The one typed loader for ``params.yaml``.

Every section is a frozen dataclass. ``load_params`` checks the whole file before any work starts:
unknown sections or keys, wrong types and out-of-range values are rejected with a one-line message
naming ``section.key``, the value and what is allowed. A key that is absent from the file (for example
in a hermetic sandbox that only holds a stage's declared params) raises when a stage *reads* it, so a
stage that uses an undeclared param fails loudly instead of silently using a default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from gradiend_core.errors import GradiendError

PARAMS_FILE = "params.yaml"


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()


def _check(fn, allowed: str):
    """Field metadata: a predicate on the value and the words that say what is allowed."""
    return {"check": fn, "allowed": allowed}


def positive(allowed: str = "a number > 0"):
    return _check(lambda v: v > 0, allowed)


def non_negative(allowed: str = "a number >= 0"):
    return _check(lambda v: v >= 0, allowed)


def prob_open_closed(allowed: str = "a number in (0, 1]"):
    return _check(lambda v: 0 < v <= 1, allowed)


def req(check: dict | None = None) -> Any:
    return field(default=ABSENT, metadata=check or {})


class Section:
    """Base class: reading an absent key raises a clear error instead of returning a default."""

    _name: typing.ClassVar[str] = ""

    def __getattribute__(self, item: str) -> Any:
        value = object.__getattribute__(self, item)
        if value is ABSENT:
            name = object.__getattribute__(self, "_name")
            raise GradiendError(
                f"params.yaml: '{name}.{item}' is missing; add it to params.yaml and to this stage's "
                f"'params:' in dvc.yaml."
            )
        return value


@dataclass(frozen=True)
class RuntimeParams(Section):
    """Where and how tensors are computed."""

    _name = "runtime"
    device: str = req(_check(lambda v: v == "cpu" or v == "cuda" or v.startswith("cuda:"), "'cpu', 'cuda' or 'cuda:N'"))
    dtype: Literal["float32", "bfloat16", "float16"] = req()
    num_threads: int = req(positive("an integer >= 1"))
    device_map: str | None = req(_check(lambda v: v in ("auto", "balanced", "sequential"), "null, 'auto', 'balanced' or 'sequential'"))


@dataclass(frozen=True)
class ModelParams(Section):
    """Which base model: 'pypi:<package>' (GGUF shipped in a wheel), a local folder, or a hub id."""

    _name = "model"
    source: str = req(_check(lambda v: len(v.strip()) > 0, "a non-empty string"))


@dataclass(frozen=True)
class FeatureParams(Section):
    """The feature: two classes, each defined by target words; classes[0] encodes to +1."""

    _name = "feature"
    classes: list[str] = req(_check(lambda v: len(v) == 2 and len(set(v)) == 2, "a list of two distinct class names"))
    targets: dict[str, list[str]] = req(_check(lambda v: all(len(w) > 0 for w in v.values()), "a mapping class -> non-empty list of words"))
    mask: str = req(_check(lambda v: len(v) > 0, "a non-empty placeholder string such as '[MASK]'"))


@dataclass(frozen=True)
class DataParams(Section):
    _name = "data"
    sources: list[str] = req(_check(lambda v: len(v) > 0, "a non-empty list of sources"))
    text_column: str = req()
    min_words: int = req(positive("an integer >= 1"))
    max_words: int = req(positive("an integer >= 1"))
    min_left_context_words: int = req(non_negative("an integer >= 0"))
    max_per_class: int = req(positive("an integer >= 1"))
    balance: bool = req()
    split: dict[str, float] = req(
        _check(
            lambda v: set(v) == {"train", "validation", "test"} and all(x > 0 for x in v.values()) and math.isclose(sum(v.values()), 1.0),
            "{train, validation, test} fractions > 0 that sum to 1",
        )
    )
    neutral_size: int = req(positive("an integer >= 1"))
    neutral_excluded_words: list[str] = req()
    seed: int = req()


@dataclass(frozen=True)
class GradientParams(Section):
    """Which objective produces the gradients and which base parameters form the gradient vector."""

    _name = "gradient"
    objective: Literal["clm_mlm_head", "clm_next_token", "mlm"] = req()
    include: list[str] = req(_check(lambda v: len(v) > 0, "a non-empty list of glob patterns"))
    exclude: list[str] = req()
    exclude_embeddings: bool = req()
    first_layer: int | None = req()
    last_layer: int | None = req()
    max_length: int = req(_check(lambda v: v >= 4, "an integer >= 4"))
    pooling_length: int = req(positive("an integer >= 1"))


@dataclass(frozen=True)
class MlmHeadParams(Section):
    _name = "mlm_head"
    epochs: int = req(positive("an integer >= 1"))
    batch_size: int = req(positive("an integer >= 1"))
    learning_rate: float = req(positive())
    weight_decay: float = req(non_negative())
    max_per_class: int = req(positive("an integer >= 1"))
    seed: int = req()


@dataclass(frozen=True)
class PrePruneParams(Section):
    _name = "pre_prune"
    n_samples: int = req(_check(lambda v: v >= 2, "an integer >= 2 (one example per class at least)"))
    topk: float = req(_check(lambda v: (isinstance(v, int) and v >= 1) or (isinstance(v, float) and 0 < v <= 1), "a fraction in (0, 1] or a count >= 1"))
    source: Literal["factual", "alternative", "diff"] = req()
    seed: int = req()


@dataclass(frozen=True)
class TrainParams(Section):
    _name = "train"
    seeds: list[int] = req(_check(lambda v: len(v) > 0 and len(set(v)) == len(v), "a non-empty list of distinct integers"))
    source: Literal["factual", "alternative", "diff"] = req()
    target: Literal["factual", "alternative", "diff"] = req()
    learning_rate: float = req(positive())
    weight_decay: float = req(non_negative())
    batch_size: int = req(positive("an integer >= 1"))
    gradiend_batch_size: int = req(positive("an integer >= 1"))
    max_steps: int = req(positive("an integer >= 1"))
    eval_steps: int = req(positive("an integer >= 1"))
    eval_max_per_class: int = req(positive("an integer >= 1"))
    normalize_sign: bool = req()
    convergence_threshold: float = req(prob_open_closed())
    convergence_mean_threshold: float = req(prob_open_closed())


@dataclass(frozen=True)
class SelectParams(Section):
    _name = "select"
    fail_on_non_convergence: bool = req()


@dataclass(frozen=True)
class EvaluateEncoderParams(Section):
    _name = "evaluate_encoder"
    max_per_class: int = req(positive("an integer >= 1"))
    neutral_size: int = req(non_negative("an integer >= 0"))
    seed: int = req()


@dataclass(frozen=True)
class EvaluateDecoderParams(Section):
    _name = "evaluate_decoder"
    learning_rates: list[float] = req(_check(lambda v: len(v) > 0 and all(x > 0 for x in v), "a non-empty list of numbers > 0"))
    feature_factors: list[float] = req(_check(lambda v: len(v) > 0 and all(x != 0 for x in v), "a non-empty list of non-zero numbers"))
    lms_ratio: float = req(prob_open_closed())
    max_per_class: int = req(positive("an integer >= 1"))
    neutral_size: int = req(positive("an integer >= 1"))
    batch_size: int = req(positive("an integer >= 1"))


@dataclass(frozen=True)
class RewriteParams(Section):
    _name = "rewrite"
    target_class: str = req()
    direction: Literal["strengthen", "weaken"] = req()


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
        EvaluateEncoderParams,
        EvaluateDecoderParams,
        RewriteParams,
    )
}


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
        return isinstance(value, dict) and all(_type_ok(k, args[0]) and _type_ok(v, args[1]) for k, v in value.items())
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
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
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """YAML reads 1e-3 as a string in some spellings; turn numeric strings into floats where a float is expected."""
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


def build_section(name: str, raw: Any) -> Section:
    cls = SECTIONS[name]
    if not isinstance(raw, dict):
        raise GradiendError(f"params.yaml: section '{name}' must be a mapping of keys, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise GradiendError(f"params.yaml: unknown key '{name}.{unknown[0]}'; known keys of '{name}': {', '.join(known)}.")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        value = _coerce(raw[f.name], hints[f.name])
        if not _type_ok(value, hints[f.name]):
            raise GradiendError(f"params.yaml: '{name}.{f.name}' = {raw[f.name]!r} is invalid; expected {_describe(hints[f.name])}.")
        check = f.metadata.get("check")
        if check is not None and value is not None and not check(value):
            raise GradiendError(f"params.yaml: '{name}.{f.name}' = {raw[f.name]!r} is out of range; allowed: {f.metadata['allowed']}.")
        values[f.name] = value
    return cls(**values)


@dataclass(frozen=True)
class Params:
    """All sections present in params.yaml, each validated. Access an absent section -> clear error."""

    sections: dict[str, Section]

    def __getattr__(self, name: str) -> Any:
        if name in SECTIONS:
            try:
                return self.sections[name]
            except KeyError:
                raise GradiendError(
                    f"params.yaml: section '{name}' is missing; add it to params.yaml and to this stage's 'params:' in dvc.yaml."
                ) from None
        raise AttributeError(name)


def parse_params(raw: Any) -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise GradiendError("params.yaml: the top level must be a mapping of sections.")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise GradiendError(f"params.yaml: unknown section '{unknown[0]}'; known sections: {', '.join(SECTIONS)}.")
    params = Params({name: build_section(name, value) for name, value in raw.items()})
    _cross_checks(params)
    return params


def _cross_checks(params: Params) -> None:
    s = params.sections
    if "feature" in s:
        f = s["feature"]
        classes, targets = object.__getattribute__(f, "classes"), object.__getattribute__(f, "targets")
        if classes is not ABSENT and targets is not ABSENT and set(targets) != set(classes):
            raise GradiendError(
                f"params.yaml: 'feature.targets' has classes {sorted(targets)} but 'feature.classes' is {classes}; give target words for exactly those classes."
            )
        if targets is not ABSENT:
            words = [w.lower() for ws in targets.values() for w in ws]
            if len(words) != len(set(words)):
                raise GradiendError("params.yaml: 'feature.targets' lists a word under two classes; each word must define one class.")
    if "data" in s:
        d = s["data"]
        lo, hi = object.__getattribute__(d, "min_words"), object.__getattribute__(d, "max_words")
        if lo is not ABSENT and hi is not ABSENT and lo > hi:
            raise GradiendError(f"params.yaml: 'data.min_words' = {lo} exceeds 'data.max_words' = {hi}.")
    if "rewrite" in s and "feature" in s:
        tc = object.__getattribute__(s["rewrite"], "target_class")
        classes = object.__getattribute__(s["feature"], "classes")
        if tc is not ABSENT and classes is not ABSENT and tc not in classes:
            raise GradiendError(f"params.yaml: 'rewrite.target_class' = {tc!r} is not one of feature.classes {classes}.")


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.exists():
        raise GradiendError(f"{path}: not found; run from the repository root (where params.yaml lives).")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise GradiendError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}).") from exc
    return parse_params(raw)
