"""Federated averaging (Flower simulation) and deep leakage from gradients with its defenses."""

from __future__ import annotations

import copy
import importlib
import inspect
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from analysis import config as config_lib
from analysis.config import settings_from
from analysis.edge import leakage
from analysis.edge.data import ImageSet, load_task
from analysis.edge.federated import (CLIENT_RECORD, PINNED_RUN_SIMULATION, RUN_SIMULATION_DEPRECATION,
                                     FederatedSettings, federated_averaging, in_client_order, local_training,
                                     partition, pinned_run_simulation)
from analysis.edge.nets import LeNet
from analysis.errors import ConfigError, PipelineError


@pytest.fixture(scope="module")
def digits():
    return load_task({"dataset": "digits"}, image_size=16, channels=1, seed=1)


# --- partitions -----------------------------------------------------------------------------------

def classes_per_client(labels, parts):
    return np.mean([len(np.unique(labels[p])) for p in parts])


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_cover_every_example_once(scheme):
    labels = np.repeat(np.arange(10), 50)
    parts = partition(labels, 8, scheme, alpha=0.3, seed=4, min_examples=5)
    assert len(parts) == 8 and min(len(p) for p in parts) >= 5
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(500))
    again = partition(labels, 8, scheme, alpha=0.3, seed=4, min_examples=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_dirichlet_clients_see_fewer_classes_than_iid_ones():
    labels = np.repeat(np.arange(10), 100)
    iid = partition(labels, 10, "iid", seed=1)
    assert max(len(p) for p in iid) - min(len(p) for p in iid) <= 1
    skewed = partition(labels, 10, "dirichlet", alpha=0.1, seed=1)
    assert classes_per_client(labels, skewed) < 6 < classes_per_client(labels, iid)


def test_partition_errors_name_the_value():
    labels = np.repeat(np.arange(3), 4)
    with pytest.raises(PipelineError, match="unknown partition 'shards'"):
        partition(labels, 2, "shards")
    with pytest.raises(PipelineError, match="alpha = 0.001 over 6 clients"):
        partition(labels, 6, "dirichlet", alpha=0.001, min_examples=2)
    with pytest.raises(PipelineError, match="edge.federated.clients = 7: 12 training images"):
        settings_from(FederatedSettings, clients=7).check(12)
    with pytest.raises(PipelineError, match="edge.federated.fraction = 1.5"):
        settings_from(FederatedSettings, fraction=1.5).check(100)


def test_local_training_lowers_the_loss(digits):
    torch.manual_seed(0)
    net = LeNet(1, 10, 16, activation="relu")
    generator = torch.Generator().manual_seed(0)
    first = local_training(net, digits.train.images, digits.train.labels, 5, 32, 0.05, generator)
    for _ in range(20):
        last = local_training(net, digits.train.images, digits.train.labels, 5, 32, 0.05, generator)
    assert last < first


class FlowerRecords(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.slow
def test_flower_fedavg_is_the_example_weighted_mean_of_the_client_updates(digits, caplog):
    """One round, one full-batch local step: the global model must be the weighted mean we compute."""
    train = ImageSet(digits.train.images[:30], digits.train.labels[:30], digits.train.classes)
    settings = settings_from(FederatedSettings, clients=2, rounds=1, local_steps=1, batch_size=1000, lr=0.1, seed=3, threads=2)
    flower = FlowerRecords()
    logging.getLogger("flwr").addHandler(flower)
    try:
        with caplog.at_level(logging.INFO, logger="analysis.edge.federated"):
            result = federated_averaging(train, digits.test, "iid", settings, image_size=16)
    finally:
        logging.getLogger("flwr").removeHandler(flower)
    # The pinned call's deprecation warning is dropped (and only it: Flower's round log is there); ours says why.
    assert not [m for m in flower.messages if RUN_SIMULATION_DEPRECATION in m]
    assert any("aggregate_train: Received 2 results" in m for m in flower.messages)
    assert PINNED_RUN_SIMULATION in caplog.messages
    parts = partition(train.labels.numpy(), 2, "iid", seed=3)
    torch.manual_seed(3)
    initial = LeNet(1, 10, 16, activation="relu")
    states, weights = [], []
    for part in parts:
        net = copy.deepcopy(initial)
        local_training(net, train.images[part], train.labels[part], 1, 1000, 0.1, torch.Generator().manual_seed(0))
        states.append(net.state_dict())
        weights.append(len(part))
    mean = {k: sum(w * s[k] for w, s in zip(weights, states)) / sum(weights) for k in states[0]}
    expected = copy.deepcopy(initial)
    expected.load_state_dict(mean)
    expected.eval()
    with torch.no_grad():
        accuracy = float((expected(digits.test.images).argmax(1) == digits.test.labels).float().mean())
    assert [r["round"] for r in result["rounds"]] == [0, 1]
    assert result["rounds"][1]["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert result["client_examples"] == [15, 15]


def test_client_updates_are_summed_in_client_order_whatever_their_arrival():
    class Reply:
        def __init__(self, client=None):
            self.client = client
            self.content = None if client is None else {CLIENT_RECORD: {"partition-id": client}}

        def has_error(self):
            return self.client is None

    arrived = [Reply(3), Reply(), Reply(0), Reply(2), Reply(1)]
    assert [r.client for r in in_client_order(arrived)] == [0, 1, 2, 3, None]
    assert [r.client for r in in_client_order(arrived[::-1])] == [0, 1, 2, 3, None]


ROOT = Path(__file__).resolve().parent.parent


def test_the_pinned_flower_still_has_run_simulation_as_the_stage_calls_it():
    """federated_averaging keeps Flower's deprecated run_simulation (measured against `flwr run`: see
    analysis/edge/federated.py); this fails when the pinned Flower drops it or the arguments we pass."""
    import flwr
    from flwr.simulation import run_simulation

    lock = re.search(r"^flwr==(\S+)$", (ROOT / "envs" / "requirements.lock").read_text(), re.M)
    pin = re.search(r'"flwr\[simulation\]==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert lock and pin and flwr.__version__ == lock.group(1) == pin.group(1)
    parameters = inspect.signature(run_simulation).parameters
    assert {"server_app", "client_app", "num_supernodes", "backend_config"} <= set(parameters)
    assert all(parameters[name].kind is not inspect.Parameter.POSITIONAL_ONLY for name in parameters)


def test_only_the_run_simulation_deprecation_is_dropped(monkeypatch):
    """Flower's own warning (not a copy of its text) goes through the filter; any other record passes."""
    module = importlib.import_module("flwr.simulation.run_simulation")
    monkeypatch.setattr(module, "_run_simulation", lambda **kwargs: None)  # no Ray
    monkeypatch.setattr(module, "event", lambda *args, **kwargs: None)  # no telemetry
    flower = logging.getLogger("flwr")
    records = FlowerRecords()
    flower.addHandler(records)
    try:
        module.run_simulation(server_app=None, client_app=None, num_supernodes=1)
        assert [m for m in records.messages if RUN_SIMULATION_DEPRECATION in m], "Flower no longer warns so"
        records.messages.clear()
        with pinned_run_simulation():
            module.run_simulation(server_app=None, client_app=None, num_supernodes=1)
            flower.warning("DEPRECATED FEATURE: something else")
        assert records.messages == ["DEPRECATED FEATURE: something else"]
        records.messages.clear()
        module.run_simulation(server_app=None, client_app=None, num_supernodes=1)
        assert records.messages, "the filter outlived the call"
    finally:
        flower.removeHandler(records)


# --- defenses ------------------------------------------------------------------------------------

def test_defenses_transform_the_update():
    torch.manual_seed(0)
    grads = [torch.randn(200, 50), torch.randn(1000)]
    g = torch.Generator().manual_seed(1)
    assert all(torch.equal(a, b) for a, b in zip(leakage.defend(grads, "none", 0, g), grads))
    noisy = leakage.defend(grads, "gaussian", 0.5, g)
    assert (noisy[0] - grads[0]).std().item() == pytest.approx(0.5, rel=0.05)
    laplace = leakage.defend(grads, "laplacian", 0.5, g)
    assert (laplace[0] - grads[0]).std().item() == pytest.approx(0.5 * math.sqrt(2), rel=0.05)
    pruned = leakage.defend(grads, "prune", 0.99, g)
    assert [int((p != 0).sum()) for p in pruned] == [100, 10]
    kept = pruned[0] != 0
    assert grads[0].abs()[kept].min() >= grads[0].abs()[~kept].max()


@pytest.mark.parametrize("name, strength, message", [
    ("dropout", 0.1, "unknown defense 'dropout'"),
    ("prune", 1.0, "defense prune: ratio 1.0 is not in"),
    ("gaussian", -1, "defense gaussian: scale -1 is negative"),
])
def test_bad_defense_is_named(name, strength, message):
    with pytest.raises(PipelineError, match=message):
        leakage.defend([torch.zeros(3)], name, strength, torch.Generator())


# --- attacks -------------------------------------------------------------------------------------

def test_idlg_reads_the_label_of_one_image_exactly(digits):
    for seed in range(5):
        net = leakage.attacked_net(1, 10, 16, seed)
        x, y = digits.test.images[seed:seed + 1], digits.test.labels[seed:seed + 1]
        assert torch.equal(leakage.infer_labels(leakage.gradients(net, x, y), 1, 10), y)


def test_idlg_batch_labels_are_the_counts_of_the_bias_gradient(digits):
    net = leakage.attacked_net(1, 10, 16, 0)
    x, y = digits.test.images[:8], digits.test.labels[:8]
    labels = leakage.infer_labels(leakage.gradients(net, x, y), 8, 10)
    assert len(labels) == 8
    assert (np.bincount(labels.numpy(), minlength=10) == np.bincount(y.numpy(), minlength=10)).mean() >= 0.8


def test_metrics():
    image = torch.rand(1, 16, 16)
    assert leakage.ssim(image, image) == pytest.approx(1.0)
    assert leakage.ssim(image, torch.rand(1, 16, 16)) < 0.3
    assert leakage.psnr(torch.zeros(1, 4, 4), torch.full((1, 4, 4), 0.1)) == pytest.approx(20.0)  # MSE 0.01
    truth = torch.rand(3, 1, 8, 8)
    assert leakage.match(truth[[2, 0, 1]], truth).tolist() == [1, 2, 0]


@pytest.mark.slow
@pytest.mark.parametrize("method", leakage.METHODS)
def test_one_image_is_recovered_without_defense_and_not_through_pruning(digits, method):
    x, y = digits.test.images[3:4], digits.test.labels[3:4]
    net = leakage.attacked_net(1, 10, 16, 0)
    grads = leakage.gradients(net, x, y)
    settings = settings_from(leakage.AttackSettings, iterations=30, record_every=10)
    clear = leakage.attack(net, grads, x, y, method, settings)
    assert clear.metrics["psnr"] > 30 and clear.metrics["label_accuracy"] == 1.0
    assert set(clear.snapshots) == {"initial", "middle", "final"} and clear.curve[-1]["step"] == 30
    pruned = leakage.defend(grads, "prune", 0.99, torch.Generator().manual_seed(0))
    assert leakage.attack(net, pruned, x, y, method, settings).metrics["psnr"] < 15


def test_training_through_99_percent_pruning_keeps_the_accuracy(digits):
    common = dict(steps=400, batch_size=16, lr=0.1, seed=0, classes=10)
    args = (digits.train.images, digits.train.labels, digits.test.images, digits.test.labels)
    clear = leakage.train_with_defense(*args, "none", 0, **common)["test_accuracy"]
    pruned = leakage.train_with_defense(*args, "prune", 0.99, **common)["test_accuracy"]
    assert clear > 0.8 and pruned > clear - 0.05


# --- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("edge, message", [
    ({"federated": {"clients": 0}}, "edge.federated.clients"),
    ({"federated": {"task": {"dataset": "idx", "path": "/nowhere/mnist"}}},
     "'edge.federated.task.path': dataset directory /nowhere/mnist does not exist"),
    ({"leakage": {"task": {"dataset": "folder", "path": "/nowhere/images"}}},
     "'edge.leakage.task.path': dataset directory /nowhere/images does not exist"),
    ({"federated": {"partitions": ["shards"]}}, "edge.federated.partitions.0"),
    ({"leakage": {"defenses": {"dropout": [0.1]}}}, "unknown key 'edge.leakage.defenses.dropout'"),
    ({"leakage": {"defenses": {"prune": [0.5, 1.0]}}}, "edge.leakage.defenses.prune.1"),
    ({"leakage": {"methods": ["gradinversion"]}}, "edge.leakage.methods.0"),
])
def test_bad_privacy_config_names_the_key(edge, message):
    cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / "config.yaml").read_text())
    cfg["edge"] = edge
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(cfg)
