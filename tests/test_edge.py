"""Vision edge-training stages: frugal layers, TinyTL memory rules, transfer modes, sparse search."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from analysis import config as config_lib
from analysis.edge import nets, stages
from analysis.edge.layers import ConvBN, ReLU6, avg_pool, pack_bits, unpack_bits
from analysis.edge.nets import LeNet, MobileNet
from analysis.edge.sparse import SparseSettings, contributions, scheme_memory
from analysis.edge.train import evaluate, fit
from analysis.edge.transfer import MODES, apply_mode, apply_sparse, memory_report
from analysis.errors import ConfigError, PipelineError
from analysis.selection.search import SparseScheme
from tests.builders import transfer_training

SHAPE = (1, 32, 32)


def small_net(frugal: bool = True, classes: int = 4) -> MobileNet:
    torch.manual_seed(0)
    net = MobileNet(1, classes, stages=((1, 8, 1, 1), (4, 12, 2, 2), (4, 16, 1, 2)), head_channels=32, frugal=frugal)
    with torch.no_grad():  # non-trivial running statistics, as after pretraining
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return net


def twins(mode: str) -> tuple[MobileNet, MobileNet]:
    frugal, stock = small_net(True), small_net(False)
    stock.load_state_dict(frugal.state_dict())
    return apply_mode(frugal, mode, 3, seed=1), apply_mode(stock, mode, 3, seed=1)


# --- frugal layers ---------------------------------------------------------------------------

def test_bit_mask_round_trip_and_size():
    mask = torch.rand(3, 5, 7) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_bits(packed, mask.numel()).view(mask.shape), mask)


@pytest.mark.parametrize("groups", [1, 6])
def test_partial_update_gradients_are_exact(groups):
    torch.manual_seed(0)
    layer = ConvBN(6, 6 if groups > 1 else 5, 3, stride=2, groups=groups, bn=False).double()
    layer.set_update_ratio(0.5)
    layer.delta.data.normal_()
    layer.conv.weight.requires_grad_(False)
    x = torch.randn(2, 6, 7, 7, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, d, b: layer(x), (x, layer.delta, layer.conv.bias))


@pytest.mark.parametrize("mode", MODES)
def test_frugal_and_stock_layers_compute_the_same_outputs_and_gradients(mode):
    frugal, stock = twins(mode)
    frugal.train(), stock.train()
    for net in (frugal, stock):
        for module in net.modules():
            if isinstance(module, ConvBN) and module.bn_frozen:
                module.bn.eval()
    x = torch.rand(4, *SHAPE)
    y = torch.tensor([0, 1, 2, 1])
    losses = [F.cross_entropy(net(x), y) for net in (frugal, stock)]
    for loss in losses:
        loss.backward()
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    grads = {n: p.grad for n, p in frugal.named_parameters() if p.requires_grad}
    assert grads
    for name, p in stock.named_parameters():
        if p.requires_grad:
            assert torch.allclose(grads[name], p.grad, atol=1e-4), name


def test_relu6_and_pooling_keep_only_a_mask():
    from analysis.selection.memory import saved_for_backward

    x = (torch.randn(8, 16, 16, 16) * 4).requires_grad_()
    relu = ReLU6()
    assert saved_for_backward(relu, lambda: relu(x).sum())["saved_bytes"] == x.numel() // 8
    pool = nn.Module()
    assert saved_for_backward(pool, lambda: avg_pool(x, 2).sum())["saved_bytes"] == 0
    assert saved_for_backward(pool, lambda: avg_pool(x, 2, frugal=False).sum())["saved_bytes"] == x.numel() * 4


def test_lite_residual_starts_as_identity():
    net = small_net().eval()
    x = torch.rand(2, *SHAPE)
    before = net(x)
    for block in net.blocks:
        block.add_lite_residual()
    assert torch.equal(before, net(x))


# --- TinyTL memory rules ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [1, 8])
def test_analytic_memory_equals_measured_bytes_per_layer(mode, batch):
    net = apply_mode(small_net(), mode, 3)
    report = memory_report(net, batch, SHAPE, 3)
    for row in report["layers"]:
        assert row["saved_bytes"] == row["measured_bytes"], row
    assert report["analytic_saved_bytes"] + report["measured_outside_layers_bytes"] == report["measured_saved_bytes"]


def test_memory_rules_per_mode():
    reports = {mode: memory_report(apply_mode(small_net(), mode, 3), 8, SHAPE, 3) for mode in MODES}
    layers = {mode: {row["layer"]: row for row in r["layers"]} for mode, r in reports.items()}
    # last: only the classifier's input (8 x 32 floats)
    assert reports["last"]["analytic_saved_bytes"] == 8 * 32 * 4
    # bias: no convolution keeps its input; every ReLU6 keeps 1 bit per element
    for name, row in layers["bias"].items():
        if row["type"] == "ConvBN":
            assert row["saved_bytes"] == 0, name
        if row["type"] == "ReLU6":
            assert row["saved_bytes"] == -(-row["input_bytes"] // 4 // 8), name
    # full: every convolution keeps its input and batch norm its input plus two vectors
    for name, row in layers["full"].items():
        if row["type"] == "ConvBN" and name != "stem":
            assert row["saved_bytes"] >= row["input_bytes"] + row["output_bytes"], name
    extra = {mode: r["extra_bytes"] for mode, r in reports.items()}
    assert extra["full"] > extra["bn_last"] > extra["lite_residual_bias"] > extra["lite_residual"] > extra["bias"] > extra["last"]
    assert extra["full"] > 20 * extra["bias"]
    # activations scale with the batch; stock PyTorch keeps more than the rules need
    one = memory_report(apply_mode(small_net(), "full", 3), 1, SHAPE, 3)
    assert reports["full"]["analytic_saved_bytes"] == pytest.approx(8 * one["analytic_saved_bytes"], rel=0.01)
    stock = memory_report(apply_mode(small_net(frugal=False), "bias", 3), 8, SHAPE, 3)
    assert stock["measured_saved_bytes"] > 20 * reports["bias"]["measured_saved_bytes"]


def test_residual_input_is_held_in_the_forward_peak():
    net = apply_mode(small_net(), "last", 3)
    report = memory_report(net, 2, SHAPE, 3)
    rows = [row for row in report["layers"] if row["layer"].startswith("blocks.2.")]  # a block with a shortcut
    assert net.blocks[2].use_residual
    block_input = rows[0]["input_bytes"]
    depthwise = next(row for row in rows if row["layer"] == "blocks.2.depthwise")
    assert depthwise["live_bytes"] >= depthwise["input_bytes"] + depthwise["output_bytes"] + block_input


# --- modes, schemes, errors ------------------------------------------------------------------

def test_modes_train_what_they_name():
    def trained(mode):
        return {n for n, p in apply_mode(small_net(), mode, 3).named_parameters() if p.requires_grad}

    assert trained("last") == {"classifier.weight", "classifier.bias"}
    assert all(n.endswith(("bias", "classifier.weight")) for n in trained("bias"))
    assert all(".bn." in n or n.startswith("classifier") for n in trained("bn_last"))
    lite = trained("lite_residual")
    assert lite and all(".lite." in n or n.startswith("classifier") for n in lite)
    assert trained("lite_residual_bias") == lite | trained("bias")
    with pytest.raises(PipelineError, match="unknown transfer mode 'tiny'"):
        apply_mode(small_net(), "tiny", 3)


def test_sparse_scheme_errors_name_the_value():
    with pytest.raises(PipelineError, match="update ratio 1.5"):
        apply_sparse(small_net(), SparseScheme.make(0, {"1.expand": 1.5}), 3)
    with pytest.raises(PipelineError, match="'9.expand'.*block index"):
        apply_sparse(small_net(), SparseScheme.make(0, {"9.expand": 0.5}), 3)
    with pytest.raises(PipelineError, match="'0.expand'.*has no layer 'expand'"):
        apply_sparse(small_net(), SparseScheme.make(0, {"0.expand": 0.5}), 3)  # expand ratio 1: no expansion
    with pytest.raises(PipelineError, match="n_bias_update = 9"):
        apply_sparse(small_net(), SparseScheme(9), 3)
    with pytest.raises(PipelineError, match="edge.sparse.ratios: 0"):
        config_lib.settings_from(SparseSettings, ratios=(0, 0.5)).check(small_net())


@pytest.mark.parametrize("batch", [1, 8])
def test_partial_update_keeps_that_share_of_the_input(batch):
    whole = scheme_memory(small_net(), SparseScheme.make(0, {"2.expand": 1.0}), 3, SHAPE, 8)
    quarter = scheme_memory(small_net(), SparseScheme.make(0, {"2.expand": 0.25}), 3, SHAPE, 8)
    frozen = scheme_memory(small_net(), SparseScheme(0), 3, SHAPE, 8)
    assert frozen < quarter < whole
    net = apply_sparse(small_net(), SparseScheme.make(0, {"2.expand": 0.25}), 3)
    report = memory_report(net, batch, SHAPE, 3)
    row = next(r for r in report["layers"] if r["layer"] == "blocks.2.expand")
    assert row["saved_bytes"] == row["input_bytes"] // 4 == row["measured_bytes"]


def test_lenet_shapes():
    net = LeNet(in_channels=3, num_classes=10, image_size=32)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_save_and_load_round_trip(tmp_path):
    net = small_net().eval()
    nets.save(net, tmp_path / "net.pt")
    again = nets.load(tmp_path / "net.pt").eval()
    x = torch.rand(2, *SHAPE)
    assert torch.equal(net(x), again(x))
    stock = nets.load(tmp_path / "net.pt", frugal=False).eval()
    assert torch.allclose(net(x), stock(x), atol=1e-5)


# --- stages end to end on a tiny configuration ----------------------------------------------------

def tiny_edge() -> dict:
    """A small ``edge`` section with the schema's defaults filled in."""
    schema = config_lib.load_schema()
    edge = {"source": {"dataset": "digits", "classes": [0, 1, 2], "max_per_class": 40},
            "target": {"dataset": "digits", "classes": [3, 4, 5], "max_per_class": 40},
            "image_size": 16,
            "net": {"stages": [[1, 8, 1, 1], [4, 12, 2, 2]], "head_channels": 16},
            "pretrain": {"epochs": 8, "batch_size": 16}, "transfer": {"epochs": 2},
            "sparse": {"ratios": [0.5, 1.0], "layers": ["1.depthwise", "-1.project"], "unit_epochs": 1,
                       "budgets_kib": [16], "population": 6, "generations": 3}}
    validator = config_lib._DefaultFillingValidator(schema["properties"]["edge"])
    validator.validate(edge)
    return edge


