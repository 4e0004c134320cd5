"""Config validation: the schema's defaults and types, cross-checks, and the two shipped configs."""

from __future__ import annotations

import copy

import pytest
import yaml

from analysis import config as config_lib
from analysis.corpora import catalogue
from analysis.errors import ConfigError
from tests.builders import write_domain_dir

from tests.builders import REPO

DEMO = yaml.safe_load((REPO / "config.yaml").read_text())


def demo(**changes):
    cfg = copy.deepcopy(DEMO)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = value
    return cfg


def test_demo_config_is_valid_and_defaults_are_filled():
    cfg = config_lib.validate(demo())
    assert cfg["m2d2"]["max_invalid_line_fraction"] == 0.01
    assert cfg["corpora"]["webtext"]["hf"]["streaming"] is True
    model = cfg["models"]["tiny-gpt2"]
    assert model["name_or_path"] == "results/models/tiny-gpt2/hf" and model["zero_stage"] == 0
    assert model["pretrain"]["heldout_fraction"] == 0.05 and cfg["adaptation"]["loss"] == "model"
    assert config_lib.similarity_domains(cfg) == cfg["domains"]["adaptation"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["models"]["tiny-gpt2"].update(name_or_path="elsewhere"),
         "rule pretrain_base builds it at 'results/models/tiny-gpt2/hf'"),
        (lambda c: c["adaptation"].update(modes=["full", "auto_sparse"]) or c["adaptation"]["schemes"].pop("auto_sparse"),
         "'adaptation.schemes.auto_sparse.budget_mib'"),
        (lambda c: c["adaptation"].update(modes=["sideways"]), "sideways"),
    ],
)
def test_bad_adaptation_settings_are_named(change, message):
    cfg = demo()
    change(cfg)
    with pytest.raises(ConfigError) as info:
        config_lib.validate(cfg)
    assert message in str(info.value)


def test_paper_preset_matches_the_paper():
    cfg = config_lib.load(REPO / "presets" / "paper.yaml")
    adaptation, similarity = cfg["domains"]["adaptation"], cfg["domains"]["similarity"]
    assert len(adaptation) == 20 and len(similarity) == 199
    assert set(adaptation) <= set(similarity) <= catalogue.M2D2_DOMAINS
    assert sum(catalogue.portion(d) == "wiki" for d in adaptation) == 10
    assert "General_referece__Further_research_tools_and_topics" in adaptation
    assert "Human_activites__Human_activities" in adaptation
    assert {"hep-ex", "cond-mat.str-el", "math.SG", "astro-ph.HE", "supr-con"} <= set(adaptation)
    rates = {m["name_or_path"]: m["learning_rate"] for m in cfg["models"].values()}
    assert rates == {
        "gpt2": 5e-5, "gpt2-large": 5e-5, "gpt2-xl": 5e-5,
        "allenai/OLMo-1B-hf": 8.5e-6, "huggyllama/llama-7b": 5e-6,
    }
    assert {k: v["n_texts"] for k, v in cfg["corpora"].items()} == {
        "openwebtext": 400_000, "dolma": 650_000, "redpajama": 930_000,
    }
    assert (cfg["sampling"]["domain_fraction"], cfg["sampling"]["domain_max_texts"]) == (0.05, 50_000)


def test_misspelt_key_is_named_with_a_suggestion():
    cfg = demo()
    cfg["sampling"]["domain_fracton"] = cfg["sampling"].pop("domain_fraction")
    with pytest.raises(ConfigError, match=r"unknown key 'sampling.domain_fracton' \(did you mean 'domain_fraction'"):
        config_lib.validate(cfg, source="my.yaml")


def test_a_removed_or_renamed_key_says_what_took_its_place():
    cfg = demo()
    cfg["similarity"].update(interval="basic", bootstrap_resamples=100)
    with pytest.raises(ConfigError) as info:
        config_lib.validate(cfg, source="old.yaml")
    assert "old.yaml: 'similarity.bootstrap_resamples' was renamed similarity.resamples" in str(info.value)
    assert "'similarity.interval' was removed: every interval is now the estimate -/+ z" in str(info.value)


def test_section_defaults_are_the_schemas():
    defaults = config_lib.schema_defaults("similarity")
    assert defaults["fd_extrapolation"] == {"points": 5, "smallest_fraction": 0.25, "texts_per_dimension": 4,
                                            "orderings": 8}
    assert (defaults["resamples"], defaults["blocks"], defaults["estimator"]) == (200, 100, "corrected")


def test_misspelt_top_level_key():
    cfg = demo()
    cfg["corpra"] = cfg.pop("corpora")
    with pytest.raises(ConfigError) as info:
        config_lib.validate(cfg)
    assert "unknown key 'corpra' (did you mean 'corpora'?)" in str(info.value)
    assert "missing required key" in str(info.value)


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"'corpora.webtext.n_texts' has the wrong type: 'many'"):
        config_lib.validate(demo(corpora__webtext__n_texts="many"))


def test_enum_names_key_and_choices():
    with pytest.raises(ConfigError, match=r"'m2d2.document_policy' is 'lines'; expected one of 'line', 'paragraph'"):
        config_lib.validate(demo(m2d2__document_policy="lines"))


def test_out_of_range_value_names_the_key():
    with pytest.raises(ConfigError, match=r"'sampling.domain_fraction': 1.5 is greater than the maximum"):
        config_lib.validate(demo(sampling__domain_fraction=1.5))


