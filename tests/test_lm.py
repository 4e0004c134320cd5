"""The LM path: loading, tokenising and packing, the DeepSpeed loop with resume, the adapt stage."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file, load_file

from analysis.errors import PipelineError
from analysis.lm import data
from analysis.lm.adapt import adapt
from analysis.lm.models import ModelLoadError, apply_delta, load_causal_lm, load_tokenizer
from analysis.lm.train import TrainingInterrupted, TrainSettings, curve_steps, lr_lambda, train
from analysis.selection.schemes import Scheme, apply_scheme
from tests.builders import save_tiny_gpt2, tiny_lm_texts, write_domain_dir


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "hf")


def test_documents_are_followed_by_eos_and_packed_without_overlap(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    docs = ["The model reads the corpus.", "The city shows the river."]
    stream, starts = data.tokenize_documents(tokenizer, docs, batch_size=1)
    first = tokenizer(docs[0], add_special_tokens=False)["input_ids"]
    assert list(stream[: len(first) + 1]) == [*first, tokenizer.eos_token_id]
    assert list(starts) == [0, len(first) + 1] and stream[-1] == tokenizer.eos_token_id
    blocks, dropped = data.pack_blocks(stream, 4)
    assert blocks.shape == (len(stream) // 4, 4) and dropped == len(stream) % 4
    assert np.array_equal(blocks.ravel(), stream[: blocks.size])
    assert np.array_equal(data.epoch_order(10, 3), data.epoch_order(10, 3))
    assert sorted(data.epoch_order(10, 3)) == list(range(10))


def test_old_olmo_format_is_refused_with_the_right_id():
    with pytest.raises(ModelLoadError, match="use 'allenai/OLMo-1B-hf'"):
        load_causal_lm("allenai/OLMo-1B")


def test_unavailable_hub_model_says_how_to_download():
    # A fresh process: huggingface_hub reads HF_HUB_OFFLINE when it is imported.
    code = (
        "from analysis.lm.models import load_causal_lm\n"
        "try:\n    load_causal_lm('no-such-org/no-such-model')\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.startswith("ModelLoadError cannot load causal LM 'no-such-org/no-such-model'")
    assert "hf download no-such-org/no-such-model --local-dir" in result.stdout


def test_checkpoint_with_missing_weights_is_refused(tiny_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    weights = load_file(str(broken / "model.safetensors"))
    del weights["transformer.h.0.mlp.c_fc.weight"]
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="would be random"):
        load_causal_lm(str(broken))


def test_schedule_and_curve_points():
    assert curve_steps(10, 5) == [0, 2, 5, 8, 10] and curve_steps(3, 5) == [0, 1, 2, 3]
    factor = lr_lambda(10, 0.2, "linear")
    assert [round(factor(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    assert lr_lambda(10, 0.0, "cosine")(5) == pytest.approx(0.5)


def run(model_dir, mode, checkpoint_dir, **kwargs):
    model = apply_scheme(load_causal_lm(str(model_dir)),
                         Scheme.from_config(mode, {"sparse": {"n_bias_update": 1,
                                                              "weight_update": {"-1.mlp.c_fc": 0.5}}}))
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 200, (44, 16))
    settings = TrainSettings(learning_rate=1e-3, micro_batch_size=2, gradient_accumulation_steps=2,
                             curve_points=3, checkpoint_every=3, seed=5)
    return train(model, blocks, rng.permutation(44), {"valid": blocks[:4]}, settings,
                 checkpoint_dir=checkpoint_dir, fingerprint=mode, progress=False, **kwargs)


@pytest.mark.parametrize("mode", ["full", "sparse"])
def test_a_killed_run_resumes_to_the_same_result(tiny_model, tmp_path, mode):
    uninterrupted = run(tiny_model, mode, tmp_path / "a")
    with pytest.raises(TrainingInterrupted):
        run(tiny_model, mode, tmp_path / "b", stop_after=7)  # last checkpoint at step 6
    resumed = run(tiny_model, mode, tmp_path / "b")
    assert resumed["steps"] == uninterrupted["steps"] == 11 and resumed["blocks_dropped"] == 0
    a, b = dict(uninterrupted["module"].named_parameters()), dict(resumed["module"].named_parameters())
    assert max(float((a[k] - b[k]).detach().abs().max()) for k in a) < 1e-6
    assert [r["step"] for r in resumed["curves"]] == [0, 6, 11]
    assert resumed["curves"][-1]["valid_loss"] == pytest.approx(uninterrupted["curves"][-1]["valid_loss"], rel=1e-6)


def test_checkpoints_of_another_configuration_are_not_resumed(tiny_model, tmp_path):
    with pytest.raises(TrainingInterrupted):
        run(tiny_model, "full", tmp_path / "c", stop_after=4)
    (tmp_path / "c" / "fingerprint.json").write_text(json.dumps({"fingerprint": "other"}))
    result = run(tiny_model, "full", tmp_path / "c")
    assert [r["step"] for r in result["curves"]] == [0, 6, 11]


def test_too_few_blocks_for_one_step_is_an_error(tiny_model, tmp_path):
    model = load_causal_lm(str(tiny_model))
    settings = TrainSettings(learning_rate=1e-3, micro_batch_size=4)
    with pytest.raises(PipelineError, match="3 blocks are fewer than one optimizer step of 4"):
        train(model, np.zeros((3, 8), dtype=np.int64), np.arange(3), {}, settings,
              checkpoint_dir=tmp_path / "x", fingerprint="x", progress=False)


def compiled_extensions(cache: Path) -> list[Path]:
    """What DeepSpeed built into a TORCH_EXTENSIONS_DIR that started empty (or was never created)."""
    return list(cache.rglob("*")) if cache.exists() else []


MODEL_SPEC = {"learning_rate": 2e-3, "context_length": 16, "dtype": "auto", "micro_batch_size": 4,
              "gradient_accumulation_steps": 1, "weight_decay": 0.0, "warmup_fraction": 0.0,
              "schedule": "linear", "gradient_clipping": 1.0, "zero_stage": 0, "eval_batch_size": 8}
ADAPTATION = {"curve_points": 3, "curve_max_blocks": 8, "seen_first_fraction": 0.03, "checkpoint_every": 0}


@pytest.fixture(scope="module")
def domain_tokens(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("m2d2")
    texts = tiny_lm_texts(80, seed=1)
    write_domain_dir(root, "hep-ex", {"train": "\n".join(texts[:60]), "valid": "\n".join(texts[60:70]),
                                      "test": "\n".join(texts[70:])})
    out = root / "tokens.bin"
    data.tokenize_domain(model_name=str(tiny_model), m2d2_root=str(root), domain="hep-ex", policy="line",
                         output=out, metadata=root / "tokens.json")
    return out


@pytest.mark.parametrize("mode", ["full", "bias", "last", "norm_last", "lora", "sparse"])
def test_adapt_writes_outputs_and_a_delta_that_reproduces_the_model(tiny_model, domain_tokens, tmp_path, mode):
    output = tmp_path / "out"
    spec = {**MODEL_SPEC, "name_or_path": str(tiny_model)}
    options = {"sparse": {"n_bias_update": 1, "weight_update": {"-1.mlp.c_fc": 0.25}},
               "lora": {"rank": 2, "target_modules": ["c_attn"]}}
    metrics = adapt(model_key="tiny", model_spec=spec, mode=mode, scheme_options=options, domain="hep-ex",
                    tokens=domain_tokens, output_dir=output, checkpoint_dir=tmp_path / "ckpt",
                    adaptation=ADAPTATION, seed=1)
    assert metrics["final"]["valid_loss"] < metrics["initial"]["valid_loss"]
    assert metrics["tokens_trained"] + metrics["tokens_dropped_last_step"] + metrics["tokens_dropped_tail"]["train"] \
        == metrics["tokens_in_split"]["train"]
    memory = json.loads((output / "memory.json").read_text())
    assert memory["saved_for_backward_bytes"] == sum(memory["saved_for_backward_by_kind_bytes"].values()) > 0
    assert memory["optimizer_state_bytes"] == 2 * memory["trainable_parameter_bytes"]  # AdamW: two moments
    assert json.loads((output / "deepspeed_config.json").read_text())["train_micro_batch_size_per_gpu"] == 4
    assert len((output / "curves.tsv").read_text().splitlines()) == 1 + 3
    assert (output / "curves.png").stat().st_size > 5000
    assert not (tmp_path / "ckpt").exists()  # checkpoints are removed once the outputs are written

    base = load_causal_lm(str(tiny_model))
    x = torch.as_tensor(data.load_split(domain_tokens, "valid")[:16], dtype=torch.long).view(1, 16)
    if mode == "full":
        adapted = load_causal_lm(str(output / "weights"))
    else:
        adapted = apply_delta(load_causal_lm(str(tiny_model)), output / "weights")
        assert set(load_file(str(output / "weights/delta.safetensors"))) == set(metrics["delta_parameters"])
    with torch.no_grad():
        loss_base = base(input_ids=x, labels=x).loss
        loss_adapted = adapted(input_ids=x, labels=x).loss
    assert loss_adapted < loss_base
    assert math.isfinite(metrics["final"]["valid_loss"])


def test_lora_adapters_follow_the_seed_not_what_ran_before_in_the_process(tiny_model, domain_tokens, tmp_path):
    """LoRA's adapters are drawn from torch's global generator; adapt seeds it from the run's seed. It
    did not, so two identical runs in one process differed (by 0.27 after the memory plan had reset
    the generator in one of them) and a run's adapters ignored its seed."""
    spec = {**MODEL_SPEC, "name_or_path": str(tiny_model)}
    options = {"lora": {"rank": 2, "target_modules": ["c_attn"]}}
    deltas = []
    for run, seed in enumerate((1, 1, 2)):
        torch.manual_seed(1000 + run)  # whatever the process did before
        torch.rand(run + 1)
        out = tmp_path / f"run{run}"
        adapt(model_key="tiny", model_spec=spec, mode="lora", scheme_options=options, domain="hep-ex",
              tokens=domain_tokens, output_dir=out, checkpoint_dir=tmp_path / f"ckpt{run}", adaptation=ADAPTATION,
              seed=seed)
        deltas.append(load_file(str(out / "weights/delta.safetensors")))
    assert deltas[0].keys() == deltas[1].keys()
    assert all(torch.equal(deltas[0][k], deltas[1][k]) for k in deltas[0])
    assert not all(torch.equal(deltas[0][k], deltas[2][k]) for k in deltas[0])