def test_stages_end_to_end(tmp_path):
    edge = tiny_edge()
    source = stages.pretrain(edge, 1, tmp_path / "net.pt", tmp_path / "metrics.json")
    assert source["test"]["accuracy"] > 0.6  # three digit classes, well above chance
    last = stages.transfer(edge, 1, tmp_path / "net.pt", "last", tmp_path / "last.json")
    bias = stages.transfer(edge, 1, tmp_path / "net.pt", "bias", tmp_path / "bias.json")
    assert json.loads((tmp_path / "bias.json").read_text())["mode"] == "bias"
    for result in (last, bias):
        assert set(result["memory"]) == {"1", "8"}
        assert result["memory"]["8"]["stock_measured_saved_bytes"] >= result["memory"]["8"]["measured_saved_bytes"]
    found = stages.contribution_stage(edge, 1, tmp_path / "net.pt", tmp_path / "contributions.json")
    assert set(found["bias"]) == {"0", "1", "2", "3"}
    assert {(w["layer"], w["ratio"]) for w in found["weight"]} == {
        ("1.depthwise", 0.5), ("1.depthwise", 1.0), ("-1.project", 0.5), ("-1.project", 1.0)}
    result = stages.sparse_stage(edge, 1, tmp_path / "net.pt", found, 64, tmp_path / "sparse.json")
    assert result["search"]["memory_bytes"] <= 64 * 1024
    assert result["memory"]["8"]["extra_bytes"] == result["search"]["memory_bytes"]
    with pytest.raises(PipelineError, match=r"budget 0.00 KiB is below the cheapest .* raise edge.sparse.budgets_kib"):
        stages.sparse_stage(edge, 1, tmp_path / "net.pt", found, 0.001, tmp_path / "none.json")
    assert not (tmp_path / "none.json").exists()


