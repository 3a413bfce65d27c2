"""Comparing GRADIENDs (docs/method.md §9) and post-pruning (§5.3), on hand-built parameter spaces
and GRADIENDs whose expected values are worked out by hand in the comments."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import REPO
from test_metrics_readable import MAX_VALUES, count_values

from gradiend_core.base_model import ParamSpace
from gradiend_core.comparison import (
    _gradiend_folders,
    compare_gradiends,
    coordinates,
    shared_positions,
    top_table,
    write_comparison,
)
from gradiend_core.errors import GradiendError
from gradiend_core.gradiend import Gradiend, GradiendContext, load_gradiend, save_gradiend
from gradiend_core.pruning import post_prune, weight_scores
from gradiend_core.selection import save_selected

Q0 = "model.layers.0.self_attn.q_proj.weight"  # shape (2, 3): θ coordinates 0..5
D1 = "model.layers.1.mlp.down_proj.weight"  # shape (4,):   θ coordinates 6..9
NORM = "model.norm.weight"  # shape (2,):   θ coordinates 10..11

# A: the three tensors, pre-pruned to θ coordinates 1, 5, 6, 9, 11, i.e. positions
#    0 -> (Q0, 1), 1 -> (Q0, 5), 2 -> (D1, 0), 3 -> (D1, 3), 4 -> (NORM, 1).
SPACE_A = ParamSpace((Q0, D1, NORM), ((2, 3), (4,), (2,)), torch.tensor([1, 5, 6, 9, 11]))
# B: another θ (block 1 and the norm only: D1 at 0..3, NORM at 4..5), another pruning: 0, 3, 4,
#    i.e. positions 0 -> (D1, 0), 1 -> (D1, 3), 2 -> (NORM, 0).
SPACE_B = ParamSpace((D1, NORM), ((4,), (2,)), torch.tensor([0, 3, 4]))
# B unpruned: positions 0..3 -> (D1, 0..3), 4..5 -> (NORM, 0..1).
SPACE_B_FULL = ParamSpace((D1, NORM), ((4,), (2,)))
CONTEXT = GradiendContext(["he", "she"], "alternative", "diff", "clm_next_token", "models/base")


def gradiend(encoder: list[float], decoder: list[float], bias: list[float] | None = None):
    n = len(decoder)
    model = Gradiend(n)
    with torch.no_grad():
        model.encoder_weight.copy_(torch.tensor([encoder]))
        model.encoder_bias.fill_(0.7)
        model.decoder_weight.copy_(torch.tensor(decoder).reshape(n, 1))
        model.decoder_bias.copy_(torch.tensor(bias if bias is not None else [0.0] * n))
    return model


# ---- the coordinate mapping -------------------------------------------------------------------


def test_positions_map_to_tensor_and_flat_index_through_the_kept_coordinates():
    table = coordinates(SPACE_A, [0, 1, 2, 3, 4])
    assert table["coordinate"].tolist() == [1, 5, 6, 9, 11]
    assert table["tensor"].tolist() == [Q0, Q0, D1, D1, NORM]
    assert table["index"].tolist() == [1, 5, 0, 3, 1]  # 6 - offset 6, 9 - 6, 11 - offset 10
    assert table["layer"].tolist() == [0, 0, 1, 1, pd.NA]
    assert table["component"].tolist() == ["attention_q", "attention_q", "mlp_down"] + [
        "mlp_down",
        "norm",
    ]
    # Another θ: position 0 of B is (D1, 0), not A's position 0 (Q0, 1).
    b = coordinates(SPACE_B, [2, 0])
    assert list(zip(b["tensor"], b["index"], strict=True)) == [(NORM, 0), (D1, 0)]
    full = coordinates(SPACE_B_FULL, [5])
    assert (full["coordinate"].item(), full["tensor"].item(), full["index"].item()) == (5, NORM, 1)
    with pytest.raises(GradiendError, match="0..4"):
        coordinates(SPACE_A, [5])


def test_zero_size_tensors_are_skipped_by_the_mapping():
    space = ParamSpace(("a.bias", "b.weight"), ((0,), (3,)))
    assert coordinates(space, [0, 2])["tensor"].tolist() == ["b.weight", "b.weight"]


def test_shared_positions_pair_the_same_base_weights_across_different_kept_sets():
    # Both cover (D1, 0) [A 2, B 0] and (D1, 3) [A 3, B 1]; (NORM, 1) is only in A, (NORM, 0) only
    # in B, and Q0 is not in B's θ at all.
    pos_a, pos_b = shared_positions(SPACE_A, SPACE_B)
    assert pos_a.tolist() == [2, 3] and pos_b.tolist() == [0, 1]
    pos_b2, pos_a2 = shared_positions(SPACE_B, SPACE_A)
    assert pos_b2.tolist() == [0, 1] and pos_a2.tolist() == [2, 3]
    # Unpruned B covers (D1, 0) at 0, (D1, 3) at 3 and (NORM, 1) at 5.
    pos_a, pos_b = shared_positions(SPACE_A, SPACE_B_FULL)
    assert pos_a.tolist() == [2, 3, 4] and pos_b.tolist() == [0, 3, 5]
    pos_b, pos_a = shared_positions(SPACE_B_FULL, SPACE_A)
    assert pos_b.tolist() == [0, 3, 5] and pos_a.tolist() == [2, 3, 4]
    pos, same = shared_positions(SPACE_B_FULL, SPACE_B_FULL)
    assert pos.tolist() == same.tolist() == [0, 1, 2, 3, 4, 5]
    other_model = ParamSpace((D1,), ((5,),))
    with pytest.raises(GradiendError, match="different base models"):
        shared_positions(SPACE_B, other_model)
    assert shared_positions(SPACE_A, ParamSpace(("x",), ((3,),)))[0].numel() == 0


# ---- top-k and the comparison -----------------------------------------------------------------


def test_top_table_ranks_by_magnitude_with_ties_by_lower_position():
    model = gradiend([0.3, -0.3, 0.1, 0.2, 0.0], [0.5, -0.5, 0.9, 0.5, 0.0])
    table = top_table(model, SPACE_A, 4, "decoder")
    # |W_d| = 0.5, 0.5, 0.9, 0.5, 0: 0.9 first, then the three-way tie in position order.
    assert table["position"].tolist() == [2, 0, 1, 3]
    assert table["rank"].tolist() == [1, 2, 3, 4]
    assert table["decoder_weight"].tolist() == pytest.approx([0.9, 0.5, -0.5, 0.5])
    assert table["tensor"].tolist() == [D1, Q0, Q0, D1]
    # |W_e| = 0.3, 0.3, 0.1, 0.2, 0: tie between positions 0 and 1.
    assert top_table(model, SPACE_A, 3, "encoder")["position"].tolist() == [0, 1, 3]
    # products 0.15, 0.15, 0.09, 0.1, 0 -> 0, 1, 3, 2; k > n keeps all n.
    table = top_table(model, SPACE_A, 9, "product")
    assert table["position"].tolist() == [0, 1, 3, 2, 4]
    assert table["score"].tolist() == pytest.approx([0.15, 0.15, 0.1, 0.09, 0.0])


def test_overlap_jaccard_and_cosine_use_base_coordinates_not_positions():
    # A: |W_d| top-2 = positions 2, 3 = (D1, 0), (D1, 3).
    a = gradiend([0.1] * 5, [0.1, 0.2, 0.9, -0.8, 0.05])
    # B (other θ): top-2 = positions 0, 1 = (D1, 0), (D1, 3) - the same weights.
    b = gradiend([0.1] * 3, [0.7, -0.6, 0.01])
    # C (A's θ): top-2 = positions 0, 1 = (Q0, 1), (Q0, 5) - same positions as B, other weights.
    c = gradiend([0.1] * 5, [0.9, 0.8, 0.1, 0.2, 0.3])
    result = compare_gradiends(
        {"A": (a, SPACE_A), "B": (b, SPACE_B), "C": (c, SPACE_A)}, 2, "decoder"
    )
    assert result.value("A", "B", "overlap") == 1.0 and result.value("A", "B", "jaccard") == 1.0
    assert result.value("B", "C", "overlap") == 0.0 and result.value("C", "B", "jaccard") == 0.0
    assert result.value("A", "C", "overlap") == 0.0
    # Shared coordinates of A and B: (D1, 0), (D1, 3): A's W_d there (0.9, -0.8), B's (0.7, -0.6).
    cos_ab = (0.9 * 0.7 + 0.8 * 0.6) / math.sqrt((0.81 + 0.64) * (0.49 + 0.36))
    assert result.value("B", "A", "cosine") == pytest.approx(cos_ab, rel=1e-6)
    # A and C share all five coordinates.
    wa, wc = [0.1, 0.2, 0.9, -0.8, 0.05], [0.9, 0.8, 0.1, 0.2, 0.3]
    dot = sum(x * y for x, y in zip(wa, wc, strict=True))
    norm = math.sqrt(sum(x * x for x in wa) * sum(y * y for y in wc))
    assert result.value("A", "C", "cosine") == pytest.approx(dot / norm, rel=1e-6)
    pairs = result.pair_table()
    assert pairs["pair"].tolist() == ["A ~ B", "A ~ C", "B ~ C"]
    assert pairs["shared_coordinates"].tolist() == [2, 5, 2]
    assert pairs["intersection"].tolist() == [2, 0, 0]
    assert result.matrix("overlap") == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_sets_smaller_than_k_are_compared_relative_to_the_smaller_set():
    a = gradiend([0.1] * 5, [0.1, 0.2, 0.9, -0.8, 0.05])
    b = gradiend([0.1] * 3, [0.7, -0.6, 0.01])
    result = compare_gradiends({"A": (a, SPACE_A), "B": (b, SPACE_B)}, 4, "decoder")
    # S_A = top-4 = positions 2, 3, 1, 0 = (D1,0), (D1,3), (Q0,5), (Q0,1); S_B = all 3 = (D1,0),
    # (D1,3), (NORM,0). |∩| = 2, min size 3, |∪| = 5.
    assert result.value("A", "B", "overlap") == pytest.approx(2 / 3)
    assert result.value("A", "B", "jaccard") == pytest.approx(2 / 5)
    assert result.stats[("A", "B")]["size_a"] == 4 and result.stats[("A", "B")]["size_b"] == 3


def test_shares_per_layer_and_component_and_the_metrics():
    a = gradiend([0.1] * 5, [0.1, 0.2, 0.9, -0.8, 0.05])  # top-2 (D1,0), (D1,3): all block 1
    b = gradiend([0.1] * 5, [0.9, 0.1, 0.8, 0.0, 0.0])  # top-2 (Q0,1), (D1,0): blocks 0 and 1
    result = compare_gradiends({"seed_0": (a, SPACE_A), "seed_1": (b, SPACE_A)}, 2, "decoder")
    shares = result.shares.set_index(["scope", "kind", "key"])["share"]
    assert shares[("seed_0", "layer", "1")] == 1.0 and shares[("seed_0", "layer", "0")] == 0.0
    assert shares[("seed_1", "layer", "0")] == 0.5 and shares[("seed_1", "layer", "1")] == 0.5
    assert shares[("seed_0", "layer", "non_block")] == 0.0
    assert shares[("seed_1", "component", "attention_q")] == 0.5
    assert shares[("seed_0 ~ seed_1", "layer", "1")] == 1.0  # the shared (D1, 0)
    metrics = result.metrics()
    assert metrics["k"] == 2 and metrics["part"] == "decoder"
    assert metrics["overlap"] == {
        "seed_0": {"seed_0": 1.0, "seed_1": 0.5},
        "seed_1": {"seed_0": 0.5, "seed_1": 1.0},
    }
    assert metrics["mean_overlap"] == 0.5 and metrics["mean_jaccard"] == pytest.approx(1 / 3)
    assert metrics["layer_share"] == {"0": 0.25, "1": 0.75, "non_block": 0.0}
    assert metrics["component_share"] == {"attention_q": 0.25, "mlp_down": 0.75, "norm": 0.0}
    assert list(metrics["layer_share"]) == ["0", "1", "non_block"]


def test_three_seeds_fit_the_metrics_budget_and_outputs_are_byte_stable(tmp_path):
    gen = torch.Generator().manual_seed(0)
    models = {
        f"seed_{s}": (gradiend(torch.randn(5, generator=gen).tolist(), [0.1 * s, 1, 2, 3, 4]),)
        for s in range(3)
    }
    gradiends = {label: (m[0], SPACE_A) for label, m in models.items()}
    result = compare_gradiends(gradiends, 3, "product", {"seed_1": {"converged": True}})
    assert count_values(result.metrics()) <= MAX_VALUES
    write_comparison(result, tmp_path / "a", tmp_path / "a.json")
    write_comparison(result, tmp_path / "b", tmp_path / "b.json")
    names = ["overlap.csv", "overlap.png", "shares.csv", "summary.md", "topk/seed_2.csv"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert json.loads((tmp_path / "a.json").read_text())["overlap"]["seed_0"]["seed_0"] == 1.0
    topk = pd.read_csv(tmp_path / "a" / "topk" / "seed_0.csv")
    assert topk.groupby("part").size().to_dict() == {"decoder": 3, "encoder": 3, "product": 3}
    summary = (tmp_path / "a" / "summary.md").read_text()
    assert "| seed_1 | 5 | 3 | yes | – |" in summary and "## Overlap" in summary
    # A single GRADIEND: no pair, an empty pair table with its header, means None.
    single = compare_gradiends({"seed_0": gradiends["seed_0"]}, 3, "decoder")
    write_comparison(single, tmp_path / "c", tmp_path / "c.json")
    assert (tmp_path / "c" / "overlap.csv").read_text().startswith("pair,a,b,overlap,")
    assert single.metrics()["mean_overlap"] is None


def test_gradiend_folders_of_a_revision_listing():
    files = [
        "models/gradiend/.gitignore",
        "models/gradiend/seed_10/model.safetensors",
        "models/gradiend/seed_2/config.json",
        "models/gradiend/seed_2/model.safetensors",
    ]
    assert _gradiend_folders(files, "models/gradiend") == ["seed_2", "seed_10"]
    assert _gradiend_folders(["models/selected/model.safetensors"], "models/selected") == [""]


# ---- post-pruning -----------------------------------------------------------------------------

ENC = [0.1, -2.0, 0.3, 0.0, 1.0, -0.5]
DEC = [1.0, 0.1, -3.0, 0.2, 1.0, 0.5]
BIAS = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


@pytest.mark.parametrize(
    ("by", "topk", "kept"),
    [
        # |W_d| = 1, .1, 3, .2, 1, .5: 3 first, then the tie at 1 keeps position 0 before 4.
        ("decoder", 2, [0, 2]),
        # |W_e| = .1, 2, .3, 0, 1, .5; k = ceil(0.5 * 6) = 3.
        ("encoder", 0.5, [1, 4, 5]),
        # products .1, .2, .9, 0, 1, .25.
        ("product", 2, [2, 4]),
        ("product", 1.0, [0, 1, 2, 3, 4, 5]),
    ],
)
def test_post_pruning_zeroes_exactly_the_dropped_coordinates(by, topk, kept):
    model = gradiend(ENC, DEC, BIAS)
    pruned, got = post_prune(model, topk, by)
    assert got.tolist() == kept
    keep = [i in kept for i in range(6)]
    assert pruned.encoder_weight[0].tolist() == pytest.approx(
        [w if k else 0.0 for w, k in zip(ENC, keep, strict=True)]
    )
    assert pruned.decoder_weight[:, 0].tolist() == pytest.approx(
        [w if k else 0.0 for w, k in zip(DEC, keep, strict=True)]
    )
    assert pruned.decoder_bias.tolist() == [
        b if k else 0.0 for b, k in zip(BIAS, keep, strict=True)
    ]
    assert pruned.encoder_bias.tolist() == pytest.approx([0.7])
    assert model.decoder_weight[:, 0].tolist() == pytest.approx(DEC)  # the input is unchanged
    # Equivalent to removing the dropped coordinates: the encoding reads only the kept ones and
    # the edit dec(f) is exactly 0 elsewhere.
    s = torch.tensor([0.3, -1.0, 2.0, 0.5, 0.25, -0.75])
    idx = torch.tensor(kept)
    expected_h = torch.tanh(torch.tensor(ENC)[idx] @ s[idx] + 0.7)
    assert float(pruned.encode(s).detach()) == pytest.approx(float(expected_h), rel=1e-6)
    edit = pruned.decode(torch.tensor([1.0])).detach()
    assert all(float(edit[i]) == 0.0 for i in range(6) if not keep[i])


def test_post_pruning_ties_keep_the_lower_position_and_counts_beyond_n_fail():
    model = gradiend([1.0] * 5, [2.0] * 5)  # every score equal
    for by in ("decoder", "encoder", "product"):
        assert post_prune(model, 3, by)[1].tolist() == [0, 1, 2]
    assert weight_scores(model, "product").dtype == torch.float64
    with pytest.raises(GradiendError, match="'post_prune.topk' = 6"):
        post_prune(model, 6, "decoder")


def test_save_selected_copies_when_off_and_post_prunes_when_on(tmp_path):
    source = tmp_path / "seed_0"
    model = gradiend(ENC, DEC, BIAS)
    space = ParamSpace((Q0,), ((2, 3),))
    save_gradiend(source, model, space, CONTEXT, {"training.json": {"report": {"seed": 0}}})
    off = SimpleNamespace(enabled=False, topk=2, by="decoder")
    assert save_selected(source, tmp_path / "copy", off) is None
    for f in sorted(source.iterdir()):
        assert (tmp_path / "copy" / f.name).read_bytes() == f.read_bytes()
    on = SimpleNamespace(enabled=True, topk=2, by="decoder")
    record = save_selected(source, tmp_path / "pruned", on)
    assert record == {
        "by": "decoder",
        "topk": 2,
        "kept": 2,
        "input_dim": 6,
        "kept_fraction": 2 / 6,
    }
    out = tmp_path / "pruned"
    assert json.loads((out / "post_prune.json").read_text()) == record
    assert (out / "training.json").read_bytes() == (source / "training.json").read_bytes()
    assert (out / "config.json").read_bytes() == (source / "config.json").read_bytes()
    loaded, loaded_space, context = load_gradiend(out)
    assert loaded.decoder_weight[:, 0].tolist() == pytest.approx([1.0, 0, -3.0, 0, 0, 0])
    assert loaded.decoder_bias.tolist() == [1.0, 0, 3.0, 0, 0, 0]
    assert loaded_space.names == space.names and context == CONTEXT


# ---- params -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value", "words"),
    [
        ("compare", "topk", 0, "out of range"),
        ("compare", "topk", 0.5, "expected an integer"),  # a count, not a fraction
        ("compare", "part", "bias", "expected one of 'decoder', 'encoder', 'product'"),
        ("post_prune", "topk", 0, "out of range"),
        ("post_prune", "topk", 1.5, "out of range"),
        ("post_prune", "by", "sum", "expected one of"),
        ("post_prune", "enabled", "yes", "expected true/false"),
    ],
)
def test_compare_and_post_prune_params_are_checked(section, key, value, words):
    from gradiend_core.params import load_params, parse_params

    raw = {section: {**load_params(REPO / "params.yaml").sections[section].__dict__, key: value}}
    with pytest.raises(GradiendError) as exc:
        parse_params(raw)
    assert f"'{section}.{key}'" in str(exc.value) and words in str(exc.value)
    assert "\n" not in str(exc.value)
