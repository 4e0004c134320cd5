"""Evaluation stage: join policies, chunk sampling, zero-shot vs adapted runs, tables and correlation."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.corpora import m2d2
from analysis.errors import PipelineError
from analysis.lm.evaluate import sample_chunks
from analysis.tables import perplexity as ppl_tables
from analysis.tables import tokens as token_lib
from tests.builders import WIKI_TEST, WIKI_TRAIN, save_tiny_gpt2, tiny_lm_texts, write_domain_dir


def test_keep_policy_is_the_split_exactly_as_released(tmp_path):
    write_domain_dir(tmp_path, "wiki", {"train": WIKI_TRAIN, "test": WIKI_TEST})
    train = m2d2.read_split(tmp_path, "wiki", "train")
    assert m2d2.lm_texts(train.lines, "keep") == [
        "Title one\nFirst paragraph.\nSecond paragraph.\n\nTitle two\nOnly paragraph.\n"
    ]
    test = m2d2.read_split(tmp_path, "wiki", "test")
    assert m2d2.lm_texts(test.lines, "keep") == [WIKI_TEST]
    assert m2d2.lm_texts(train.lines, "paragraph") == [
        "Title one\nFirst paragraph.\nSecond paragraph.", "Title two\nOnly paragraph."
    ]
    with pytest.raises(m2d2.CorpusError, match="unknown join policy 'lines'"):
        m2d2.lm_texts(train.lines, "lines")


@pytest.mark.parametrize("length, n, size", [(10_000, 16, 256), (1000, 50, 256), (100, 4, 256), (513, 2, 256)])
def test_chunks_are_disjoint_in_range_and_seeded(length, n, size):
    starts, chunk = sample_chunks(length, n, size, seed=7)
    assert chunk == min(size, length)
    assert len(starts) == min(n, length // chunk)
    assert (np.diff(starts) >= chunk).all() and starts.min() >= 0 and starts.max() + chunk <= length
    again, _ = sample_chunks(length, n, size, seed=7)
    assert np.array_equal(starts, again)
    other, _ = sample_chunks(length, n, size, seed=8)
    assert length < 4 * size or not np.array_equal(starts, other)  # few placements: may coincide


def fake_eval(model="m", stage="zero_shot", domain="d1", portion="wiki", ppl=10.0, **changes):
    record = {
        "model": model, "stage": stage, "train_policy": None if stage == "zero_shot" else "keep",
        "domain": domain, "portion": portion, "split": "test", "eval_policy": "keep", "window": 32, "stride": 16, "tokens": 100, "words": 50, "bytes": 400,
        "prefix_token_id": 0, "token_perplexity": ppl, "word_perplexity": ppl ** 2, "byte_perplexity": 1.5,
        "bits_per_byte": 0.58,
    }
    record.update(changes)
    return record


def write_evals(tmp_path, records):
    paths = []
    for record in records:
        path = tmp_path / f"{record['stage']}_{record['domain']}.json"
        path.write_text(json.dumps(record))
        paths.append(path)
    return paths


def test_perplexity_change_is_zero_shot_minus_adapted(tmp_path):
    zero = write_evals(tmp_path, [fake_eval(domain="d1", ppl=10.0), fake_eval(domain="d2", ppl=20.0)])
    adapted = write_evals(tmp_path, [fake_eval(stage="full", domain="d1", ppl=8.0),
                                     fake_eval(stage="full", domain="d2", ppl=25.0)])
    frame = ppl_tables.perplexity_table(zero, adapted, tmp_path / "p.tsv", tmp_path / "p.md")
    assert frame.set_index("domain")["ppl_change"].to_dict() == {"d1": 2.0, "d2": -5.0}
    assert frame.set_index("domain")["ppl_change_percent"].to_dict() == {"d1": 20.0, "d2": -25.0}
    assert (tmp_path / "p.md").read_text().startswith("# Perplexity before")
    assert pd.read_csv(tmp_path / "p.tsv", sep="\t").shape == (2, len(ppl_tables.COLUMNS))


def test_evaluations_with_different_settings_are_not_compared(tmp_path):
    zero = write_evals(tmp_path, [fake_eval(stride=8)])
    adapted = write_evals(tmp_path, [fake_eval(stage="full")])
    with pytest.raises(PipelineError, match="stride = 16 but the zero-shot evaluation has 8"):
        ppl_tables.collect(zero, adapted)


def test_correlations_match_scipy_and_are_undefined_for_too_few_domains():
    from scipy import stats

    rng = np.random.default_rng(0)
    domains = [f"d{i}" for i in range(8)]
    change = rng.normal(size=8)
    mmd = rng.random(8)
    perplexity = pd.DataFrame({"model": "m", "mode": "full", "train_policy": "keep", "domain": domains, "ppl_change": change,
                               "portion": ["wiki"] * 6 + ["s2orc"] * 2})
    distance = pd.DataFrame({"corpus": "c", "domain": domains, "portion": "x", "mmd": mmd, "fd": 2 * mmd + 1,
                             "mmd_unbiased": mmd - 0.5, "fd_corrected": np.nan})
    both = ppl_tables.correlations(perplexity, distance, {"m": "c"})
    frame = both[both["distance_estimator"] == "plugin"].set_index("portion")
    assert frame.loc["all", "n"] == frame.loc["all", "n_fd"] == 8 and bool(frame.loc["all", "pretraining_corpus"])
    assert frame.loc["all", "spearman_mmd"] == pytest.approx(stats.spearmanr(mmd, change).statistic)
    assert frame.loc["all", "pearson_mmd_p"] == pytest.approx(stats.pearsonr(mmd, change).pvalue)
    # FD is an increasing linear function of MMD here: the same rank and linear correlation.
    assert frame.loc["all", "spearman_fd"] == pytest.approx(frame.loc["all", "spearman_mmd"])
    assert frame.loc["all", "pearson_fd"] == pytest.approx(frame.loc["all", "pearson_mmd"])
    assert frame.loc["wiki", "n"] == 6 and not math.isnan(frame.loc["wiki", "spearman_mmd"])
    assert frame.loc["s2orc", "n"] == 2 and math.isnan(frame.loc["s2orc", "spearman_mmd"])
    # The corrected rows: the unbiased MMD (a shift of the plug-in here: the same correlations), and no
    # FD correlation where no domain has a corrected FD.
    corrected = both[both["distance_estimator"] == "corrected"].set_index("portion")
    assert corrected.loc["all", "spearman_mmd"] == pytest.approx(frame.loc["all", "spearman_mmd"])
    assert corrected.loc["all", "n"] == 8 and corrected.loc["all", "n_fd"] == 0
    assert math.isnan(corrected.loc["all", "spearman_fd"])


def test_corrected_fd_correlation_leaves_out_the_domains_without_one():
    from scipy import stats

    rng = np.random.default_rng(1)
    domains = [f"d{i}" for i in range(8)]
    change, fd = rng.normal(size=8), rng.random(8)
    corrected = fd.copy()
    corrected[[1, 5]] = np.nan  # two domains below the extrapolation's smallest size
    perplexity = pd.DataFrame({"model": "m", "mode": "full", "train_policy": "keep", "domain": domains,
                               "ppl_change": change, "portion": "wiki"})
    distance = pd.DataFrame({"corpus": "c", "domain": domains, "portion": "x", "mmd": fd, "fd": fd,
                             "mmd_unbiased": fd, "fd_corrected": corrected})
    frame = ppl_tables.correlations(perplexity, distance, {})
    row = frame[(frame["distance_estimator"] == "corrected") & (frame["portion"] == "all")].iloc[0]
    keep = ~np.isnan(corrected)
    assert (row["n"], row["n_fd"]) == (8, 6)
    assert row["spearman_fd"] == pytest.approx(stats.spearmanr(corrected[keep], change[keep]).statistic)


def test_spearman_p_value_is_exact_for_few_domains():
    from scipy import stats

    frame = ppl_tables.correlations(
        pd.DataFrame({"model": "m", "mode": "full", "train_policy": "keep", "domain": list("abcd"), "portion": "wiki",
                      "ppl_change": [1.0, 2.0, 3.0, 4.0]}),
        pd.DataFrame({"corpus": "c", "domain": list("abcd"), "portion": "x", "mmd": [0.1, 0.2, 0.3, 0.4],
                      "fd": [0.4, 0.1, 0.3, 0.2], "mmd_unbiased": [0.1, 0.2, 0.3, 0.4],
                      "fd_corrected": [0.4, 0.1, 0.3, 0.2]}), {})
    row = frame.iloc[0]
    assert row["spearman_mmd"] == 1.0 and row["spearman_mmd_p"] == pytest.approx(2 / 24)  # of 4! pairings
    # Ten domains: beyond the exact limit, scipy's approximation.
    x, y = np.arange(10.0), np.array([3, 1, 4, 1.5, 5, 9, 2, 6, 5.5, 3.5])
    assert ppl_tables._correlate(x, y)["spearman_p"] == pytest.approx(stats.spearmanr(x, y).pvalue)
    # Exact and brute force agree, on ties too. Two-sided is twice the smaller one-sided p-value
    # (scipy's definition); with ties the null distribution is not symmetric, so that is not the
    # share of pairings with |rho| at least the observed one (here 0.55).
    import itertools

    for x, y in [(np.array([1.0, 2, 2, 3, 5]), np.array([2.0, 1, 4, 3, 3])),
                 (np.array([0.3, 1.2, 0.1, 0.8, 0.5, 0.9]), np.array([2.0, 1.5, 0.2, 3.1, 0.7, 2.2]))]:
        rho = stats.spearmanr(x, y).statistic
        null = np.array([stats.spearmanr(x, p).statistic for p in itertools.permutations(y)])
        brute = min(1.0, 2 * min(np.mean(null >= rho - 1e-12), np.mean(null <= rho + 1e-12)))
        assert ppl_tables._exact_spearman_p(x, y) == pytest.approx(brute)


def test_token_changes_split_the_total_and_sum_to_it():
    vocab = {0: "\n", 1: "\n\n", 2: " ", 3: " the", 4: "x"}
    ids = np.array([[0, 3, 4, 1], [3, 2, 0, 4]])
    zero = np.array([[1.0, 2.0, 3.0, 1.5], [2.5, 0.5, 1.0, 2.0]])
    adapted = np.array([[2.0, 1.0, 2.5, 2.5], [2.0, 0.25, 1.5, 1.0]])
    frame = token_lib.token_changes(ids, zero, ids, adapted, vocab.__getitem__)
    assert frame["count"].sum() == ids.size
    assert frame["nll_change_sum"].sum() == pytest.approx((zero - adapted).sum())
    assert frame["change_share"].sum() == pytest.approx(1.0)
    rows = frame.set_index("token_id")
    assert rows.loc[0, "nll_change_sum"] == pytest.approx(-1.5) and rows.loc[0, "kind"] == "newline"
    assert rows.loc[2, "kind"] == "whitespace" and rows.loc[3, "kind"] == "other"
    assert rows.loc[1, "token"] == "\\n\\n" and rows.loc[3, "token"] == "' the'"
    summary = token_lib.summarise(frame, top_k=2)
    assert summary["newline_share"] + (summary["whitespace_share"] - summary["newline_share"]) + \
        summary["other_share"] == pytest.approx(1.0)
    assert summary["newline_share"] == pytest.approx(-2.5 / (zero - adapted).sum())
    assert summary["ppl_newline_zero_shot"] == pytest.approx(math.exp((1.0 + 1.5 + 1.0) / 3))
    assert summary["top_improved"].split(" ")[0] == "x"
    assert summary["top_degraded"].split(" ")[0] == "\\n"


def test_token_changes_refuse_different_chunks():
    ids = np.array([[1, 2, 3]])
    with pytest.raises(PipelineError, match="different tokens"):
        token_lib.token_changes(ids, np.ones((1, 3)), ids + 1, np.ones((1, 3)), str)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny model, a domain tokenised under the keep policy, zero-shot and 'adapted' evaluations."""
    import torch

    from analysis.lm.models import save_delta
    from analysis.lm.data import tokenize_domain
    from analysis.lm.evaluate import evaluate
    from analysis.lm.models import load_causal_lm

    root = tmp_path_factory.mktemp("eval")
    model_dir = save_tiny_gpt2(root / "model", context=32)
    texts = tiny_lm_texts(40, seed=3)
    split_text = "\n".join(texts[:20]) + "\n\n" + "\n".join(texts[20:]) + "\n"
    write_domain_dir(root / "m2d2", "dom", {"train": split_text, "valid": split_text, "test": split_text})
    tokens, meta = root / "dom.bin", root / "dom.json"
    tokenize_domain(model_name=str(model_dir), m2d2_root=str(root / "m2d2"), domain="dom", policy="keep",
                    output=tokens, metadata=meta)
    model = load_causal_lm(str(model_dir))
    with torch.no_grad():
        model.transformer.h[-1].mlp.c_fc.bias.add_(0.5)
    (root / "weights").mkdir()
    save_delta(model, ["transformer.h.1.mlp.c_fc.bias"], root / "weights", {"mode": "bias"})
    spec = {"name_or_path": str(model_dir), "context_length": 32, "dtype": "auto"}
    evaluation = {"split": "test", "window": None, "stride": None, "batch_size": 4,
                  "token_level": {"splits": ["train", "test"], "chunks": 5, "chunk_tokens": 64}}
    # What adapt's metrics.json says the adapted model was trained on: a capped run.
    (root / "metrics.json").write_text(json.dumps({"tokens_trained": 256, "max_train_tokens": 256,
                                                   "epoch_fraction": 0.25}))
    runs = {}
    for stage, weights, trained in (("zero_shot", None, None), ("bias", root / "weights", root / "metrics.json")):
        runs[stage] = evaluate(model_key="tiny", model_spec=spec, stage=stage, domain="dom", portion="wiki",
                               tokens=tokens, tokens_metadata=meta, output_json=root / f"{stage}.json",
                               output_npz=root / f"{stage}.npz", evaluation=evaluation, seed=1, weights=weights,
                               adapt_metrics=trained)
    return root, runs, json.loads(meta.read_text()), split_text


