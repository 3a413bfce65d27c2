"""Comparing GRADIENDs by the base-model weights they rank highest (docs/method.md §9).

**Coordinates.** Position p of a GRADIEND's vector is coordinate c = kept[p] of its θ (c = p
without pre-pruning); c lies in the tensor t with offset o_t <= c < o_t + numel_t, at the flat
(row-major) index c - o_t. The pair (tensor name, flat index) is a *base-model coordinate*: one
weight of the base model. Every comparison is made on these, never on vector positions, so
GRADIENDs over different θ (other layers, other pre-pruning) are compared weight by weight.

**Top-k sets.** A GRADIEND's positions are ranked by a score of its own weights
(``pruning.weight_scores``: |W_d[i]|, |W_e[i]| or |W_e[i]|·|W_d[i]|, chosen by ``compare.part``;
equal scores: the lower position first), and S is the set of base-model coordinates of the first
min(k, n). For two GRADIENDs A and B:

    overlap(A, B) = |S_A ∩ S_B| / min(|S_A|, |S_B|)      (= |S_A ∩ S_B| / k when n_A, n_B >= k)
    jaccard(A, B) = |S_A ∩ S_B| / |S_A ∪ S_B|
    cosine(A, B)  = <w_A, w_B> / (|w_A| |w_B|)         w_X: X's decoder weights W_d on the
                                                       coordinates that both GRADIENDs cover

Trade-offs: the overlap ignores scale and sign and reads only the top of each ranking, so it says
whether two GRADIENDs single out the same weights, but depends on k (two independent random sets
overlap by about k/n). The Jaccard index carries the same information for equal set sizes (J =
o / (2 - o)) and penalises unequal ones. The cosine uses every shared coordinate and the sign of
the edit (sign normalisation, §4.4, makes class A encode to +1 in every seed, so decoders of one
feature point the same way), but is dominated by the largest weights and is None when nothing is
shared. The *share* of a set per layer (``base_model.layer_of``; 'non_block' outside the blocks)
or per component (``base_model.component_of``) is the fraction of its coordinates there.

Labels name GRADIENDs: ``seed_0`` for ``models/gradiend/<pair>/seed_0`` in this workspace
(``he-she/seed_0`` when ``feature.pairs`` lists several pairs), ``<rev>:he-she/seed_0`` across
revisions. Across runs (README "Experiments")::

    python -m gradiend_core.comparison --rev main --rev <experiment> [--rev workspace]

reads ``models/gradiend`` of each revision through DVC's file system (git plus the local DVC cache,
offline) and writes the same tables and heatmap as the ``compare`` stage (default
``dvc_plots/compare/``).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gradiend_core.base_model import ParamSpace, component_of, layer_of
from gradiend_core.errors import GradiendError
from gradiend_core.gradiend import Gradiend, load_gradiend
from gradiend_core.io import atomic_dir, read_json, write_csv, write_json, write_text
from gradiend_core.plots import comparison_heatmap
from gradiend_core.pruning import WEIGHT_SCORES, ranked, weight_scores
from gradiend_core.workspace import GRADIENDS, METRICS

WORKSPACE = "workspace"
NON_BLOCK = "non_block"
PAIR_COLUMNS = [
    "pair",
    "a",
    "b",
    "overlap",
    "jaccard",
    "cosine",
    "intersection",
    "size_a",
    "size_b",
    "shared_coordinates",
]
SHARE_COLUMNS = ["scope", "kind", "key", "count", "share"]


# ---- coordinates ------------------------------------------------------------------------------


def coordinates(space: ParamSpace, positions) -> pd.DataFrame:
    """Base-model coordinates of GRADIEND vector positions: one row per position with its θ
    coordinate, tensor name, flat index within the tensor, block (nullable) and component."""
    positions = torch.as_tensor(positions, dtype=torch.int64).reshape(-1)
    if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= space.size):
        raise GradiendError(
            f"vector positions must lie in 0..{space.size - 1} (the GRADIEND's n = {space.size})."
        )
    full = positions if space.kept is None else space.kept.to(torch.int64)[positions]
    offsets = torch.tensor(space.offsets(), dtype=torch.int64)
    which = torch.searchsorted(offsets, full, right=True) - 1  # last tensor starting at or before
    names = [space.names[t] for t in which.tolist()]
    return pd.DataFrame(
        {
            "position": positions.numpy(),
            "coordinate": full.numpy(),
            "tensor": names,
            "index": (full - offsets[which]).numpy(),
            "layer": pd.array([layer_of(n) for n in names], dtype="Int64"),
            "component": [component_of(n) for n in names],
        }
    )


def _blocks(space: ParamSpace) -> dict[str, tuple[int, torch.Tensor | None, tuple]]:
    """Per tensor: its first position in the GRADIEND vector, its kept local indices (None = all)
    and its shape."""
    out, start = {}, 0
    for name, shape, numel, local in zip(
        space.names, space.shapes, space.numels, space.local_indices(), strict=True
    ):
        out[name] = (start, local, tuple(shape))
        start += numel if local is None else int(local.numel())
    return out


def shared_positions(a: ParamSpace, b: ParamSpace) -> tuple[torch.Tensor, torch.Tensor]:
    """Vector positions (in A, in B) of the base-model coordinates both GRADIENDs cover, in A's
    order: A's position pos_a[i] and B's position pos_b[i] are the same weight."""
    blocks_b = _blocks(b)
    pos_a, pos_b = [], []
    for name, (start_a, local_a, shape_a) in _blocks(a).items():
        if name not in blocks_b:
            continue
        start_b, local_b, shape_b = blocks_b[name]
        if shape_a != shape_b:
            raise GradiendError(
                f"tensor {name!r} has shape {list(shape_a)} in one GRADIEND and {list(shape_b)} in "
                "the other; they were trained on different base models and share no coordinates."
            )
        if local_a is None and local_b is None:
            ia = ib = torch.arange(math.prod(shape_a))
        elif local_a is None:
            ia, ib = local_b, torch.arange(local_b.numel())
        elif local_b is None:
            ia, ib = torch.arange(local_a.numel()), local_a
        else:
            _, ia_np, ib_np = np.intersect1d(
                local_a.numpy(), local_b.numpy(), assume_unique=True, return_indices=True
            )
            ia, ib = torch.from_numpy(ia_np), torch.from_numpy(ib_np)
        pos_a.append(start_a + ia.to(torch.int64))
        pos_b.append(start_b + ib.to(torch.int64))
    empty = torch.zeros(0, dtype=torch.int64)
    return (torch.cat(pos_a) if pos_a else empty), (torch.cat(pos_b) if pos_b else empty)


# ---- top-k tables -----------------------------------------------------------------------------


def top_table(model: Gradiend, space: ParamSpace, k: int, part: str) -> pd.DataFrame:
    """The top min(k, n) positions by ``weight_scores(model, part)`` (rank 1 = largest; ties: the
    lower position), with their base-model coordinates, score and the signed weights of latent
    unit 0."""
    if model.input_dim != space.size:
        raise GradiendError(
            f"GRADIEND of size {model.input_dim} does not match its parameter space of "
            f"{space.size} coordinates; the folder is inconsistent - rerun dvc repro."
        )
    scores = weight_scores(model, part)
    order = ranked(scores)[: min(k, scores.numel())]
    table = coordinates(space, order)
    table.insert(0, "rank", np.arange(1, len(order) + 1))
    table.insert(0, "part", part)
    table["score"] = scores[order].numpy()
    table["encoder_weight"] = model.encoder_weight.detach().cpu()[0, order].numpy()
    table["decoder_weight"] = model.decoder_weight.detach().cpu()[order, 0].numpy()
    return table


def _key_sets(table: pd.DataFrame) -> set[tuple[str, int]]:
    return set(zip(table["tensor"], table["index"].astype(int), strict=True))


def _layer_key(name: str) -> str:
    layer = layer_of(name)
    return NON_BLOCK if layer is None else str(layer)


def _layer_order(key: str) -> tuple[int, int]:
    return (1, 0) if key == NON_BLOCK else (0, int(key))


def _share_rows(scope: str, tensors: list[str], layers: list[str], comps: list[str]) -> list:
    """Count and fraction of ``tensors`` (one entry per coordinate) in every layer and component
    key (zero counts included; share None for an empty set)."""
    total = len(tensors)
    rows = []
    for kind, keys, of in (("layer", layers, _layer_key), ("component", comps, component_of)):
        counts = dict.fromkeys(keys, 0)
        for name in tensors:
            counts[of(name)] += 1
        rows += [
            {
                "scope": scope,
                "kind": kind,
                "key": key,
                "count": n,
                "share": n / total if total else None,
            }
            for key, n in counts.items()
        ]
    return rows


# ---- the comparison ---------------------------------------------------------------------------


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    norm = float(a.norm() * b.norm())
    return float(a @ b) / norm if norm > 0 else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return math.fsum(values) / len(values) if values else None


@dataclass(frozen=True)
class Comparison:
    """Everything ``compare_gradiends`` measures; ``metrics`` and ``summary_markdown`` render it."""

    k: int
    part: str
    labels: list[str]
    sizes: dict[str, int]
    tables: dict[str, pd.DataFrame]  # per GRADIEND: top-k by every weight score (column part)
    stats: dict[tuple[str, str], dict]  # (a, b) with a <= b in label order: overlap, jaccard, ...
    shares: pd.DataFrame  # SHARE_COLUMNS; scope = a label or a pair
    reports: dict[str, dict]

    def value(self, a: str, b: str, column: str) -> float | None:
        i, j = self.labels.index(a), self.labels.index(b)
        return self.stats[(a, b) if i <= j else (b, a)][column]

    def matrix(self, column: str) -> list[list[float | None]]:
        return [[self.value(a, b, column) for b in self.labels] for a in self.labels]

    def pair_table(self) -> pd.DataFrame:
        """One row per unordered pair of different GRADIENDs (PAIR_COLUMNS)."""
        rows = [
            {"pair": f"{a} ~ {b}", "a": a, "b": b, **s}
            for (a, b), s in self.stats.items()
            if a != b
        ]
        return pd.DataFrame(rows, columns=PAIR_COLUMNS)

    def _mean_shares(self, kind: str) -> dict[str, float | None]:
        part = self.shares[(self.shares["kind"] == kind) & self.shares["scope"].isin(self.labels)]
        keys = list(dict.fromkeys(part["key"]))
        return {key: _mean(part[part["key"] == key]["share"].tolist()) for key in keys}

    def metrics(self) -> dict:
        """Headline values for ``metrics/compare.json`` (n² + about 20 values for n GRADIENDs):
        the overlap matrix, the means over pairs and the mean per-layer / per-component share."""
        off = [s for (a, b), s in self.stats.items() if a != b]
        return {
            "k": self.k,
            "part": self.part,
            "overlap": {
                a: {b: self.value(a, b, "overlap") for b in self.labels} for a in self.labels
            },
            "mean_overlap": _mean(s["overlap"] for s in off),
            "mean_jaccard": _mean(s["jaccard"] for s in off),
            "mean_cosine": _mean(s["cosine"] for s in off),
            "layer_share": self._mean_shares("layer"),
            "component_share": self._mean_shares("component"),
        }

    def summary_markdown(self) -> str:
        """A readable report: the GRADIENDs, the three matrices and where the top-k sets lie."""

        def fmt(v) -> str:
            return "–" if v is None else f"{v:.3f}"

        def table(header: list[str], rows: list[list[str]]) -> list[str]:
            return [
                "| " + " | ".join(header) + " |",
                "|" + "---|" * len(header),
                *["| " + " | ".join(r) + " |" for r in rows],
                "",
            ]

        def matrix(column: str) -> list[str]:
            rows = [[a, *(fmt(self.value(a, b, column)) for b in self.labels)] for a in self.labels]
            return table(["", *self.labels], rows)

        lines = [
            "# Comparing GRADIENDs",
            "",
            f"Top-k sets: the {self.k} coordinates of θ with the largest {self.part} score "
            f"(`compare.part`), compared as base-model weights (tensor, flat index); "
            "docs/method.md §9. The ranked coordinates: `topk/`, one CSV per GRADIEND.",
            "",
        ]
        rows = []
        for label in self.labels:
            report = self.reports.get(label, {})
            conv = report.get("converged")
            rows.append(
                [
                    label,
                    str(self.sizes[label]),
                    str(min(self.k, self.sizes[label])),
                    "–" if conv is None else ("yes" if conv else "no"),
                    fmt(report.get("best_correlation")),
                ]
            )
        lines += table(["GRADIEND", "n", "top-k", "converged", "validation correlation"], rows)
        lines += ["## Overlap |A ∩ B| / min(|A|, |B|)", "", *matrix("overlap")]
        lines += ["## Jaccard |A ∩ B| / |A ∪ B|", "", *matrix("jaccard")]
        lines += ["## Cosine of the decoder weights on the shared coordinates", ""]
        lines += matrix("cosine")
        for kind in ("layer", "component"):
            part = self.shares[
                (self.shares["kind"] == kind) & self.shares["scope"].isin(self.labels)
            ]
            keys = list(dict.fromkeys(part["key"]))
            rows = [
                [label, *(fmt(v) for v in part[part["scope"] == label]["share"])]
                for label in self.labels
            ]
            lines += [f"## Share of each top-k set per {kind}", "", *table(["", *keys], rows)]
        return "\n".join(lines)


def compare_gradiends(
    gradiends: dict[str, tuple[Gradiend, ParamSpace]],
    k: int,
    part: str,
    reports: dict[str, dict] | None = None,
) -> Comparison:
    """Compare every pair of GRADIENDs by their top-k base-model coordinates (module docstring).

    Args:
        gradiends: label -> (GRADIEND, its parameter space), in the order of the report.
        k: top-k set size (``compare.topk``; a GRADIEND with n < k contributes all n).
        part: the weight score that ranks the coordinates (``compare.part``).
        reports: label -> training report (``converged``, ``best_correlation``), for the summary.

    Cost: one sort of n scores per GRADIEND and weight score, and one pass over the shared
    coordinates per pair (the decoder cosine), so comparing s GRADIENDs is O(s² n).
    """
    if not gradiends:
        raise GradiendError("no GRADIEND to compare; train at least one (dvc repro train).")
    labels = list(gradiends)
    tables = {
        label: pd.concat([top_table(m, s, k, by) for by in WEIGHT_SCORES], ignore_index=True)
        for label, (m, s) in gradiends.items()
    }
    ranked_sets = {label: t[t["part"] == part] for label, t in tables.items()}
    sets = {label: _key_sets(t) for label, t in ranked_sets.items()}
    layers = sorted(
        {_layer_key(n) for _, s in gradiends.values() for n in s.names}, key=_layer_order
    )
    comps = sorted({component_of(n) for _, s in gradiends.values() for n in s.names})
    share_rows = []
    for label in labels:
        share_rows += _share_rows(label, ranked_sets[label]["tensor"].tolist(), layers, comps)
    stats = {}
    for i, a in enumerate(labels):
        for b in labels[i:]:
            (model_a, space_a), (model_b, space_b) = gradiends[a], gradiends[b]
            common = sets[a] & sets[b]
            pos_a, pos_b = shared_positions(space_a, space_b)
            stats[(a, b)] = {
                "overlap": len(common) / min(len(sets[a]), len(sets[b])),
                "jaccard": len(common) / len(sets[a] | sets[b]),
                "cosine": _cosine(
                    model_a.decoder_weight.detach().cpu()[pos_a],
                    model_b.decoder_weight.detach().cpu()[pos_b],
                )
                if pos_a.numel()
                else None,
                "intersection": len(common),
                "size_a": len(sets[a]),
                "size_b": len(sets[b]),
                "shared_coordinates": int(pos_a.numel()),
            }
            if a != b:
                tensors = [name for name, _ in common]
                share_rows += _share_rows(f"{a} ~ {b}", tensors, layers, comps)
    return Comparison(
        k=k,
        part=part,
        labels=labels,
        sizes={label: s.size for label, (_, s) in gradiends.items()},
        tables=tables,
        stats=stats,
        shares=pd.DataFrame(share_rows, columns=SHARE_COLUMNS),
        reports=dict(reports or {}),
    )


def load_gradiends(folders: dict[str, str | Path]) -> dict[str, tuple[Gradiend, ParamSpace]]:
    """label -> (GRADIEND, parameter space) of each saved GRADIEND folder."""
    out = {}
    for label, folder in folders.items():
        model, space, _ = load_gradiend(folder)
        out[label] = (model, space)
    return out


def _file_name(label: str) -> str:
    """A label as a relative file path: ':' (revision separator) becomes '@'."""
    return label.replace(":", "@") + ".csv"


def write_comparison(result: Comparison, out: str | Path, metrics_path: str | Path) -> None:
    """Write ``metrics_path`` (``Comparison.metrics``) and, under ``out``: overlap.csv (one row
    per pair), overlap.png (overlap and cosine heatmaps), shares.csv, summary.md and
    topk/<label>.csv."""
    out = Path(out)
    write_json(metrics_path, result.metrics())
    write_csv(out / "overlap.csv", result.pair_table())
    write_csv(out / "shares.csv", result.shares)
    write_text(out / "summary.md", result.summary_markdown())
    panels = {
        f"top-{result.k} overlap ({result.part})": (result.matrix("overlap"), 0.0),
        "decoder cosine (shared coordinates)": (result.matrix("cosine"), -1.0),
    }
    comparison_heatmap(result.labels, panels, out / "overlap.png")
    with atomic_dir(out / "topk") as tmp:
        for label, table in result.tables.items():
            path = tmp / _file_name(label)
            path.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(path, index=False)


# ---- across runs ------------------------------------------------------------------------------


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _gradiend_folders(files: list[str], root: str) -> list[str]:
    """Folders (relative to ``root``, '' for root itself) that hold a saved GRADIEND."""
    found = set()
    for f in files:
        rel = Path(f).relative_to(root).as_posix()
        if Path(rel).name == "model.safetensors":
            parent = Path(rel).parent.as_posix()
            found.add("" if parent == "." else parent)
    return sorted(found, key=_natural)


def fetch_revision(
    rev: str, path: str, dest: Path, repo: str | Path = "."
) -> tuple[dict[str, Path], dict[str, dict]]:
    """The GRADIENDs under ``path`` at revision ``rev`` (a branch, tag, commit or ``dvc exp``
    name; ``workspace`` = the working tree), copied into ``dest`` through DVC's file system: git
    for git-tracked files, the local DVC cache for outputs, so it works offline. Returns label
    (``<rev>:<folder>``) -> folder, and label -> training report (metrics/train/<folder>.json)
    where that revision has one."""
    from dvc.api import DVCFileSystem

    path = Path(path).as_posix().strip("/")
    try:
        fs = DVCFileSystem(str(repo), rev=None if rev == WORKSPACE else rev)
        fs.ls("/", detail=False)  # resolves the revision (exists() would hide an unknown one)
        files = sorted(f.lstrip("/") for f in fs.find(path)) if fs.exists(path) else []
    except Exception as exc:  # dvc/scmrepo raise many types for unknown revisions
        first = (str(exc).splitlines() or [""])[0]
        raise GradiendError(
            f"revision {rev!r}: cannot be opened ({type(exc).__name__}: {first}); give a "
            "branch, tag, commit or experiment name (dvc exp list --all-commits)."
        ) from exc
    folders = _gradiend_folders(files, path)
    if not folders:
        raise GradiendError(
            f"revision {rev!r} has no GRADIEND under {path}/; give a revision whose pipeline ran "
            "the train stages."
        )
    out, reports = {}, {}
    for rel in folders:
        label = f"{rev}:{rel}" if rel else rev
        local = dest / re.sub(r"[^\w.-]", "_", rev) / (rel or "_")
        for f in files:
            inner = Path(f).relative_to(path)
            if inner.parent.as_posix() == (rel or "."):  # the folder's own files
                target = local / inner.name
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    fs.get_file(f, str(target))
                except FileNotFoundError as exc:
                    raise GradiendError(
                        f"revision {rev!r}: {f} is not in the local DVC cache; run "
                        f"'dvc pull' (or 'dvc exp pull origin {rev}') first."
                    ) from exc
        out[label] = local
        report = f"{METRICS.as_posix()}/train/{rel}.json"
        if rel and fs.exists(report):
            target = local / "_report.json"
            fs.get_file(report, str(target))
            reports[label] = read_json(target, f"training report of {label}")
    return out, reports


def main(argv: list[str] | None = None) -> int:
    """``python -m gradiend_core.comparison``: compare the GRADIENDs of several revisions."""
    parser = argparse.ArgumentParser(
        prog="python -m gradiend_core.comparison",
        description="Compare the GRADIENDs of git revisions or dvc experiments (read from git and "
        "the local DVC cache) by their top-k base-model weights.",
    )
    parser.add_argument(
        "--rev",
        action="append",
        required=True,
        help=f"a branch, tag, commit or experiment name; '{WORKSPACE}' = the working tree "
        "(repeat: --rev main --rev my-exp)",
    )
    parser.add_argument("--path", default=GRADIENDS.as_posix(), help="GRADIEND folder(s) to read")
    parser.add_argument("--topk", type=int, help="top-k set size (default: params.yaml compare)")
    parser.add_argument("--part", choices=WEIGHT_SCORES, help="default: params.yaml compare.part")
    parser.add_argument("--out", default="dvc_plots/compare", help="folder for tables and figure")
    parser.add_argument("--repo", default=".", help="the DVC repository (default: here)")
    args = parser.parse_args(argv)
    try:
        if len(set(args.rev)) != len(args.rev):
            raise GradiendError(f"--rev lists a revision twice: {args.rev}.")
        if args.topk is None or args.part is None:
            from gradiend_core.params import load_params

            settings = load_params(Path(args.repo) / "params.yaml").compare
            args.topk = settings.topk if args.topk is None else args.topk
            args.part = settings.part if args.part is None else args.part
        if args.topk < 1:
            raise GradiendError(f"--topk = {args.topk}; give a count >= 1.")
        folders, reports = {}, {}
        with tempfile.TemporaryDirectory(prefix="gradiend_compare_") as tmp:
            for rev in args.rev:
                found, rev_reports = fetch_revision(rev, args.path, Path(tmp), args.repo)
                folders.update(found)
                reports.update(rev_reports)
            result = compare_gradiends(load_gradiends(folders), args.topk, args.part, reports)
        out = Path(args.out)
        write_comparison(result, out, out / "compare.json")
    except GradiendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(result.labels)} GRADIENDs compared; report: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
