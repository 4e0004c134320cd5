"""The memory plan (analysis/lm/plan.py) against what does not come from it: DeepSpeed's allocated
partitions and a full-depth activation measurement on the demo's model, DeepSpeed's estimator, the
paper models' published sizes; the plan command, the adapt job's check and its resources."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis import config as config_lib
from analysis.cli import main as cli
from analysis.errors import ConfigError, PipelineError
from analysis.lm import plan
from analysis.lm.zero import REDUCE_BUCKET_ELEMENTS
from tests.builders import save_tiny_gpt2
from tests.test_lm import domain_tokens  # noqa: F401  (a fixture)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "hf", n_layer=4)


def test_parameters_of_the_paper_models_need_no_hub():
    # The published sizes (model cards; LLaMA-7B: 6.74 B).
    assert plan.model_shape("gpt2").total == 124_439_808
    assert plan.model_shape("gpt2-xl").total == 1_557_611_200
    assert plan.model_shape("allenai/OLMo-1B-hf").total == 1_176_764_416
    llama = plan.model_shape("huggyllama/llama-7b")
    assert llama.total == 6_738_415_616 and llama.largest_layer == 32000 * 4096
    bias = plan.model_shape("gpt2", "bias")
    assert bias.total == 124_439_808 and 0 < bias.trainable < bias.total / 1000


@pytest.mark.parametrize("setting", [plan.Setting(0), plan.Setting(2), plan.Setting(2, offload_optimizer=True),
                                     plan.Setting(3, True, True)], ids=lambda s: s.describe())
@pytest.mark.slow
def test_model_states_equal_what_deepspeed_allocates(tiny_model, tmp_path, setting):
    from analysis.lm.models import load_causal_lm
    from analysis.lm.train import TrainSettings, train

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 200, (8, 16))
    result = train(load_causal_lm(str(tiny_model)), blocks, np.arange(8), {},
                   TrainSettings(learning_rate=1e-3, micro_batch_size=2, curve_points=2,
                                 zero_stage=setting.zero_stage, offload_optimizer=setting.offload_optimizer,
                                 offload_parameters=setting.offload_parameters),
                   checkpoint_dir=tmp_path, fingerprint="plan", progress=False)
    measured = result["memory"]
    states = plan.state_bytes(plan.model_shape(str(tiny_model)), setting, "float32")
    where = {**states["device"], **states["host"]}
    assert where["AdamW moments"] == measured["optimizer_state_bytes"]
    assert where["fp32 master"] == measured["master_weight_bytes"]
    assert where["weights"] == measured["parameter_partition_bytes"]
    # ZeRO-1/2's gradient buffers, as DeepSpeed's optimizer sizes them.
    assert states["device"]["reduce bucket"] == measured.get("reduce_bucket_bytes", 0)
    if setting.zero_stage == 3:  # under R / 2 parameters every tensor stays whole from forward to backward
        assert states["device"]["gathered weights"] == measured["gathered_bytes_after_forward"] > 0
    if setting.offload_optimizer:
        assert states["device"]["AdamW moments"] == 0 and states["host"]["AdamW moments"] > 0
    if setting.offload_optimizer and setting.zero_stage == 2:
        # No gradient partition on the device: each gradient goes from the bucket to the host, through a
        # buffer of the largest trained tensor on each side (float32 here: no float32 copy on the way).
        assert states["device"]["gradients"] == 0
        copies = measured["offload_copy_bytes"]
        assert (states["device"]["offload copies"], states["host"]["offload copies"]) == (copies["device"], copies["host"])
        assert states["host"]["fp32 gradients"] == measured["fp32_gradient_bytes"]
        assert copies["device"] == 4 * max(p.numel() for p in load_causal_lm(str(tiny_model)).parameters())


@pytest.mark.parametrize("mode,checkpointing", [("full", False), ("full", True), ("sparse", False), ("lora", False)])
def test_activations_extrapolated_from_two_depths_equal_a_full_depth_measurement(tiny_model, mode, checkpointing):
    options = {"sparse": {"n_bias_update": 2, "weight_update": {"-1.mlp.c_fc": 0.5}},
               "lora": {"rank": 2, "target_modules": ["c_attn"]}}
    extrapolated = plan.measure_activations(str(tiny_model), mode, options, 2, 32, checkpointing=checkpointing)
    assert extrapolated.measured_depths == ((3, 4) if mode == "sparse" else (1, 2))
    config = plan.model_config(str(tiny_model))
    full = plan.saved_bytes_at_depth(config, 4, mode, options, 2, 32, checkpointing=checkpointing)
    assert extrapolated.total == pytest.approx(full, rel=0.10)


def test_bfloat16_zero2_states_are_deepspeeds_own_estimate_and_the_reduce_bucket():
    """DeepSpeed's estimator counts the model states (2 P + 18 P / N; with offload 2 P on the device),
    not the reduction bucket (1 GB in bfloat16) nor offload's copies of the largest tensor."""
    shape = plan.model_shape("gpt2")
    bucket = REDUCE_BUCKET_ELEMENTS * 2
    for processes in (1, 4):
        ours = plan.state_bytes(shape, plan.Setting(2), "bfloat16", processes)["device"]
        theirs = plan.deepspeed_estimate(shape, plan.Setting(2), processes)["device"]
        assert sum(ours.values()) - bucket == pytest.approx(theirs, rel=1e-6)
        offload = plan.Setting(2, offload_optimizer=True)
        ours = plan.state_bytes(shape, offload, "bfloat16", processes)["device"]
        theirs = plan.deepspeed_estimate(shape, offload, processes)["device"]
        copies = (2 + 4) * 50257 * 768  # the embedding, GPT-2's largest tensor: a bf16 buffer, an fp32 copy
        assert sum(ours.values()) - bucket - copies == pytest.approx(theirs, rel=1e-6)