def test_domain_smaller_than_one_block_is_named(tiny_model, tmp_path):
    write_domain_dir(tmp_path / "m2d2", "hep-ex", {"train": "Short.", "valid": "v", "test": "t"})
    tokens = tmp_path / "t.bin"
    data.tokenize_domain(model_name=str(tiny_model), m2d2_root=str(tmp_path / "m2d2"), domain="hep-ex",
                         policy="line", output=tokens, metadata=tmp_path / "t.json")
    with pytest.raises(PipelineError, match="fewer than one block of models.tiny.context_length = 16"):
        adapt(model_key="tiny", model_spec={**MODEL_SPEC, "name_or_path": str(tiny_model)}, mode="full",
              scheme_options={}, domain="hep-ex", tokens=tokens, output_dir=tmp_path / "o",
              checkpoint_dir=tmp_path / "c", adaptation=ADAPTATION, seed=1)


AUTO = {"auto_sparse": {"ratios": [0.25, 1.0], "search_blocks": 1, "contribution_steps": 2, "population": 6,
                        "generations": 3}}


def test_auto_sparse_chooses_a_scheme_within_the_budget(tiny_model, domain_tokens, tmp_path):
    spec = {**MODEL_SPEC, "name_or_path": str(tiny_model)}
    options = {"auto_sparse": {**AUTO["auto_sparse"], "budget_mib": 0.3}}
    adapt(model_key="tiny", model_spec=spec, mode="auto_sparse", scheme_options=options, domain="hep-ex",
          tokens=domain_tokens, output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c", adaptation=ADAPTATION, seed=1)
    record = json.loads((tmp_path / "o" / "scheme.json").read_text())
    search = record["search"]
    assert record["scheme"]["mode"] == "sparse"
    assert search["memory_bytes"] <= 0.3 * 2**20 < max(m["memory_bytes"] for m in search["measured"])
    assert len(search["contributions"]) == 2 + 4 * 2  # biases of 1..2 blocks; 4 layers x 2 ratios
    memory = json.loads((tmp_path / "o" / "memory.json").read_text())
    measured = memory["saved_for_backward_bytes"] + memory["gradient_bytes"] + memory["optimizer_state_bytes"]
    assert measured == search["memory_bytes"]  # the training run costs what the search measured


def test_auto_sparse_budget_below_the_cheapest_scheme_is_named(tiny_model, domain_tokens, tmp_path):
    spec = {**MODEL_SPEC, "name_or_path": str(tiny_model)}
    options = {"auto_sparse": {**AUTO["auto_sparse"], "budget_mib": 0.001}}
    with pytest.raises(PipelineError, match="memory budget 0.00 MiB is below the cheapest sparse scheme"):
        adapt(model_key="tiny", model_spec=spec, mode="auto_sparse", scheme_options=options, domain="hep-ex",
              tokens=domain_tokens, output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c",
              adaptation=ADAPTATION, seed=1)


@pytest.mark.slow
def test_two_data_parallel_processes_match_one_with_the_same_global_batch(tiny_model, tmp_path, monkeypatch):
    """What `deepspeed --num_gpus 2` runs, on CPU with gloo: ranks take disjoint micro-batches, and
    neither compiles DeepSpeed's shared-memory op (it serves tensor-parallel inference only)."""
    import torch.multiprocessing as mp

    from analysis.lm.train import free_port
    from tests.distributed_worker import train_rank

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))  # an empty cache
    mp.spawn(train_rank, args=(2, free_port(), str(tiny_model), str(tmp_path / "two.pt"), 2, str(tmp_path / "c2")),
             nprocs=2)
    mp.spawn(train_rank, args=(1, free_port(), str(tiny_model), str(tmp_path / "one.pt"), 4, str(tmp_path / "c1")),
             nprocs=1)
    two, one = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    assert max(float((two[k] - one[k]).abs().max()) for k in one) < 1e-5
    assert compiled_extensions(tmp_path / "extensions") == []


