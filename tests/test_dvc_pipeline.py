"""The DVC pipeline end to end on the tiny fixtures: repro, no-op, metrics, experiments, hermetic
stages, byte-for-byte reproducibility, recovery from an interrupted stage and the other gradient
objectives.

Every run happens in a temporary copy of this checkout (see ``pipeline_support``) with tiny params;
the checkout itself is never touched.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import tiny_params
from pipeline_support import (
    REPRO_LOGS,
    copy_repo,
    dvc,
    error_line,
    file_hashes,
    finished_tiny_repos,
    make_repo,
    read_params,
    run_module,
    run_shell,
    start_dvc,
    temp_leftovers,
    wait_for_stage_processes,
    write_params,
)

P = "he-she"  # the one pair of the default feature (feature.pairs)
METRIC_FILES = [
    "metrics/data.json",
    "metrics/mlm_head.json",
    f"metrics/pre_prune/{P}.json",
    "metrics/select.json",
    "metrics/evaluate_encoder.json",
    f"metrics/evaluate_decoder/{P}.json",
    f"metrics/rewrite/{P}.json",
    f"metrics/probe_generation/{P}.json",
    f"metrics/probe_bias/{P}.json",
    "metrics/compare.json",
]


@pytest.fixture(scope="module")
def repos(tmp_path_factory, tiny_causal_dir, tiny_corpus) -> tuple[Path, Path]:
    return finished_tiny_repos(tmp_path_factory, tiny_causal_dir, tiny_corpus)


@pytest.fixture(scope="module")
def repo(repos) -> Path:
    """The finished tiny repository; tests that change anything work on a copy."""
    return repos[0]


def stage_names(repo: Path) -> list[str]:
    return dvc(repo, "stage", "list", "--names-only").stdout.split()


def lock(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text(encoding="utf-8"))


# ---- repro, status, metrics ---------------------------------------------------------------------


def test_every_stage_ran_and_the_lock_has_exactly_those_stages(repo):
    names = stage_names(repo)
    seeds = read_params(repo)["train"]["seeds"]
    expected = [
        "base_model",
        "data",
        "lower_states",
        "mlm_head",
        f"pre_prune@{P}",
        f"gradients@{P}",
        *[f"train@{P}-{s}" for s in seeds],
        "select",
        "evaluate_encoder",
        f"decoder_base@{P}",
        f"evaluate_decoder@{P}",
        f"rewrite@{P}",
        f"probe_base@{P}",
        f"probe_generation@{P}",
        f"probe_bias@{P}",
        "compare",
    ]
    assert sorted(names) == sorted(expected)
    ran = re.findall(r"Running stage '([^']+)'", REPRO_LOGS["first"])
    assert sorted(ran) == sorted(names)
    assert sorted(lock(repo)["stages"]) == sorted(names)
    for name, entry in lock(repo)["stages"].items():
        for out in entry.get("outs", []):
            assert (repo / out["path"]).exists(), (
                f"{name}: {out['path']} is in dvc.lock but missing"
            )


def test_status_is_clean_and_a_second_repro_runs_nothing(repo):
    before = (repo / "dvc.lock").read_bytes()
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}
    out = dvc(repo, "repro").stdout
    assert "Running stage" not in out, out
    assert (repo / "dvc.lock").read_bytes() == before
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}


def test_metrics_show_lists_every_stage_metric(repo):
    shown = json.loads(dvc(repo, "metrics", "show", "--json").stdout)
    (workspace,) = shown.values()
    files = workspace["data"]
    seeds = read_params(repo)["train"]["seeds"]
    for path in [*METRIC_FILES, *[f"metrics/train/{P}/seed_{s}.json" for s in seeds]]:
        assert path in files, f"{path} missing from dvc metrics show: {sorted(files)}"
        assert files[path].get("data"), f"{path} has no values ({files[path]})"


def test_encoder_and_rewrite_metrics_have_their_headline_values(repo):
    encoder = json.loads((repo / "metrics/evaluate_encoder.json").read_text())
    assert isinstance(encoder["correlation"], float) and -1.0 <= encoder["correlation"] <= 1.0
    rewrite = json.loads((repo / f"metrics/rewrite/{P}.json").read_text())
    for key in ("lms_ratio", "target_probability_before", "target_probability_after"):
        assert isinstance(rewrite[key], float), key
    assert (
        0.0 <= rewrite["target_probability_before"] <= 1.0
        and 0.0 <= rewrite["target_probability_after"] <= 1.0
    )
    assert rewrite["lms_ratio"] > 0
    assert json.loads((repo / "metrics/mlm_head.json").read_text())["used"] is True


def test_probe_metrics_have_the_names_outside_scripts_read(repo):
    classes = read_params(repo)["feature"]["classes"]
    generation = json.loads((repo / f"metrics/probe_generation/{P}.json").read_text())
    assert generation["applicable"] is True
    for model in ("base", "rewritten"):
        for cls in classes:
            assert 0.0 <= generation["rates"][model][cls] <= 1.0, (model, cls)
    bias = json.loads((repo / f"metrics/probe_bias/{P}.json").read_text())
    for model in ("base", "rewritten"):
        assert -1.0 <= bias["stereotype_correlation"][model] <= 1.0, model
    assert (repo / f"plots/probe_generation/{P}/samples.md").read_text().startswith("# Generation")


def test_balance_rewrite_reads_the_balance_choice_and_the_probes_follow(repo, tmp_path):
    """``rewrite.direction: balance`` (target class ignored) applies the grid's 'balance' point;
    the probe stages then run on that checkpoint. evaluate_decoder reads rewrite.direction (the
    bracket search looks for the balance point only then), so DVC reruns it first, and so does
    this test; the rewrite alone, on the strengthen run's grid, stops with a one-line error."""
    work = copy_repo(repo, tmp_path / "balance")
    params = read_params(work)
    params["rewrite"] = {"target_class": "she", "direction": "balance"}
    write_params(work, params)
    stale = run_module("stages.rewrite", "--pair", P, cwd=work)
    assert stale.returncode == 2 and "rewrite.direction = balance" in stale.stderr
    modules = ("stages.evaluate_decoder", "stages.rewrite", "stages.probe_generation")
    for module in (*modules, "stages.probe_bias"):
        result = run_module(module, "--pair", P, cwd=work)
        assert result.returncode == 0, f"{module}:\n{result.stderr[-3000:]}"
    chosen = json.loads((work / f"metrics/evaluate_decoder/{P}.json").read_text())["selection"]
    rewrite = json.loads((work / f"metrics/rewrite/{P}.json").read_text())
    assert rewrite["direction"] == "balance" and rewrite["target_class"] is None
    assert rewrite["target_probability_before"] is None
    assert (rewrite["feature_factor"], rewrite["learning_rate"]) == (
        chosen["balance"]["feature_factor"],
        chosen["balance"]["learning_rate"],
    )
    assert rewrite["moved_in_requested_direction"] == (
        rewrite["balance_gap_after"] < rewrite["balance_gap_before"]
    )
    assert "**balance** the classes" in (work / f"models/rewritten/{P}/README.md").read_text()
    bias = json.loads((work / f"metrics/probe_bias/{P}.json").read_text())
    assert bias["applicable"] is True