def test_seven_billion_parameters_fit_one_80gb_gpu_only_with_offload():
    """Full AdamW of LLaMA-7B: 2 + 2 + 4 + 4 + 8 bytes per parameter without offload (135 GB)."""
    shape = plan.model_shape("huggyllama/llama-7b")
    bucket = REDUCE_BUCKET_ELEMENTS * 2
    states = plan.state_bytes(shape, plan.Setting(0), "bfloat16")
    assert sum(states["device"].values()) / 1e9 == pytest.approx(20 * shape.total / 1e9, rel=1e-6)
    offloaded = plan.state_bytes(shape, plan.Setting(2, offload_optimizer=True), "bfloat16")
    # bf16 weights, the bucket, and the copies of the largest tensor (the embedding): no gradient partition
    embedding = 32000 * 4096
    assert sum(offloaded["device"].values()) == 2 * shape.total + bucket + (2 + 4) * embedding
    assert sum(offloaded["host"].values()) == 16 * shape.total + 2 * embedding


def test_settings_deepspeed_cannot_run_are_refused_in_one_line(tmp_path):
    source = config_lib.load("config.yaml")
    for change, message in [({"offload_optimizer": True}, "offload_optimizer needs zero_stage 1, 2 or 3"),
                            ({"zero_stage": 2, "offload_parameters": True}, "offload_parameters needs zero_stage 3")]:
        raw = json.loads(json.dumps(source))
        raw["models"]["tiny-gpt2"].update(change)
        path = tmp_path / "c.yaml"
        path.write_text(json.dumps(raw))
        with pytest.raises(ConfigError, match=message) as error:
            config_lib.load(path)
        assert "models.tiny-gpt2" in str(error.value) and "\n" not in str(error.value)