def without_seconds(value):
    """A stage's result without its timings (the only fields that differ between identical runs)."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [without_seconds(v) for v in value]
    return value


def test_a_stage_job_gives_each_item_what_it_gives_alone(tmp_path):
    """edge_transfer and edge_leakage run every mode / defense in one process: each must come out as
    it does in a process of its own, whatever ran before it (each seeds what it draws)."""
    edge = tiny_edge()
    edge["leakage"].update(iterations=3, evaluations_per_step=2, restarts=1, attacks=1, batch_sizes=[1],
                           defenses={"gaussian": [0.01]}, accuracy={**edge["leakage"]["accuracy"], "steps": 4})
    edge["leakage"]["task"].update(classes=[0, 1], max_per_class=20)
    stages.pretrain(edge, 1, tmp_path / "net.pt", tmp_path / "metrics.json")
    both = stages.transfer_stage(edge, 1, tmp_path / "net.pt", {"bias": tmp_path / "bias.json",
                                                                "last": tmp_path / "last.json"})
    assert json.loads((tmp_path / "last.json").read_text())["mode"] == "last"
    torch.manual_seed(123)  # a global state unlike the one "last" met after "bias"
    alone = stages.transfer(edge, 1, tmp_path / "net.pt", "last", tmp_path / "alone.json")
    assert without_seconds(both["last"]) == without_seconds(alone)

    files = {d: (tmp_path / f"{d}.json", tmp_path / f"{d}.npz") for d in ("gaussian", "none")}
    attacked = stages.leakage_stages(edge, 1, files)
    assert all(path.exists() for pair in files.values() for path in pair)
    torch.manual_seed(123)
    alone = stages.leakage_stage(edge, 1, "none", tmp_path / "alone.json", tmp_path / "alone.npz")
    assert without_seconds(attacked["none"]) == without_seconds(alone)
    with np.load(files["none"][1]) as merged, np.load(tmp_path / "alone.npz") as single:
        assert all(np.array_equal(merged[k], single[k]) for k in single.files)


def test_contribution_gains_are_measured_against_their_baselines():
    edge = tiny_edge()
    torch.manual_seed(0)
    data = stages.task(edge, "target", 1)
    train, validation = stages.split_validation(data.train, 0.25, 1)
    settings = config_lib.settings_from(SparseSettings, ratios=(1.0,), layers=["-1.project"], unit_epochs=1,
                                        gain="loss", train=transfer_training(epochs=1, batch_size=16))
    net = MobileNet(1, 3, stages=((1, 8, 1, 1), (4, 12, 2, 2)), head_channels=16)
    found = contributions(net, train, validation, settings)
    frozen, biases = found["baselines"]["frozen"], found["baselines"]["all_biases"]
    units = {json.dumps(u["scheme"], sort_keys=True): u for u in found["units"]}
    k2 = units[json.dumps({"n_bias_update": 2, "weight_update": {}}, sort_keys=True)]
    assert k2["gain"] == pytest.approx(frozen["loss"] - k2["validation_loss"])
    weight = units[json.dumps({"n_bias_update": 0, "weight_update": {"-1.project": 1.0}}, sort_keys=True)]
    assert weight["gain"] == pytest.approx(biases["loss"] - weight["validation_loss"])


def test_training_loop_learns_and_is_seeded():
    edge = tiny_edge()
    data = stages.task(edge, "source", 1)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        net = MobileNet(1, 3, stages=((1, 8, 1, 1), (4, 12, 2, 2)), head_channels=16)
        history = fit(net, data.train, transfer_training(epochs=3, batch_size=16, seed=3))
        results.append((history, evaluate(net, data.test)))
    assert results[0] == results[1]
    assert results[0][0][-1]["train_loss"] < results[0][0][0]["train_loss"]


# --- configuration errors ------------------------------------------------------------------------

def demo_config(**edge) -> dict:
    from pathlib import Path

    cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / "config.yaml").read_text())
    cfg["edge"] = copy.deepcopy(edge)
    return cfg


@pytest.mark.parametrize("edge, message", [
    ({"source": {"dataset": "idx", "path": "/nowhere/fashion-mnist"}},
     r"'edge.source.path': dataset directory /nowhere/fashion-mnist does not exist \(Debian: apt-get install dataset-fashion-mnist\)"),
    ({"target": {"dataset": "folder"}}, "'edge.target.path' is required for dataset 'folder'"),
    ({"source": {"dataset": "mnist"}}, "edge.source.dataset"),
    ({"sparse": {"ratios": [0.5, 1.5]}}, "edge.sparse.ratios.1"),
    ({"sparse": {"budgets_kib": [-4]}}, "edge.sparse.budgets_kib.0"),
    ({"sparse": {"layers": ["3.conv"]}}, "edge.sparse.layers"),
    ({"transfer": {"modes": ["full", "tiny"]}}, "edge.transfer.modes.1"),
    ({"validation_fraction": 1.0}, "edge.validation_fraction"),
])
def test_bad_edge_config_names_the_key(edge, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(demo_config(**edge))