@pytest.mark.slow
def test_ranks_that_close_their_process_group_exit_cleanly_in_either_order():
    """Without close_process_group, 2 of 8 such exits aborted (SIGABRT) here, and a CI run failed so."""
    import torch.multiprocessing as mp

    from analysis.lm.train import free_port
    from tests.distributed_worker import linger_and_close

    for lingering_rank in (0, 1, 0, 1):
        mp.spawn(linger_and_close, args=(free_port(), lingering_rank), nprocs=2)


def test_resumable_tag_survives_a_latest_file_left_empty_by_a_kill(tmp_path):
    from analysis.lm.train import resumable_tag

    assert resumable_tag(tmp_path) is None  # no checkpoint at all
    for tag in ("step00000005", "step00000010"):
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "mp_rank_00_model_states.pt").write_bytes(b"x")
    (tmp_path / "step00000015").mkdir()  # killed while its files were being written
    (tmp_path / "latest").write_text("step00000005")
    assert resumable_tag(tmp_path) == "step00000005"  # what latest names, when complete
    (tmp_path / "latest").write_text("")  # killed between creating latest and writing the tag
    assert resumable_tag(tmp_path) == "step00000010"  # the newest complete checkpoint
    (tmp_path / "latest").write_text("step00000015")
    assert resumable_tag(tmp_path) == "step00000010"


