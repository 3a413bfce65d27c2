"""The params reference: every param is described once (in gradiend_core/params.py), the README's
generated block matches the descriptions, and params.yaml and the documentation list the same
keys."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from gradiend_core.params import (
    README_BEGIN,
    README_END,
    SECTIONS,
    documented_keys,
    main,
    params_reference_markdown,
)

FIELDS = [(name, f) for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


@pytest.mark.parametrize(("section", "f"), FIELDS, ids=[f"{s}.{f.name}" for s, f in FIELDS])
def test_every_param_has_a_one_line_description(section, f):
    doc = f.metadata.get("doc")
    assert isinstance(doc, str) and doc.strip(), f"'{section}.{f.name}' has no description"
    assert "\n" not in doc, f"'{section}.{f.name}': the description must be one line"
    assert doc == doc.strip()


@pytest.mark.parametrize("cls", list(SECTIONS.values()), ids=list(SECTIONS))
def test_every_section_has_a_docstring(cls):
    # dataclass() fills a missing docstring with the signature, "ClassName(field: type, ...)".
    assert cls.__doc__ and cls.__doc__.strip()
    assert not cls.__doc__.startswith(f"{cls.__name__}("), f"{cls.__name__} has no docstring"


def test_readme_block_is_the_generated_reference():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme.count(README_BEGIN) == 1 and readme.count(README_END) == 1
    block = readme.split(README_BEGIN)[1].split(README_END)[0]
    assert block == f"\n\n{params_reference_markdown()}\n", (
        "README.md's parameter reference is stale; run 'python -m gradiend_core.params "
        "--write-readme'"
    )
    assert readme.index("## Parameters") < readme.index(README_BEGIN)


def test_params_yaml_and_the_documentation_list_the_same_keys():
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    in_file = {f"{section}.{key}" for section, keys in raw.items() for key in keys}
    documented = set(documented_keys())
    assert sorted(in_file - documented) == [], "keys in params.yaml without a description"
    assert sorted(documented - in_file) == [], "documented keys missing from params.yaml"


def test_reference_has_one_table_row_per_param():
    markdown = params_reference_markdown()
    for name, cls in SECTIONS.items():
        section = markdown.split(f"### `{name}`\n")[1].split("\n### ")[0]
        rows = [line for line in section.splitlines() if line.startswith("| `")]
        assert [row.split(" | ")[0] for row in rows] == [
            f"| `{f.name}`" for f in dataclasses.fields(cls)
        ]
        for row in rows:
            # Four cells: no description, type or allowed text may break the table with a '|'.
            cells = row.replace("\\|", "").strip("|").split("|")
            assert len(cells) == 4 and all(c.strip() for c in cells), row


def test_reference_names_type_allowed_values_and_description():
    markdown = params_reference_markdown()
    assert "| `pooling_length` | int | an integer >= 1 | `clm_mlm_head` only:" in markdown
    assert "| `first_layer` | int or null | — |" in markdown
    assert "| `dtype` | str | 'float32', 'bfloat16', 'float16' |" in markdown
    assert "| `topk` | number | a fraction in (0, 1] or a count >= 1 |" in markdown
    assert "`pypi:<package>`" in markdown  # '<' kept verbatim inside code spans ...
    assert "Which base model: `pypi:<package>`" in markdown
    assert "importance \\|mean\\|" in markdown  # ... and pipes escaped in cells


def test_markdown_cli_prints_the_reference():
    out = subprocess.run(
        [sys.executable, "-m", "gradiend_core.params", "--markdown"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == params_reference_markdown()


def test_write_readme_replaces_only_the_block(tmp_path, capsys):
    readme = tmp_path / "README.md"
    before, after = "# Title\n\n## Parameters\n\n", "\n\n## Reliability\n\nKeep me.\n"
    readme.write_text(f"{before}{README_BEGIN}\nstale\n{README_END}{after}", encoding="utf-8")
    assert main(["--write-readme", "--readme", str(readme)]) == 0
    expected = f"{before}{README_BEGIN}\n\n{params_reference_markdown()}\n{README_END}{after}"
    assert readme.read_text(encoding="utf-8") == expected
    assert "updated" in capsys.readouterr().out
    assert main(["--write-readme", "--readme", str(readme)]) == 0
    assert "already up to date" in capsys.readouterr().out
    assert readme.read_text(encoding="utf-8") == expected
    assert not [p for p in tmp_path.iterdir() if p.name != "README.md"]  # no temporaries left


@pytest.mark.parametrize(
    "text",
    [
        "no markers at all\n",
        f"{README_BEGIN}\n{README_BEGIN}\n{README_END}\n",
        f"{README_END}\n{README_BEGIN}\n",
    ],
    ids=["none", "twice", "reversed"],
)
def test_write_readme_refuses_a_readme_without_one_marker_pair(tmp_path, capsys, text):
    readme = tmp_path / "README.md"
    readme.write_text(text, encoding="utf-8")
    assert main(["--write-readme", "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "README.md" in err
    assert readme.read_text(encoding="utf-8") == text