def test_rewritten_model_loads_with_transformers_and_differs_only_on_the_parameter_space(repo):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rewritten = AutoModelForCausalLM.from_pretrained(repo / "models/rewritten" / P)
    tokenizer = AutoTokenizer.from_pretrained(repo / "models/rewritten" / P)
    base = AutoModelForCausalLM.from_pretrained(repo / "models/base")
    space = set(json.loads((repo / f"models/selected/{P}/param_space.json").read_text())["names"])
    ids = tokenizer("my brother said that", return_tensors="pt")["input_ids"]
    assert rewritten(input_ids=ids).logits.shape[-1] == len(tokenizer)
    new, old = dict(rewritten.named_parameters()), dict(base.named_parameters())
    assert new.keys() == old.keys()
    changed = {name for name in new if not torch.equal(new[name], old[name])}
    assert changed, "the rewrite changed no weight"
    assert changed <= space, (
        f"weights outside models/selected/{P}/param_space.json changed: {sorted(changed - space)}"
    )


def test_compare_stage_names_every_pair_of_seeds_and_real_weights(repo):
    seeds = read_params(repo)["train"]["seeds"]
    labels = [f"seed_{s}" for s in seeds]
    metrics = json.loads((repo / "metrics/compare.json").read_text())
    assert metrics["k"] == read_params(repo)["compare"]["topk"]
    assert sorted(metrics["overlap"]) == labels
    for a in labels:
        assert metrics["overlap"][a][a] == 1.0
        for b in labels:
            assert 0.0 <= metrics["overlap"][a][b] <= 1.0
            assert metrics["overlap"][a][b] == metrics["overlap"][b][a]
    space = json.loads((repo / f"models/gradiend/{P}/seed_0/param_space.json").read_text())
    shapes = dict(zip(space["names"], space["shapes"], strict=True))
    topk = pd.read_csv(repo / "plots/compare/topk/seed_0.csv")
    assert set(topk["part"]) == {"decoder", "encoder", "product"}
    for row in topk.itertuples():
        assert 0 <= row.index < math.prod(shapes[row.tensor]), row
    pairs = pd.read_csv(repo / "plots/compare/overlap.csv")
    assert len(pairs) == len(seeds) * (len(seeds) - 1) // 2
    assert (repo / "plots/compare/overlap.png").stat().st_size > 0
    assert (repo / "plots/compare/summary.md").read_text().startswith("# Comparing GRADIENDs")