def test_keep_policy_tokenises_the_whole_split_with_newlines(evaluated):
    root, runs, meta, split_text = evaluated
    test = meta["splits"]["test"]
    assert meta["join_policy"] == "keep" and test["documents"] == 1
    assert test["words"] == len(split_text.split())
    assert test["bytes"] == len(split_text.rstrip("\n").encode())


def test_evaluation_records_what_it_scored(evaluated):
    root, runs, meta, _ = evaluated
    zero = runs["zero_shot"]
    assert zero["tokens"] == meta["splits"]["test"]["tokens"]
    assert (zero["window"], zero["stride"], zero["prefix"]) == (32, 16, "bos")
    assert zero["token_perplexity"] == pytest.approx(math.exp(zero["nll_sum"] / zero["tokens"]))
    assert zero["word_perplexity"] > zero["token_perplexity"]  # fewer words than tokens, same NLL
    assert zero["token_level"]["train"] == {**zero["token_level"]["train"], "chunks": 5, "chunk_tokens": 64,
                                            "tokens_scored": 5 * 63}
    assert json.loads((root / "zero_shot.json").read_text())["stage"] == "zero_shot"
    assert "train_tokens" not in zero and zero["vocab_size"] > 0
    assert {k: runs["bias"][k] for k in ("train_tokens", "max_train_tokens", "epoch_fraction")} == {
        "train_tokens": 256, "max_train_tokens": 256, "epoch_fraction": 0.25}


