"""examples/: the override merge, the results file's fields, and the README table in sync."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from examples.run import BEGIN, END, FIELDS, RESULTS, merge, table
from gradiend_core.params import parse_params

REPO = Path(__file__).resolve().parents[1]


def test_merge_replaces_only_the_named_keys():
    params = {"model": {"source": "a"}, "train": {"seeds": [0], "learning_rate": 0.1}}
    merged = merge(params, {"train": {"learning_rate": 0.5}, "probe": {"x": 1}})
    assert merged == {
        "model": {"source": "a"},
        "train": {"seeds": [0], "learning_rate": 0.5},
        "probe": {"x": 1},
    }
    assert params["train"]["learning_rate"] == 0.1  # the input is not modified


def test_every_example_names_a_description_and_known_param_sections():
    sections = set(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")))
    specs = sorted((REPO / "examples").glob("*.yaml"))
    assert specs
    for path in specs:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert spec["description"], path
        assert set(spec.get("params") or {}) <= sections, path


def test_every_example_merges_into_valid_params():
    """The overrides are checked by the same loader the stages use, before a long run starts."""
    base = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for path in sorted((REPO / "examples").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        params = parse_params(merge(base, spec.get("params")))
        assert params.feature.pairs, path


def test_results_entries_have_the_fields_outside_scripts_read():
    results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else []
    for entry in results:
        assert set(FIELDS) <= set(entry), entry["name"]
        assert entry["command"] == f"bash scripts/example.sh {entry['name']}"
        assert (REPO / "examples" / f"{entry['name']}.yaml").exists()


def test_the_readme_table_is_the_generated_one():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split(BEGIN)[1].split(END)[0]
    assert block.strip() == table().strip()
