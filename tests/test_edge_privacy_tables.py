"""Tables and figures of the federated and gradient-leakage stages, from small stage outputs built here.

The builders mirror ``federated_averaging`` results and ``leakage_stage`` outputs (the JSON and the
``.npz`` of reconstructions, keys ``<snapshot_key>_{initial,middle,final,truth}``) with 8 x 8 images.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.errors import PipelineError
from analysis.tables.edge_privacy import privacy_tables

SETTINGS = {"clients": 4, "rounds": 2, "local_steps": 5, "batch_size": 8, "lr": 0.05, "fraction": 1.0,
            "alpha": 0.5, "min_examples": 2, "activation": "relu", "threads": 1, "seed": 0}


def federated(partition: str, accuracies: list[float]) -> dict:
    rounds = [{"round": r, "test_accuracy": a, "test_loss": 2.0 - a, "seconds": 0.1 + 2 * r}
              | ({"train_loss": 1.5 - a} if r else {}) for r, a in enumerate(accuracies)]
    return {"partition": partition, "clients": 4, "settings": SETTINGS, "client_examples": [10] * 4,
            "client_label_histogram": [[5, 5, 0]] * 4, "rounds": rounds, "final_test_accuracy": accuracies[-1],
            "seconds": 5.0, "round_seconds_median": 2.0, "first_round_seconds": 2.0}


def attack(defense: str, strength: float, method: str, batch: int, attempt: int, psnr: float, accuracy: float) -> dict:
    return {"defense": defense, "strength": strength, "method": method, "batch_size": batch, "attack": attempt,
            "mse": 10 ** (-psnr / 10), "psnr": psnr, "ssim": psnr / 100, "label_accuracy": 1.0,
            "gradient_distance": 0.01, "labels_true": [0] * batch, "labels_predicted": [0] * batch,
            "seconds": 1.0 + attempt, "evaluations": 100, "curve": [], "model_test_accuracy": accuracy,
            "snapshot_key": f"{method}_b{batch}_s{strength:g}_a{attempt}"}


def write_leakage(root, defense: str, attacks: list[dict], channels: int = 1) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    arrays = {f"{a['snapshot_key']}_{stage}": rng.random((a["batch_size"], channels, 8, 8), dtype=np.float32)
              for a in attacks for stage in ("initial", "middle", "final", "truth")}
    np.savez_compressed(root / f"{defense}.npz", **arrays)
    blob = {"defense": defense, "attacks": attacks, "settings": {"iterations": 10, "seed": 0}}
    return write(root / f"{defense}.json", blob), str(root / f"{defense}.npz")


def write(path, blob) -> str:
    path.write_text(json.dumps(blob), encoding="utf-8")
    return str(path)


def none_attacks() -> list[dict]:
    # Two attacks a setting: the table shows their means (dlg batch 1: PSNR (30 + 50) / 2 = 40 dB).
    return [attack("none", 0.0, method, batch, attempt, psnr + 20 * attempt, 0.9)
            for method in ("idlg", "dlg") for batch, psnr in ((1, 30.0), (8, 5.0)) for attempt in (0, 1)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("privacy")
    feds = [write(root / f"{p}.json", federated(p, acc)) for p, acc in
            (("dirichlet", [0.3, 0.5, 0.6]), ("iid", [0.3, 0.6, 0.8]))]  # given out of order
    runs = [write_leakage(root, "prune", [attack("prune", s, m, 1, 0, p, a) for s, p, a in
                                          ((0.99, 5.0, 0.85), (0.5, 25.0, 0.9)) for m in ("dlg", "idlg")]),
            write_leakage(root, "none", none_attacks()),
            write_leakage(root, "gaussian", [attack("gaussian", s, m, 1, 0, p, a) for s, p, a in
                                             ((0.1, 8.0, 0.5), (0.001, 35.0, 0.88)) for m in ("idlg", "dlg")])]
    return {"federated": feds, "leakage": [j for j, _ in runs], "snapshots": [n for _, n in runs]}


@pytest.fixture(scope="module")
def written(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return privacy_tables(**inputs, tables_dir=out / "tables", figures_dir=out / "figures"), out


def test_federated_rows_per_partition_and_round(written):
    frames, out = written
    table = frames["federated"]
    assert list(table.columns) == ["partition", "clients", "round", "test_accuracy", "test_loss", "train_loss",
                                   "seconds", "round_seconds"]
    assert list(zip(table["partition"], table["round"])) == [(p, r) for p in ("iid", "dirichlet") for r in range(3)]
    assert table["train_loss"].isna().tolist() == [True, False, False] * 2
    assert table.loc[2, "test_accuracy"] == 0.8 and table.loc[2, "round_seconds"] == pytest.approx(2.0)
    written_back = pd.read_csv(out / "tables" / "federated.tsv", sep="\t")
    assert len(written_back) == 6 and written_back["train_loss"].isna().sum() == 2
    title = (out / "tables" / "federated.md").read_text(encoding="utf-8").splitlines()[0]
    assert "4 clients" in title and "5 local SGD steps" in title and "alpha 0.5" in title and "2.00 s" in title


def test_leakage_averages_over_attacks(written):
    table = written[0]["leakage"].set_index(["defense", "strength", "method", "batch_size"])
    row = table.loc[("none", 0.0, "dlg", 1)]
    assert row["n_attacks"] == 2 and row["psnr_db"] == pytest.approx(40.0) and row["seconds"] == pytest.approx(1.5)
    assert row["mse"] == pytest.approx((1e-3 + 1e-5) / 2) and row["model_test_accuracy"] == 0.9
    assert table.loc[("gaussian", 0.1, "idlg", 1), "n_attacks"] == 1


def test_leakage_order_and_defended_flag(written):
    frames, out = written
    table = frames["leakage"]
    assert list(zip(table["defense"], table["strength"], table["method"], table["batch_size"])) == [
        ("none", 0.0, "dlg", 1), ("none", 0.0, "dlg", 8), ("none", 0.0, "idlg", 1), ("none", 0.0, "idlg", 8),
        *[("gaussian", s, m, 1) for s in (0.001, 0.1) for m in ("dlg", "idlg")],
        *[("prune", s, m, 1) for s in (0.5, 0.99) for m in ("dlg", "idlg")]]
    # Below 20 dB: batch 8 without defense ((5 + 25) / 2 = 15 dB), gaussian 0.1 (8 dB), prune 0.99 (5 dB).
    assert table["defended"].tolist() == [False, True] * 2 + [False] * 2 + [True] * 2 + [False] * 2 + [True] * 2
    assert "20 dB" in (out / "tables" / "leakage.md").read_text(encoding="utf-8").splitlines()[0]


def test_tables_and_figures_are_written(written):
    out = written[1]
    for name in ("federated", "leakage"):
        assert (out / "tables" / f"{name}.tsv").stat().st_size > 0
        assert (out / "tables" / f"{name}.md").read_text(encoding="utf-8").startswith("# ")
    for name in ("federated", "leakage_reconstructions", "leakage_defenses"):
        data = (out / "figures" / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000


def test_rgb_reconstructions(inputs, tmp_path):
    rgb = write_leakage(tmp_path, "none", none_attacks(), channels=3)
    privacy_tables(inputs["federated"][:1], [rgb[0]], [rgb[1]], tmp_path / "t", tmp_path / "f")
    assert (tmp_path / "f" / "leakage_reconstructions.png").stat().st_size > 1000


def test_missing_or_malformed_inputs_name_the_file(inputs, tmp_path):
    feds, leaks, snaps = inputs["federated"], inputs["leakage"], inputs["snapshots"]
    with pytest.raises(PipelineError, match="nowhere.json"):
        privacy_tables([*feds, tmp_path / "nowhere.json"], leaks, snaps, tmp_path, tmp_path)
    with pytest.raises(PipelineError, match="gone.npz"):
        privacy_tables(feds, leaks, [*snaps[:-1], tmp_path / "gone.npz"], tmp_path, tmp_path)
    broken = none_attacks()
    del broken[1]["psnr"]
    broken_json, broken_npz = write_leakage(tmp_path, "none", broken)
    with pytest.raises(PipelineError, match=r"none\.json.*psnr"):
        privacy_tables(feds, [broken_json], [broken_npz], tmp_path, tmp_path)
    np.savez(tmp_path / "empty.npz", other=np.zeros(1))  # lacks the attacks' images
    good_none = leaks[1]
    with pytest.raises(PipelineError, match="empty.npz"):
        privacy_tables(feds, [good_none], [str(tmp_path / "empty.npz")], tmp_path, tmp_path)
    rounds_missing = write(tmp_path / "iid_bad.json", {**federated("iid", [0.1]), "rounds": [{"round": 0}]})
    with pytest.raises(PipelineError, match="iid_bad.json"):
        privacy_tables([rounds_missing], leaks, snaps, tmp_path, tmp_path)
    with pytest.raises(PipelineError, match="both results of iid"):
        privacy_tables([feds[1], feds[1]], leaks, snaps, tmp_path, tmp_path)


def test_the_schema_offers_the_names_the_stages_know():
    """The config's enums and the stages' names (analysis/edge/names.py) are the same lists."""
    from analysis import config as config_lib
    from analysis.edge import names

    edge = config_lib.load_schema()["properties"]["edge"]["properties"]
    assert edge["transfer"]["properties"]["modes"]["items"]["enum"] == list(names.MODES)
    assert edge["federated"]["properties"]["partitions"]["items"]["enum"] == list(names.PARTITIONS)
    assert set(edge["leakage"]["properties"]["defenses"]["properties"]) == set(names.DEFENSES) - {"none"}
    assert edge["leakage"]["properties"]["methods"]["items"]["enum"] == list(names.METHODS)