def test_plan_command_prints_every_setting_and_the_cheapest_that_fits(tiny_model, tmp_path, capsys):
    raw = config_lib.load("config.yaml")
    raw["models"] = {"tiny": {**raw["models"]["tiny-gpt2"], "name_or_path": str(tiny_model), "context_length": 32}}
    raw["models"]["tiny"].pop("pretrain")
    raw["adaptation"]["join_ablation"]["models"] = []
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(raw))
    assert cli(["plan", str(path), "--gpus", "1", "--gpu-memory-gb", "80", "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    full = record["modes"]["full"]
    assert [c["setting"] for c in full["candidates"]] == [s.describe() for s in plan.CANDIDATES]
    assert full["cheapest"]["setting"] == "ZeRO-0" and full["configured"]["fits"]
    # A GPU (less its 2 GB reserve) that only the smallest setting fits: the plan names it.
    smallest = min(full["candidates"], key=lambda c: c["device_gb"])
    limit = smallest["device_gb"] + plan.GPU_RESERVE_BYTES / 1e9 + 1e-6
    assert cli(["plan", str(path), "--gpus", "1", "--gpu-memory-gb", str(limit), "--format", "json"]) == 0
    small = json.loads(capsys.readouterr().out)[0]["modes"]["full"]
    assert small["cheapest"]["setting"] == smallest["setting"] != "ZeRO-0"
    assert not small["configured"]["fits"]
    assert cli(["plan", str(path), "--gpus", "1", "--gpu-memory-gb", "0.001", "--tokens", "5000000"]) == 0
    text = capsys.readouterr().out
    assert "cheapest that fits: none" in text
    assert "5.0 M training tokens (--tokens, 19,531 optimizer steps, 1 checkpoint written): about" in text and "runtime=" in text


def test_adapt_refuses_a_setting_that_does_not_fit_before_loading_weights(tiny_model, domain_tokens, tmp_path,
                                                                          monkeypatch):
    from analysis.lm import adapt as adapt_lib
    from analysis.lm import models
    from tests.test_lm import ADAPTATION, MODEL_SPEC

    spec = {**MODEL_SPEC, "name_or_path": str(tiny_model), "offload_optimizer": False, "offload_parameters": False,
            "gradient_checkpointing": False}
    monkeypatch.setattr(plan, "host_memory_limit", lambda: 0.2e9)  # 200 MB of host memory

    def loaded(*args, **kwargs):
        raise AssertionError("weights were loaded before the plan was checked")

    monkeypatch.setattr(models, "load_causal_lm", loaded)
    plan_settings = {"gpu_memory_gb": 80, "gpu_peak_tflops": 989, "utilisation": 0.35, "check": True}
    with pytest.raises(PipelineError) as error:
        adapt_lib.adapt(model_key="tiny", model_spec=spec, mode="full", scheme_options={}, domain="hep-ex",
                        tokens=domain_tokens, output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c",
                        adaptation={**ADAPTATION, "plan": plan_settings}, seed=1)
    message = str(error.value)
    assert message.startswith("models.tiny: ZeRO-0 needs about") and "0.2 GB are available" in message
    assert "python -m analysis plan" in message


def test_job_resources_follow_the_plan_and_the_domain_tokens():
    record = {"target": {"device": "cuda", "peak_flops": 1e15, "utilisation": 0.5, "processes": 1},
              "configured": {"zero_stage": 0, "offload_optimizer": False, "offload_parameters": False,
                             "gradient_checkpointing": False},
              "modes": {"full": {"parameters": {"total": 10**9, "trainable": 10**9, "layers": 10,
                                                "largest_layer": 10**8},
                                 "configured": {"host_gb": 10.0}, "output_bytes": 2 * 10**9,
                                 "checkpoint_bytes": 14 * 10**9, "flops_per_token": 6 * 10**9}}}
    small = plan.job_resources(record, "full", 10**8, 100)
    large = plan.job_resources(record, "full", 10**10, 10000)
    assert small["mem_mb"] == large["mem_mb"] == 13000  # 1.2 x 10 GB + 1 GB
    assert large["runtime"] == 10 + 3000  # 1.5 x 6e9 x 1e10 FLOPs / (1e15 x 0.5) s = 3000 min
    assert small["runtime"] < large["runtime"]
    assert small["disk_mb"] == 2000 + 28000 + 100


def test_rule_plan_writes_the_plan_and_stops_a_setting_that_does_not_fit(tiny_model, tmp_path):
    cfg = config_lib.load("config.yaml")
    cfg["models"] = {"tiny": {**cfg["models"]["tiny-gpt2"], "name_or_path": str(tiny_model), "context_length": 32}}
    cfg["models"]["tiny"].pop("pretrain")
    cfg["adaptation"]["gpus"] = 1
    record = plan.write_plan(cfg, "tiny", tmp_path / "ok.json", tmp_path / "ok.md")
    assert set(record["modes"]) == set(cfg["adaptation"]["modes"]) and record["target"]["device"] == "cuda"
    markdown = (tmp_path / "ok.md").read_text()
    assert "| ZeRO-3 + offload optimizer | " in markdown
    # The config's curve points (3: one inner point), not a default of the Markdown function's.
    assert cfg["adaptation"]["curve_points"] == 3 and cfg["adaptation"]["checkpoint_every"] == 0
    assert "checkpoints are written at the 1 inner curve point " in markdown and "training tokens" not in markdown
    cfg["adaptation"].update(max_train_tokens=64 * 100, checkpoint_every=7)
    plan.write_plan(cfg, "tiny", tmp_path / "capped.json", tmp_path / "capped.md")
    capped = (tmp_path / "capped.md").read_text()
    steps = 6400 // record["tokens_per_step"]
    assert "every 7 optimizer steps" in capped
    assert (f"(adaptation.max_train_tokens, at most, {steps:,} optimizer steps, "
            f"{plan.checkpoints_written(steps, 3, 7)} checkpoints written)") in capped
    cfg["adaptation"]["plan"]["gpu_memory_gb"] = 1  # less than the 2 GB the plan keeps free
    with pytest.raises(PipelineError) as error:
        plan.write_plan(cfg, "tiny", tmp_path / "small.json", tmp_path / "small.md")
    message = str(error.value)
    assert message.startswith("models.tiny (mode full): ZeRO-0 needs") and "1 GB GPU of adaptation.plan" in message
    assert "no setting fits" in message and "\n" not in message
    assert (tmp_path / "small.md").is_file()  # the plan is there to read
