"""Tables and figures of the vision edge-training stages, from small stage outputs built here.

The builders mirror the structure of ``analysis.edge.stages`` outputs (pretrain, transfer, contribution
and sparse JSON files) with round numbers, so that expected KiB values and ratios can be worked by hand.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.errors import PipelineError
from analysis.tables.edge import edge_tables, scheme_text

PARAMETER_BYTES = 77824  # 76 KiB
INFERENCE_PEAK = 262144  # 256 KiB an image


def layers(batch: int, measured_classifier: int = 256) -> list[dict]:
    """Two layer rows: a frozen stem (saves nothing) and the classifier (saves its input)."""
    return [
        {"layer": "stem", "type": "ConvBN", "input_bytes": 4096 * batch, "output_bytes": 32768 * batch,
         "saved_bytes": 0, "live_bytes": 36864 * batch, "measured_bytes": 0, "stock_measured_bytes": 32768 * batch},
        {"layer": "classifier", "type": "Linear", "input_bytes": 256 * batch, "output_bytes": 20 * batch,
         "saved_bytes": 256 * batch, "live_bytes": 532 * batch, "measured_bytes": measured_classifier * batch,
         "stock_measured_bytes": 256 * batch},
    ]


def memory(trained_bytes: int, saved_per_image: int, measured_classifier: int = 256) -> dict:
    """``memory_report``-shaped reports at batch sizes 1 and 8 (momentum: one copy of the gradients)."""
    reports = {}
    for batch in (1, 8):
        saved, peak = saved_per_image * batch, (saved_per_image + INFERENCE_PEAK) * batch
        reports[str(batch)] = {
            "batch_size": batch, "parameter_bytes": PARAMETER_BYTES, "trained_parameters": trained_bytes // 4,
            "gradient_bytes": trained_bytes, "optimizer_bytes": trained_bytes,
            "analytic_saved_bytes": saved, "analytic_peak_bytes": peak,
            "measured_saved_bytes": saved + 32, "measured_outside_layers_bytes": 32,
            "stock_measured_saved_bytes": 2 * saved, "extra_bytes": 2 * trained_bytes + saved,
            "measured_extra_bytes": 2 * trained_bytes + saved + 32,
            "training_bytes": PARAMETER_BYTES + 2 * trained_bytes + peak,
            "layers": layers(batch, measured_classifier),
        }
    return reports


def transfer(mode: str, accuracy: float, trained_bytes: int, saved_per_image: int) -> dict:
    return {"mode": mode, "test": {"accuracy": accuracy, "loss": 1 - accuracy},
            "history": [{"epoch": 1, "train_accuracy": 0.5, "train_loss": 1.0}],
            "trained_parameters": trained_bytes // 4, "parameters": PARAMETER_BYTES // 4, "frugal_layers": True,
            "memory": memory(trained_bytes, saved_per_image), "seconds": 1.0}


def sparse(budget_kib: float, accuracy: float, scheme: dict, trained_bytes: int, saved_per_image: int) -> dict:
    reports = memory(trained_bytes, saved_per_image, measured_classifier=1024)  # measured above analytic
    return {"budget_kib": budget_kib, "scheme": scheme, "estimated_gain": 0.05,
            "search": {"memory_bytes": reports["8"]["extra_bytes"], "budget_bytes": int(budget_kib * 1024),
                       "cheapest": {"memory_bytes": 1000, "scheme": {"n_bias_update": 1, "weight_update": {}}},
                       "history": [{"generation": 0, "best_gain": 0.05, "best_memory_bytes": 1000}]},
            "search_seconds": 1.0, "test": {"accuracy": accuracy, "loss": 1 - accuracy},
            "history": [], "trained_parameters": trained_bytes // 4, "memory": reports, "seconds": 2.0}


def contributions(gain: str = "accuracy") -> dict:
    layers_ = ["2.expand", "10.expand"]  # the net's order, which is not alphabetical
    return {"gain": gain, "baselines": {"frozen": {"accuracy": 0.7, "loss": 0.9},
                                        "all_biases": {"accuracy": 0.8, "loss": 0.6}},
            "space": {"n_blocks": 2, "layers": layers_, "ratios": [0.5, 1.0]},
            "bias": {"0": 0.0, "2": 0.04, "1": 0.02},
            "weight": [{"layer": layer, "ratio": ratio, "gain": 0.01 * i}
                       for i, (layer, ratio) in enumerate([("10.expand", 1.0), ("10.expand", 0.5),
                                                           ("2.expand", 1.0), ("2.expand", 0.5)])],
            "units": []}


def write(path, blob) -> str:
    path.write_text(json.dumps(blob), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("edge")
    pre = write(root / "pre.json", {"test": {"accuracy": 0.97, "loss": 0.1}, "parameters": 19456, "history": []})
    # Given out of order: the tables put full first, then last, bias; sparse by budget.
    modes = [write(root / f"{mode}.json", transfer(mode, *values)) for mode, values in
             {"bias": (0.85, 256, 1024), "full": (0.95, 4096, 10240), "last": (0.6, 128, 256)}.items()]
    schemes = [write(root / f"sp{budget}.json", sparse(budget, accuracy, scheme, 512, 2048))
               for budget, accuracy, scheme in
               [(128, 0.9, {"n_bias_update": 3, "weight_update": {"6.expand": 0.5, "5.expand": 0.25}}),
                (64, 0.88, {"n_bias_update": 0, "weight_update": {}})]]
    contrib = write(root / "contrib.json", contributions())
    return {"pretrain": pre, "transfers": modes, "contributions": contrib, "sparse": schemes}


@pytest.fixture(scope="module")
def written(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    frames = edge_tables(**inputs, tables_dir=out / "tables", figures_dir=out / "figures")
    return frames, out


def test_one_row_per_method_and_batch_size_in_order(written):
    frames, out = written
    table = frames["transfer"]
    methods = ["full", "last", "bias", "sparse@64KiB", "sparse@128KiB"]
    assert list(zip(table["method"], table["batch_size"])) == [(m, b) for m in methods for b in (1, 8)]
    assert list(table["kind"]) == ["mode"] * 6 + ["sparse"] * 4
    assert len(pd.read_csv(out / "tables" / "transfer.tsv", sep="\t")) == 10


def test_memory_in_kib_and_ratios_against_full(written):
    table = written[0]["transfer"].set_index(["method", "batch_size"])
    assert (table.loc["full", ["extra_ratio_full", "training_ratio_full"]] == 1).all().all()
    bias = table.loc[("bias", 8)]
    # full at batch 8: 2 x 4096 + 8 x 10240 bytes extra = 88 KiB; bias: 2 x 256 + 8 x 1024 = 8.5 KiB.
    assert bias["extra_kib"] == 8.5 and table.loc[("full", 8), "extra_kib"] == 88
    assert bias["extra_ratio_full"] == pytest.approx(88 / 8.5)
    full_training = (PARAMETER_BYTES + 2 * 4096 + 8 * (10240 + INFERENCE_PEAK)) / 1024
    assert bias["training_ratio_full"] == pytest.approx(full_training / bias["training_kib"])
    assert bias["saved_activation_kib"] == 8 and bias["gradient_kib"] == 0.25 and bias["parameter_kib"] == 76
    assert bias["trained_parameters"] == 64 and bias["test_accuracy"] == 0.85


def test_sparse_rows_carry_budget_and_scheme(written):
    table = written[0]["transfer"].set_index(["method", "batch_size"])
    row = table.loc[("sparse@128KiB", 8)]
    assert row["budget_kib"] == 128 and row["scheme"] == "bias x3; 5.expand@0.25, 6.expand@0.5"
    assert row["search_memory_kib"] == row["extra_kib"]
    assert table.loc[("sparse@64KiB", 1), "scheme"] == "classifier only"
    assert pd.isna(table.loc[("full", 1), "budget_kib"]) and "estimated_gain_accuracy" in table.columns
    assert scheme_text({"n_bias_update": 2, "weight_update": [["3.project", 1.0]]}) == "bias x2; 3.project@1"


def test_memory_layers_match_analytic_against_measured(written):
    layers_ = written[0]["memory_layers"]
    assert len(layers_) == 5 * 2 * 2  # methods x batch sizes x layers
    sparse_classifier = (layers_["kind"] == "sparse") & (layers_["layer"] == "classifier")
    assert not layers_.loc[sparse_classifier, "match"].any()
    assert layers_.loc[~sparse_classifier, "match"].all()
    row = layers_[(layers_["method"] == "sparse@64KiB") & (layers_["batch_size"] == 8)
                  & (layers_["layer"] == "classifier")].iloc[0]
    assert (row["saved_kib"], row["measured_kib"], row["stock_measured_kib"]) == (2, 8, 2)


def test_contributions_sorted_with_the_gain_named_by_its_metric(written):
    table = written[0]["contributions"]
    assert list(table.columns) == ["unit", "k", "layer", "ratio", "gain_accuracy"]
    assert list(table["k"].iloc[:3]) == [0, 1, 2]
    assert list(zip(table["layer"].iloc[3:], table["ratio"].iloc[3:])) == [
        ("2.expand", 0.5), ("2.expand", 1.0), ("10.expand", 0.5), ("10.expand", 1.0)]


def test_markdown_and_figures_are_written(written):
    out = written[1]
    for name in ("transfer", "memory_layers", "contributions"):
        text = (out / "tables" / f"{name}.md").read_text(encoding="utf-8")
        assert text.startswith("# ") and "| --- |" in text
        assert "nan" not in text.split("\n", 2)[2] and "<NA>" not in text  # blanks where a column does not apply
    for name in ("transfer_memory", "contributions", "sparse"):
        data = (out / "figures" / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000


def test_loss_gain_names_its_column(inputs, tmp_path):
    contrib = write(tmp_path / "contrib.json", contributions("loss"))
    frames = edge_tables(inputs["pretrain"], inputs["transfers"][:1], contrib, [], tmp_path / "t", tmp_path / "f")
    assert "gain_loss" in frames["contributions"] and frames["transfer"]["extra_ratio_full"].isna().all()


def test_missing_or_malformed_inputs_name_the_file(inputs, tmp_path):
    missing = tmp_path / "nowhere" / "bn_last.json"
    with pytest.raises(PipelineError, match="bn_last.json"):
        edge_tables(inputs["pretrain"], [*inputs["transfers"], missing], inputs["contributions"], [],
                    tmp_path, tmp_path)
    broken = transfer("full", 0.9, 4, 4)
    del broken["memory"]["8"]["extra_bytes"]
    broken_path = write(tmp_path / "broken_full.json", broken)
    with pytest.raises(PipelineError, match="broken_full.json"):
        edge_tables(inputs["pretrain"], [broken_path], inputs["contributions"], [], tmp_path, tmp_path)
    garbage = tmp_path / "sp32.json"
    garbage.write_text("{not json", encoding="utf-8")
    with pytest.raises(PipelineError, match="sp32.json"):
        edge_tables(inputs["pretrain"], [], inputs["contributions"], [garbage], tmp_path, tmp_path)
    with pytest.raises(PipelineError, match="both results of full"):
        edge_tables(inputs["pretrain"], [*inputs["transfers"], broken_path], inputs["contributions"], [],
                    tmp_path, tmp_path)
    with pytest.raises(PipelineError, match="contrib_missing.json"):
        edge_tables(inputs["pretrain"], inputs["transfers"], tmp_path / "contrib_missing.json", [], tmp_path, tmp_path)
