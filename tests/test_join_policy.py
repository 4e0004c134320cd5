"""The join-policy ablation: the texts each policy makes, and the split of the perplexity change."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import config as config_lib
from analysis.config import ConfigError
from analysis.corpora import m2d2
from analysis.tables import join_policy
from analysis.tables.tokens import token_changes
from tests.builders import REPO, WIKI_TEST, WIKI_TRAIN, write_domain_dir


@pytest.fixture
def wiki(tmp_path):
    write_domain_dir(tmp_path, "wiki", {"train": WIKI_TRAIN, "test": WIKI_TEST})
    return {split: m2d2.read_split(tmp_path, "wiki", split).lines for split in ("train", "test")}


def test_each_policy_makes_the_texts_it_claims(wiki):
    train, test = wiki["train"], wiki["test"]
    assert m2d2.lm_texts(train, "keep") == ["Title one\nFirst paragraph.\nSecond paragraph.\n\nTitle two\nOnly paragraph.\n"]
    assert m2d2.lm_texts(test, "keep") == ["Test title\n  indented paragraph  \n\nLast one"]
    assert m2d2.lm_texts(train, "strip") == ["Title one", "First paragraph.", "Second paragraph.", "Title two",
                                              "Only paragraph."]
    assert m2d2.lm_texts(test, "strip") == ["Test title", "indented paragraph", "Last one"]
    assert m2d2.lm_texts(train, "paragraph") == ["Title one\nFirst paragraph.\nSecond paragraph.",
                                                  "Title two\nOnly paragraph."]
    assert m2d2.lm_texts(test, "paragraph") == ["Test title\n  indented paragraph  ", "Last one"]
    assert m2d2.lm_texts(test, "line") == ["Test title", "  indented paragraph  ", "Last one"]
    assert [m2d2.ends_with_eos(p) for p in m2d2.JOIN_POLICIES] == [p != "strip" for p in m2d2.JOIN_POLICIES]


class CharTokenizer:
    """One token per character (ids = code points), EOS = 0: enough to check the stream layout."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False, verbose=False):
        return {"input_ids": [[ord(c) for c in text] for text in texts]}


def test_strip_concatenates_without_separator_and_the_others_end_texts_with_eos(wiki):
    from analysis.lm.data import tokenize_documents

    tokenizer = CharTokenizer()
    stripped, starts = tokenize_documents(tokenizer, m2d2.lm_texts(wiki["test"], "strip"), eos=False)
    assert "".join(map(chr, stripped)) == "Test titleindented paragraphLast one"
    assert list(starts) == [0, 10, 28]
    kept, _ = tokenize_documents(tokenizer, m2d2.lm_texts(wiki["test"], "keep"))
    assert "".join(map(chr, kept[:-1])) == WIKI_TEST and kept[-1] == 0
    paragraphs, _ = tokenize_documents(tokenizer, m2d2.lm_texts(wiki["test"], "paragraph"))
    assert (paragraphs == 0).sum() == 2


VOCAB = {0: "\n", 1: "\n\n", 2: " ", 3: " the", 4: "x"}


def chunks(seed: int, shape=(3, 40)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 5, size=shape), rng.gamma(2.0, 1.0, size=shape)


def test_whitespace_and_other_changes_add_up_to_the_total():
    ids, zero = chunks(0)
    _, adapted = chunks(1)
    row = join_policy.split_change(token_changes(ids, zero, ids, adapted, VOCAB.__getitem__))
    assert row["nll_change_total"] == pytest.approx((zero - adapted).sum())
    assert row["nll_change_whitespace"] + row["nll_change_other"] == pytest.approx(row["nll_change_total"])
    newline = np.isin(ids, [0, 1])
    assert row["newline_tokens"] == newline.sum() and row["whitespace_tokens"] == np.isin(ids, [0, 1, 2]).sum()
    assert row["newline_share"] == pytest.approx((zero - adapted)[newline].sum() / (zero - adapted).sum())
    assert row["ppl_newline_zero_shot"] == pytest.approx(np.exp(zero[newline].mean()))
    assert row["ppl_other_change"] == pytest.approx(
        np.exp(zero[~np.isin(ids, [0, 1, 2])].mean()) - np.exp(adapted[~np.isin(ids, [0, 1, 2])].mean()))


def write_run(root, stage_dir, domain, ppl, ids, nll, policy=None):
    path = root / "eval" / "m" / stage_dir
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{domain}.json").write_text(json.dumps({
        "token_perplexity": ppl, "portion": "wiki", "eval_policy": "keep", "train_policy": policy}))
    np.savez(path / f"{domain}.npz", test_ids=ids, test_nll=nll, test_starts=np.arange(len(ids)))


def test_ablation_table_has_a_row_per_policy_and_domain(tmp_path):
    ids, zero = chunks(0)
    runs = []
    for domain in ("d1", "d2"):
        write_run(tmp_path, "zero_shot", domain, 10.0, ids, zero)
        for k, policy in enumerate(("keep", "strip")):
            _, adapted = chunks(10 + k)
            write_run(tmp_path, f"{policy}/full", domain, 9.0 + k, ids, adapted, policy)
            runs.append({"model": "m", "train_policy": policy, "domain": domain,
                         "zero_shot": str(tmp_path / "eval/m/zero_shot" / domain),
                         "adapted": str(tmp_path / f"eval/m/{policy}/full" / domain)})
    frame = join_policy.join_policy_table(runs, "full", {"m": VOCAB.__getitem__}, tmp_path / "j.tsv",
                                          tmp_path / "j.md", [tmp_path / "j.png"], ["m"])
    assert list(zip(frame["domain"], frame["train_policy"])) == [("d1", "keep"), ("d1", "strip"), ("d2", "keep"),
                                                                  ("d2", "strip")]
    assert frame["ppl_change"].tolist() == [1.0, 0.0, 1.0, 0.0]
    np.testing.assert_allclose(frame["nll_change_whitespace"] + frame["nll_change_other"], frame["nll_change_total"])
    assert pd.read_csv(tmp_path / "j.tsv", sep="\t").shape == (4, len(join_policy.COLUMNS))
    assert (tmp_path / "j.png").stat().st_size > 10_000


def test_ablation_names_must_exist():
    cfg = config_lib.load(REPO / "config.yaml")
    cfg["adaptation"]["join_ablation"]["models"] = ["gpt2"]
    with pytest.raises(ConfigError, match="'adaptation.join_ablation.models' names 'gpt2'"):
        config_lib.validate(cfg)
    cfg = config_lib.load(REPO / "config.yaml")
    cfg["adaptation"]["join_ablation"]["domains"] = ["hep-lat"]
    with pytest.raises(ConfigError, match="'adaptation.join_ablation.domains' names 'hep-lat'.*did you mean 'hep-ex'"):
        config_lib.validate(cfg)