def test_adapted_model_is_scored_on_the_same_chunks_and_differs(evaluated):
    root, runs, _, _ = evaluated
    with np.load(root / "zero_shot.npz") as zero, np.load(root / "bias.npz") as adapted:
        for split in ("train", "test"):
            assert np.array_equal(zero[f"{split}_starts"], adapted[f"{split}_starts"])
            assert np.array_equal(zero[f"{split}_ids"], adapted[f"{split}_ids"])
            assert not np.allclose(zero[f"{split}_nll"], adapted[f"{split}_nll"])
    assert runs["bias"]["token_perplexity"] != pytest.approx(runs["zero_shot"]["token_perplexity"])


def test_chunk_nll_matches_scoring_the_chunk_alone(evaluated):
    import torch

    from analysis.lm.data import load_split
    from analysis.lm.models import load_causal_lm

    root, _, _, _ = evaluated
    model = load_causal_lm(str(root / "model")).eval()
    stream = load_split(root / "dom.bin", "train")
    with np.load(root / "zero_shot.npz") as zero:
        begin, nll = int(zero["train_starts"][0]), zero["train_nll"][0]
    chunk = torch.as_tensor(stream[begin : begin + 32], dtype=torch.long)[None]
    with torch.no_grad():
        logits = model(chunk).logits[0, :-1]
    expected = torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="none").numpy()
    np.testing.assert_allclose(nll[:31], expected, rtol=1e-5, atol=1e-6)