@pytest.fixture(scope="module")
def experiment(repo, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the tiny repository with its results committed, after ``dvc exp run`` with
    another train.learning_rate (results applied to the workspace); its ``dvc exp run`` output."""
    exp = copy_repo(repo, tmp_path_factory.mktemp("experiment") / "exp")
    run_shell("git add -A && git commit -q -m 'tiny pipeline results'", exp).check_returncode()
    return exp, dvc(exp, "exp", "run", "-S", "train.learning_rate=0.02").stdout


def test_adding_a_pair_runs_only_that_pairs_stages_and_the_suite_wide_ones(repo, tmp_path):
    """feature.pairs [he-she] -> [he-she, she-he]: the new pair's stages run, he-she's stay cached
    (the data stage reruns but writes the same rows), and the suite-wide stages cover both."""
    work = copy_repo(repo, tmp_path / "suite")
    params = read_params(work)
    params["feature"]["pairs"] = [P, "she-he"]
    write_params(work, params)
    seeds = params["train"]["seeds"]
    out = dvc(work, "repro").stdout
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    new = {f"{s}@she-he" for s in ("pre_prune", "gradients", "evaluate_decoder", "rewrite")}
    new |= {f"train@she-he-{s}" for s in seeds} | {"select", "evaluate_encoder", "compare"}
    assert new <= ran, out
    assert not {r for r in ran if P in r}, f"stages of {P} reran: {sorted(ran)}"
    select = json.loads((work / "metrics/select.json").read_text())
    encoder = json.loads((work / "metrics/evaluate_encoder.json").read_text())
    assert set(select["pairs"]) == set(encoder["pairs"]) == {P, "she-he"}
    # The reversed pair encodes she to +1 and he to -1 (its own GRADIENDs, its own labels).
    reversed_means = json.loads((work / "metrics/train/she-he/seed_0.json").read_text())
    assert reversed_means["mean_by_class"]["she"] > 0 > reversed_means["mean_by_class"]["he"]
    overlap = json.loads((work / "metrics/compare.json").read_text())["overlap"]
    assert sorted(overlap) == sorted(f"{p}/seed_{s}" for p in (P, "she-he") for s in seeds)
    rewrite = json.loads((work / "metrics/rewrite/she-he.json").read_text())
    assert rewrite["target_class"] == "he"  # rewrite.target_class is in this pair too
    assert json.loads(dvc(work, "status", "--json").stdout) == {}


def test_exp_run_with_a_new_learning_rate_reruns_training_and_changes_train_metrics(experiment):
    exp, out = experiment
    seeds = read_params(exp)["train"]["seeds"]
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert {f"train@{P}-{s}" for s in seeds} <= ran, out
    assert not ran & {
        "base_model",
        "data",
        "lower_states",
        "mlm_head",
        f"pre_prune@{P}",
        f"gradients@{P}",
    }, f"upstream stages reran: {ran}"
    stages = lock(exp)["stages"]
    for s in seeds:
        assert stages[f"train@{P}-{s}"]["params"]["params.yaml"]["train.learning_rate"] == 0.02
    diff = json.loads(dvc(exp, "metrics", "diff", "--json").stdout)
    assert any(path.startswith("metrics/train/") for path in diff), (
        f"no train metric changed: {diff}"
    )
    assert json.loads(dvc(exp, "status", "--json").stdout) == {}


def test_comparing_runs_reads_each_revisions_gradiends_from_the_dvc_cache(experiment, tmp_path):
    """`python -m gradiend_core.comparison --rev HEAD --rev <exp>` with the workspace's GRADIENDs
    deleted: both revisions come from git and the local DVC cache, and within each revision the
    overlaps equal that revision's own compare stage."""
    work = copy_repo(experiment[0], tmp_path / "runs")
    (name,) = dvc(work, "exp", "list", "--name-only").stdout.split()
    shutil.rmtree(work / "models" / "gradiend")
    out = tmp_path / "compare"
    result = run_module(
        "gradiend_core.comparison", "--rev", "HEAD", "--rev", name, "--out", str(out), cwd=work
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seeds = read_params(work)["train"]["seeds"]
    metrics = json.loads((out / "compare.json").read_text())
    labels = [f"{rev}:{P}/seed_{s}" for rev in ("HEAD", name) for s in seeds]
    assert sorted(metrics["overlap"]) == sorted(labels)
    committed = json.loads(
        run_shell("git show HEAD:metrics/compare.json", work).stdout
    )  # the compare stage of the baseline run
    applied = json.loads((work / "metrics/compare.json").read_text())  # of the experiment
    for a in seeds:
        for b in seeds:
            overlap = committed["overlap"][f"seed_{a}"][f"seed_{b}"]
            assert metrics["overlap"][f"HEAD:{P}/seed_{a}"][f"HEAD:{P}/seed_{b}"] == overlap
            overlap = applied["overlap"][f"seed_{a}"][f"seed_{b}"]
            assert metrics["overlap"][f"{name}:{P}/seed_{a}"][f"{name}:{P}/seed_{b}"] == overlap
    pairs = pd.read_csv(out / "overlap.csv").set_index("pair")
    across = pairs.loc[f"HEAD:{P}/seed_0 ~ {name}:{P}/seed_0"]
    assert across["cosine"] < 1.0  # another learning rate: other weights, read from the cache
    assert (out / "overlap.png").stat().st_size > 0
    assert (out / "topk" / f"{name}@{P}" / "seed_0.csv").exists()
    bad = run_module("gradiend_core.comparison", "--rev", "no-such-rev", cwd=work)
    assert bad.returncode == 2 and "unknown Git revision" in error_line(bad.stderr)


# ---- hermetic stages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StageSpec:
    name: str
    cmd: str
    deps: tuple[str, ...]
    params: tuple[str, ...]
    outs: tuple[str, ...]


def stage_specs(repo: Path) -> list[StageSpec]:
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    cwd = os.getcwd()
    os.chdir(repo)  # the DVC API resolves paths against the cwd
    try:
        with Repo(".") as r:
            specs = []
            for st in r.index.stages:
                params = tuple(
                    k for d in st.deps if isinstance(d, ParamsDependency) for k in d.params or []
                )
                deps = tuple(d.def_path for d in st.deps if not isinstance(d, ParamsDependency))
                specs.append(
                    StageSpec(st.name, st.cmd, deps, params, tuple(o.def_path for o in st.outs))
                )
            return specs
    finally:
        os.chdir(cwd)


def declared_params(full: dict, keys: tuple[str, ...]) -> dict:
    """Only the declared keys: a whole section for 'section', a nested value for 'section.key'."""
    out: dict = {}
    for key in keys:
        *parents, leaf = key.split(".")
        src, dst = full, out
        for part in parents:
            src, dst = src[part], dst.setdefault(part, {})
        dst[leaf] = src[leaf]
    return out


def build_sandbox(repo: Path, spec: StageSpec, box: Path) -> None:
    box.mkdir(parents=True)
    for dep in spec.deps:
        src, dst = repo / dep, box / dep
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", ".gitignore"))
        else:
            shutil.copy2(src, dst)
    if spec.params:
        write_params(box, declared_params(read_params(repo), spec.params))


def all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def check_hermetic(repo: Path, spec: StageSpec, box: Path) -> list[str]:
    """Problems of one stage run in a sandbox holding only its declared deps and params."""
    build_sandbox(repo, spec, box)
    deps_before = file_hashes(box, spec.deps)
    before = all_files(box)
    result = run_shell(spec.cmd, box)
    if result.returncode != 0:
        return [
            f"{spec.name}: exit {result.returncode} in a sandbox with only its declared"
            f" deps/params:\n{result.stderr[-3000:]}"
        ]
    problems = [
        f"{spec.name}: declared out {o} was not written"
        for o in spec.outs
        if not (box / o).exists()
    ]

    def allowed(path: str) -> bool:
        return (
            path.startswith("logs/")
            or "__pycache__/" in path
            or any(path == o or path.startswith(o + "/") for o in spec.outs)
        )

    problems += [
        f"{spec.name}: wrote undeclared file {p}"
        for p in sorted(all_files(box) - before)
        if not allowed(p)
    ]
    if file_hashes(box, spec.deps) != deps_before:
        problems.append(f"{spec.name}: modified one of its deps")
    produced = file_hashes(box, spec.outs)
    problems += [
        f"{spec.name}: {p} differs from the full dvc repro run"
        for p, h in produced.items()
        if file_hashes(repo, [p]).get(p) != h
    ]
    return problems


def test_each_stage_runs_with_only_its_declared_deps_and_params(repo, tmp_path):
    specs = stage_specs(repo)
    assert len(specs) == len(stage_names(repo))
    with ThreadPoolExecutor(
        max_workers=2
    ) as pool:  # stage runs are import-bound and single-threaded
        results = list(
            pool.map(lambda s: check_hermetic(repo, s, tmp_path / s.name.replace("@", "_")), specs)
        )
    problems = [p for r in results for p in r]
    assert not problems, "\n".join(problems)


def test_python_m_entry_points_declare_their_package_init(repo):
    """``python -m stages.x`` executes stages/__init__.py too, so every stage must depend on it."""
    problems = []
    for spec in stage_specs(repo):
        match = re.match(r"python -m ([\w.]+)", spec.cmd)
        assert match, f"{spec.name}: unexpected cmd {spec.cmd!r}"
        module = match.group(1).split(".")
        needed = ["/".join(module) + ".py"]
        for depth in range(1, len(module)):
            init = "/".join([*module[:depth], "__init__.py"])
            if (repo / init).exists():
                needed.append(init)
        for path in needed:
            if not any(path == d or path.startswith(d + "/") for d in spec.deps):
                problems.append(f"{spec.name}: runs {path} but does not declare it in deps")
    assert not problems, "\n".join(problems)


# ---- reproducibility and interruption -----------------------------------------------------------


def test_a_second_run_from_scratch_is_byte_identical(repos):
    first, second = repos
    a, b = file_hashes(first), file_hashes(second)
    assert a.keys() == b.keys(), f"different files: {sorted(a.keys() ^ b.keys())}"
    differing = sorted(p for p in a if a[p] != b[p])
    assert not differing, f"outputs differ between two runs from scratch: {differing}"
    assert (first / "dvc.lock").read_bytes() == (second / "dvc.lock").read_bytes()


def interrupt_during_a_write(proc, watched: list[Path], sig: signal.Signals) -> None:
    """Send ``sig`` to dvc and its stage command as soon as an atomic write is in progress."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if any(
            p.name.startswith(".") and p.name.endswith(".tmp")
            for d in watched
            if d.exists()
            for p in d.iterdir()
        ):
            break
        time.sleep(0.0002)  # the atomic writes of a tiny stage last only milliseconds
    assert proc.poll() is None, (
        f"the stage ended before it could be interrupted:\n{proc.communicate()[0][-3000:]}"
    )
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-3000:]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl_c", "kill_9"])
def test_a_stage_interrupted_while_writing_leaves_no_partial_output_and_repro_recovers(
    repo, tmp_path, sig
):
    work = copy_repo(repo, tmp_path / "interrupted")
    params = read_params(work)
    params["train"]["max_steps"] = 4  # new params: no run-cache entry, so the stage really runs
    write_params(work, params)
    proc = start_dvc(work, "repro", f"train@{P}-0")
    interrupt_during_a_write(
        proc,
        [
            work / "models/gradiend" / P,
            work / f"plots/train/{P}/seed_0",
            work / "metrics/train" / P,
        ],
        sig,
    )
    wait_for_stage_processes(work)
    leftovers = temp_leftovers(work)
    if sig == signal.SIGINT:
        assert leftovers == [], "Ctrl-C must clean up the temporaries of atomic writes"
    after_kill = {
        p: h
        for p, h in file_hashes(work).items()
        if not any(p == t or p.startswith(t + "/") for t in leftovers)
    }

    out = dvc(work, "repro", f"train@{P}-0").stdout
    assert f"Running stage 'train@{P}-0'" in out, out
    assert json.loads(dvc(work, "status", "--json", f"train@{P}-0").stdout) == {}
    assert temp_leftovers(work) == [], "the rerun must delete the temporaries of the killed run"
    final = file_hashes(work)
    partial = sorted(p for p, h in after_kill.items() if final.get(p) != h)
    assert not partial, (
        f"files at output paths after the interruption are not the complete outputs: {partial}"
    )
    assert json.loads((work / f"metrics/train/{P}/seed_0.json").read_text())["steps"] == 4


# ---- other objectives ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def objective_repos(
    tmp_path_factory, tiny_causal_dir, tiny_bert_dir, tiny_corpus
) -> dict[str, tuple[Path, int, str]]:
    """clm_next_token (tiny Llama) and mlm (tiny BERT) repositories, each reproduced up to train@0,
    concurrently."""
    root = tmp_path_factory.mktemp("objectives")
    variants = {
        "clm_next_token": tiny_params(
            tiny_causal_dir,
            tiny_corpus,
            gradient={"objective": "clm_next_token", "first_layer": None, "max_length": 32},
        ),
        "mlm": tiny_params(
            tiny_bert_dir,
            tiny_corpus,
            gradient={"objective": "mlm", "first_layer": None, "max_length": 32},
        ),
    }
    procs = {
        name: start_dvc(make_repo(root / name, params), "repro", f"train@{P}-0")
        for name, params in variants.items()
    }
    results = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=900)
        results[name] = (root / name, proc.returncode, out)
    return results


def check_objective_run(repo: Path, returncode: int, out: str, objective: str) -> None:
    assert returncode == 0, out[-6000:]
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert {"base_model", "data", "mlm_head", f"pre_prune@{P}", f"train@{P}-0"} <= ran, out
    assert not ran & {
        "select",
        "evaluate_encoder",
        f"evaluate_decoder@{P}",
        f"rewrite@{P}",
        f"probe_generation@{P}",
        f"probe_bias@{P}",
    }
    report = json.loads((repo / f"metrics/train/{P}/seed_0.json").read_text())
    assert report["seed"] == 0 and report["input_dim"] > 0
    assert (
        json.loads((repo / f"models/gradiend/{P}/seed_0/config.json").read_text())["context"][
            "objective"
        ]
        == objective
    )
    assert (repo / f"models/gradiend/{P}/seed_0/model.safetensors").stat().st_size > 0
    assert (
        lock(repo)["stages"][f"train@{P}-0"]["params"]["params.yaml"]["gradient.objective"]
        == objective
    )


def test_clm_next_token_objective_records_an_unused_head_and_trains(objective_repos):
    repo, returncode, out = objective_repos["clm_next_token"]
    check_objective_run(repo, returncode, out, "clm_next_token")
    assert json.loads((repo / "models/mlm_head/config.json").read_text())["used"] is False
    assert not (repo / "models/mlm_head/head.safetensors").exists()
    assert json.loads((repo / "metrics/mlm_head.json").read_text()) == {
        "objective": "clm_next_token",
        "used": False,
    }


def test_mlm_objective_on_a_masked_lm_trains(objective_repos):
    repo, returncode, out = objective_repos["mlm"]
    check_objective_run(repo, returncode, out, "mlm")
    assert json.loads((repo / "models/base/source.json").read_text())["kind_of_model"] == "masked"
    assert json.loads((repo / "models/mlm_head/config.json").read_text())["used"] is False