@pytest.mark.slow
def test_one_cpu_process_trains_without_compiling_the_shared_memory_op(tiny_model, tmp_path):
    # A fresh process with an empty extension cache: the first DeepSpeed initialize would compile
    # deepspeed_shm_comm there (33 s on 2 cores) if train() did not skip it on the CPU.
    code = ("import sys; from tests.test_lm import run; "
            "result = run(sys.argv[1], 'full', sys.argv[2]); print('steps', result['steps'])")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model), str(tmp_path / "ckpt")],
                         capture_output=True, text=True, env=env, timeout=600, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "steps 11" in out.stdout
    assert compiled_extensions(tmp_path / "extensions") == []


def test_one_zero0_process_skips_deepspeeds_gradient_reduction_and_gets_the_same_weights(tiny_model, tmp_path,
                                                                                         monkeypatch):
    from deepspeed.runtime.engine import DeepSpeedEngine

    import analysis.lm.train as train_module

    reductions = []
    original = DeepSpeedEngine.allreduce_gradients
    monkeypatch.setattr(DeepSpeedEngine, "allreduce_gradients",
                        lambda self, *a, **k: (reductions.append(1), original(self, *a, **k))[1])
    skipped = run(tiny_model, "full", tmp_path / "skipped")
    assert reductions == []
    monkeypatch.setattr(train_module, "reduces_gradients", lambda world, stage: True)  # DeepSpeed's default
    reduced = run(tiny_model, "full", tmp_path / "reduced")
    assert len(reductions) == reduced["steps"] * 2  # once per micro-batch's backward (2 per step)
    a, b = dict(skipped["module"].named_parameters()), dict(reduced["module"].named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a)
