"""The compression table and figures, from small stage outputs built here."""

from __future__ import annotations

import json

import pytest

from analysis.errors import PipelineError
from analysis.tables.edge_compression import compression_tables

REFERENCE = {"test_accuracy": 1.0, "size_kib": 80.0, "weight_kib": 72.0, "sparsity": 0.0, "macs": 1000}


def sizes(size: float, sparsity: float = 0.0) -> dict:
    return {"size_kib": size, "weight_kib": size - 8.0, "sparsity": sparsity}


def write_inputs(tmp_path, teacher_size: float = 80.0):
    pruning = {
        "reference": REFERENCE, "max_accuracy_drop": 0.02,
        "sensitivity": [{"layer": layer, "sparsity": s, "validation_accuracy": 1.0 - d, "accuracy_drop": d}
                        for layer in ("stem", "classifier") for s, d in ((0.5, 0.0), (0.9, 0.3))],
        "sensitivity_sparsities": {"stem": 0.5, "classifier": 0.5},
        "fine_grained": [
            {"method": "global", "target_sparsity": 0.8, "test_accuracy_pruned": 0.2, "test_accuracy_finetuned": 0.7,
             **sizes(20.0, 0.8)},
            {"method": "sensitivity", "target_sparsity": None, "test_accuracy_pruned": 0.5,
             "test_accuracy_finetuned": 0.99, **sizes(40.0, 0.5)}],
        "channels": [{"channel_ratio": 0.5, "test_accuracy_pruned": 0.3, "test_accuracy_finetuned": 0.98, "macs": 500,
                      **sizes(40.0)}],
    }
    quantization = {"reference": REFERENCE,
                    "kmeans": [{"bits": 2, "test_accuracy_quantized": 0.2, "test_accuracy_finetuned": 0.98, **sizes(16.0)}],
                    "linear": [{"bits": 4, "test_accuracy": 1.0, **sizes(25.0)}]}
    distillation = {"teacher": {"test_accuracy": 1.0, "size_kib": teacher_size}, "student": sizes(20.0),
                    "student_width": 0.5, "epochs": 2,
                    "students": [{"method": "distilled", "temperature": 4, "alpha": 0.9, "test_accuracy": 0.95},
                                 {"method": "labels only", "temperature": None, "alpha": 0.0, "test_accuracy": 0.97}]}
    paths = []
    for name, blob in (("pruning", pruning), ("quantization", quantization), ("distillation", distillation)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(blob))
        paths.append(path)
    return paths


def test_one_row_per_model_reference_first(tmp_path):
    paths = write_inputs(tmp_path)
    tables = compression_tables(*paths, tmp_path / "tables", tmp_path / "figures")
    frame = tables["compression"]
    assert list(frame["family"]) == ["reference", "fine-grained pruning", "fine-grained pruning", "channel pruning",
                                     "k-means quantization", "linear quantization", "distillation", "distillation"]
    assert frame.iloc[0]["compression_ratio"] == 1
    assert list(frame["setting"][1:3]) == ["global 0.8", "sensitivity (max drop 0.02)"]
    kmeans = frame[frame["family"] == "k-means quantization"].iloc[0]
    assert kmeans["compression_ratio"] == pytest.approx(5.0) and kmeans["bits_per_weight"] == 2
    assert kmeans["accuracy_change"] == pytest.approx(-0.02)
    assert list(frame[frame["family"] == "distillation"]["setting"]) == ["student, labels only", "student T=4"]
    scan = tables["sensitivity"]
    assert len(scan) == 4 and set(scan["chosen_sparsity"]) == {0.5}
    for name in ("compression.tsv", "compression.md", "sensitivity.tsv", "sensitivity.md"):
        assert (tmp_path / "tables" / name).stat().st_size > 0
    for name in ("compression.png", "sensitivity.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 10_000


def test_missing_and_mismatched_inputs_are_named(tmp_path):
    pruning, quantization, distillation = write_inputs(tmp_path)
    with pytest.raises(PipelineError, match="nowhere.json"):
        compression_tables(pruning, tmp_path / "nowhere.json", distillation, tmp_path / "t", tmp_path / "f")
    other = write_inputs(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path, teacher_size=50.0)
    with pytest.raises(PipelineError, match="compress different source nets"):
        compression_tables(pruning, quantization, other[2], tmp_path / "t", tmp_path / "f")