def test_token_tables_write_per_domain_tables_summary_and_figure(evaluated, tmp_path):
    root, _, _, _ = evaluated
    from analysis.lm.models import load_tokenizer

    tokenizer = load_tokenizer(str(root / "model"))
    summary = token_lib.token_tables(
        model="tiny", mode="bias", domains=["dom"], portions={"dom": "wiki"}, zero_shot=[root / "zero_shot.npz"],
        adapted=[root / "bias.npz"], decode=lambda i: tokenizer.decode([i]), tables=[tmp_path / "dom.tsv"],
        summary_tsv=tmp_path / "summary.tsv", summary_md=tmp_path / "summary.md", figure=tmp_path / "tokens.png",
        top_k=5)
    assert list(summary["split"]) == ["train", "test"]
    table = pd.read_csv(tmp_path / "dom.tsv", sep="\t", keep_default_na=False)
    for split, group in table.groupby("split"):
        assert group["change_share"].sum() == pytest.approx(1.0)
        assert group["count"].sum() == summary.set_index("split").loc[split, "tokens"]
    assert "\\n" in set(table["token"])  # the keep policy scores newline tokens
    assert (tmp_path / "tokens.png").stat().st_size > 10_000


def test_a_window_longer_than_the_model_is_refused(evaluated):
    from analysis.lm.evaluate import evaluate

    root, _, _, _ = evaluated
    spec = {"name_or_path": str(root / "model"), "context_length": 32, "dtype": "auto"}
    evaluation = {"split": "test", "window": 64, "stride": None, "batch_size": 4,
                  "token_level": {"splits": [], "chunks": 1, "chunk_tokens": 8}}
    with pytest.raises(PipelineError, match="evaluation.window = 64 exceeds the model's 32 positions"):
        evaluate(model_key="tiny", model_spec=spec, stage="zero_shot", domain="dom", portion="wiki",
                 tokens=root / "dom.npz", tokens_metadata=root / "dom.json", output_json=root / "never.json",
                 output_npz=root / "never.npz", evaluation=evaluation, seed=1)
    assert not (root / "never.json").exists()
