"""Tables and figures of the compression stages, from small stage outputs built here.

The builders mirror ``pruning_stage``, ``quantization_stage`` and ``distillation_stage`` outputs
(``size_report`` fields, histories) with round sizes: the reference is 80 KiB (64 KiB of weights),
so that compression ratios can be worked by hand.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.errors import PipelineError
from analysis.tables.edge_compression import compression_tables

HISTORY = [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8}]


def sizes(weight_kib: float, other_kib: float = 16.0, sparsity: float = 0.0, weights: int = 16384) -> dict:
    return {"weight_kib": weight_kib, "other_kib": other_kib, "size_kib": weight_kib + other_kib,
            "weights": weights, "nonzero_weights": round(weights * (1 - sparsity)), "sparsity": sparsity}


REFERENCE = {"test_accuracy": 0.9, **sizes(64.0)}


def pruning() -> dict:
    scan = [{"layer": layer, "sparsity": s, "validation_accuracy": 0.95 - drop, "accuracy_drop": drop}
            for layer, drops in (("stem", (0.0, 0.3)), ("classifier", (0.01, 0.02)))
            for s, drop in zip((0.5, 0.9), drops)]
    fine = [{"method": "sensitivity", "target_sparsity": None, "test_accuracy_pruned": 0.5,
             "test_accuracy_finetuned": 0.85, "history": HISTORY, **sizes(48.0, sparsity=0.25)}]
    fine += [{"method": "global", "target_sparsity": s, "test_accuracy_pruned": 0.9 - s / 2,
              "test_accuracy_finetuned": 0.9 - s / 4, "history": HISTORY, **sizes(64.0 * (1 - s), sparsity=s)}
             for s in (0.75, 0.5)]  # out of order: the table sorts them
    channels = [{"channel_ratio": 0.5, "test_accuracy_pruned": 0.3, "test_accuracy_finetuned": 0.88,
                 "history": HISTORY, "macs": 500, **sizes(28.0, other_kib=12.0, weights=7168)}]
    return {"reference": {**REFERENCE, "macs": 1000}, "sensitivity": scan,
            "sensitivity_sparsities": {"stem": 0.5, "classifier": 0.9}, "fine_grained": fine, "channels": channels,
            "seconds": 1.0}


def quantization() -> dict:
    kmeans = [{"bits": b, "test_accuracy_quantized": q, "test_accuracy_finetuned": f, "history": HISTORY,
               **sizes(w)} for b, q, f, w in ((4, 0.7, 0.9, 4.0), (1, 0.2, 0.3, 1.0))]
    linear = [{"bits": 8, "test_accuracy": 0.9, **sizes(16.0)}]
    return {"reference": REFERENCE, "kmeans": kmeans, "linear": linear, "seconds": 1.0}


def distillation() -> dict:
    students = [{"method": "distilled", "temperature": 2, "alpha": 0.9, "test_accuracy": 0.8, "history": HISTORY},
                {"method": "labels only", "temperature": None, "alpha": 0.0, "test_accuracy": 0.7,
                 "history": HISTORY}]
    return {"teacher": REFERENCE, "student": sizes(12.0, other_kib=4.0, weights=3072), "student_width": 0.5,
            "epochs": 2, "students": students, "seconds": 1.0}


def write(path, blob) -> str:
    path.write_text(json.dumps(blob), encoding="utf-8")
    return str(path)


def inputs(root, **changed) -> list[str]:
    blobs = {"pruning": pruning(), "quantization": quantization(), "distillation": distillation(), **changed}
    return [write(root / f"{name}.json", blob) for name, blob in blobs.items()]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("compression")
    tables = compression_tables(*inputs(root), root / "tables", root / "figures")
    return root, tables


def test_rows_in_order(result):
    frame = result[1]["compression"]
    assert list(zip(frame["family"], frame["setting"])) == [
        ("reference", "float32 source net"), ("fine-grained pruning", "global 0.5"),
        ("fine-grained pruning", "global 0.75"), ("fine-grained pruning", "sensitivity (per-layer scan)"),
        ("channel pruning", "50% hidden channels removed"), ("k-means quantization", "1 bit"),
        ("k-means quantization", "4 bits"), ("linear quantization", "8 bits"),
        ("distillation", "student, labels only"), ("distillation", "student T=2")]


def test_ratios_bits_and_accuracies(result):
    frame = result[1]["compression"].set_index("setting")
    # 80 KiB / (weights + 16 KiB of biases and batch norm)
    assert frame["compression_ratio"].to_dict() == pytest.approx({
        "float32 source net": 1.0, "global 0.5": 80 / 48, "global 0.75": 2.5, "sensitivity (per-layer scan)": 80 / 64,
        "50% hidden channels removed": 2.0, "1 bit": 80 / 17, "4 bits": 4.0, "8 bits": 2.5,
        "student, labels only": 5.0, "student T=2": 5.0})
    assert frame["bits_per_weight"].tolist() == [32, 32, 32, 32, 32, 1, 4, 8, 32, 32]
    assert frame.loc["4 bits", "test_accuracy_before_finetune"] == pytest.approx(0.7)
    assert frame.loc["4 bits", "test_accuracy"] == pytest.approx(0.9)
    assert frame.loc["student T=2", "accuracy_change"] == pytest.approx(-0.1)  # against the teacher
    assert frame.loc["global 0.75", "accuracy_change"] == pytest.approx(-0.1875)
    assert pd.isna(frame.loc["8 bits", "test_accuracy_before_finetune"])  # linear: not fine-tuned
    assert frame["macs"].dropna().to_dict() == {"float32 source net": 1000, "50% hidden channels removed": 500}


def test_sensitivity_table(result):
    scan = result[1]["sensitivity"]
    assert scan.columns.tolist() == ["layer", "sparsity", "validation_accuracy", "accuracy_drop", "chosen_sparsity"]
    assert scan["layer"].tolist() == ["stem", "stem", "classifier", "classifier"]  # the net's order
    assert scan["chosen_sparsity"].tolist() == [0.5, 0.5, 0.9, 0.9]


def test_files_written(result):
    root = result[0]
    for name in ("compression", "sensitivity"):
        assert (root / "tables" / f"{name}.md").read_text().startswith("# ")
        assert (root / "figures" / f"{name}.png").stat().st_size > 10_000
    tsv = pd.read_csv(root / "tables" / "compression.tsv", sep="\t")
    assert len(tsv) == 10 and tsv["macs"].isna().sum() == 8  # blank where not recorded
    assert len(pd.read_csv(root / "tables" / "sensitivity.tsv", sep="\t")) == 4


def test_max_drop_named_when_recorded(tmp_path):
    tables = compression_tables(*inputs(tmp_path, pruning={**pruning(), "max_accuracy_drop": 0.02}),
                                tmp_path / "t", tmp_path / "f")
    assert "sensitivity (max drop 0.02)" in tables["compression"]["setting"].tolist()


def test_missing_file(tmp_path):
    paths = inputs(tmp_path)
    with pytest.raises(PipelineError, match="absent.json does not exist"):
        compression_tables(paths[0], str(tmp_path / "absent.json"), paths[2], tmp_path / "t", tmp_path / "f")


@pytest.mark.parametrize("name, blob, message", [
    ("quantization", {"reference": REFERENCE, "kmeans": [{"bits": 4}], "linear": []}, "quantization.json is malformed"),
    ("distillation", {"teacher": REFERENCE}, "distillation.json lacks student"),
    ("pruning", {**pruning(), "sensitivity_sparsities": {"stem": 0.5}}, "pruning.json.*chosen sparsity"),
    ("distillation", {**distillation(), "teacher": {**REFERENCE, "size_kib": 40.0}}, "different source nets"),
])
def test_malformed(tmp_path, name, blob, message):
    with pytest.raises(PipelineError, match=message):
        compression_tables(*inputs(tmp_path, **{name: blob}), tmp_path / "t", tmp_path / "f")


def test_unreadable_json(tmp_path):
    paths = inputs(tmp_path)
    (tmp_path / "pruning.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(PipelineError, match="pruning.json is not readable JSON"):
        compression_tables(*paths, tmp_path / "t", tmp_path / "f")