def test_unknown_domain_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown domain 'hep-exx'.*did you mean 'hep-ex'"):
        config_lib.validate(demo(domains__adaptation=["hep-exx"]))


def test_unknown_domain_against_the_release_catalogue_when_data_is_absent(tmp_path):
    cfg = demo(demo__enabled=False, m2d2__root=str(tmp_path / "absent"), domains__adaptation=["Human_activities"])
    with pytest.raises(ConfigError, match=r"not in the M2D2 release \(did you mean 'Human_activites'"):
        config_lib.validate(cfg)


def test_unknown_domain_against_an_existing_root(tmp_path):
    write_domain_dir(tmp_path, "hep-ex", {"train": "x\n"})
    cfg = demo(demo__enabled=False, m2d2__root=str(tmp_path), domains__adaptation=["hep-ex", "math.AG"])
    with pytest.raises(ConfigError, match=rf"'math.AG': not in the M2D2 root '{tmp_path}'"):
        config_lib.validate(cfg)
    # The demo's join-policy ablation names demo domains: off here, as the other domains are gone.
    config_lib.validate(demo(demo__enabled=False, m2d2__root=str(tmp_path), domains__adaptation=["hep-ex"],
                             adaptation__join_ablation={"models": []}))


def test_demo_root_mismatch_is_explained():
    with pytest.raises(ConfigError, match="'m2d2.root' is 'elsewhere' but the demo"):
        config_lib.validate(demo(m2d2__root="elsewhere"))


def test_min_above_max_is_an_error():
    with pytest.raises(ConfigError, match="'sampling.domain_min_texts' \\(10\\) is larger"):
        config_lib.validate(demo(sampling__domain_min_texts=10, sampling__domain_max_texts=5))


def test_model_corpus_must_exist():
    model = {"name_or_path": "gpt2", "learning_rate": 5e-5, "corpus": "openwebtext"}
    with pytest.raises(ConfigError, match=r"'models.gpt2.corpus' is 'openwebtext', which is not a key of 'corpora' \(webtext\)"):
        config_lib.validate(demo(models={"gpt2": model}))


def test_bad_corpus_name_is_rejected():
    cfg = demo()
    cfg["corpora"]["web text"] = cfg["corpora"]["webtext"]
    with pytest.raises(ConfigError, match="name 'web text' under 'corpora' is not allowed"):
        config_lib.validate(cfg)


def test_load_reports_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config_lib.load(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("seed: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        config_lib.load(tmp_path / "bad.yaml")


def test_cli_check_config(capsys, tmp_path):
    from analysis.cli import main

    assert main(["check-config", str(REPO / "presets" / "paper.yaml"), "--domains"]) == 0
    out = capsys.readouterr().out
    assert "domains: 199 (20 adaptation)" in out
    assert "wiki   adaptation+similarity  General_referece__Further_research_tools_and_topics" in out
    (tmp_path / "bad.yaml").write_text((REPO / "config.yaml").read_text().replace("n_texts", "n_text"))
    assert main(["check-config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown key 'corpora.webtext.n_text' (did you mean 'n_texts'" in capsys.readouterr().err


def test_settings_without_a_config_take_the_schemas_defaults():
    from analysis.edge.federated import FederatedSettings
    from analysis.edge.leakage import AttackSettings
    from analysis.edge.sparse import SparseSettings
    from analysis.selection.schemes import Scheme

    federated = config_lib.settings_from(FederatedSettings)
    assert (federated.rounds, federated.local_steps, federated.threads) == (20, 20, 2)  # the dataclass said 10, 10, 1
    sparse = config_lib.settings_from(SparseSettings, unit_epochs=1)
    assert (sparse.unit_epochs, sparse.population, sparse.train.epochs, sparse.train.batch_size) == (1, 24, 6, 16)
    assert config_lib.settings_from(AttackSettings).iterations == 300
    assert Scheme.from_config("sparse", {}).n_bias_update == 2  # the dataclass default is 0
    assert Scheme.from_config("sparse", {"sparse": {"n_bias_update": 0}}).n_bias_update == 0
    with pytest.raises(ConfigError, match="no config section 'edge.federate'"):
        config_lib.schema_defaults("edge.federate")


def test_the_schema_is_the_only_home_of_a_default():
    """A field of a settings class that its config section sets has no default of its own."""
    import dataclasses

    from analysis.edge.federated import FederatedSettings
    from analysis.edge.leakage import AttackSettings
    from analysis.edge.sparse import SparseSettings
    from analysis.edge.train import TrainSettings as EdgeTraining
    from analysis.lm.train import TrainSettings as LMTraining

    sections = {FederatedSettings: ["edge.federated"], SparseSettings: ["edge.sparse"],
                AttackSettings: ["edge.leakage"], EdgeTraining: ["edge.pretrain", "edge.transfer"]}
    for cls, paths in sections.items():
        for path in paths:
            for field in dataclasses.fields(cls):
                if field.name in config_lib.schema_defaults(path):
                    assert field.default is dataclasses.MISSING, (cls.__name__, field.name)
    # The LM's TrainSettings keeps defaults for the tests and benchmarks that build it in code; they
    # must be the schema's (models.<name> and adaptation).
    schema = {**config_lib.schema_defaults("models.*"), **config_lib.schema_defaults("adaptation")}
    for field in dataclasses.fields(LMTraining):
        if field.name in schema and field.default is not dataclasses.MISSING:
            assert field.default == schema[field.name], field.name
