"""The demo corpus: deterministic, M2D2-shaped, and shaped like the paper's data.

Wikipedia-like domains must resemble the source corpus and S2ORC-like ones must not; measured here
with the Jensen-Shannon divergence of word frequencies and with the newline structure.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pytest

from analysis.corpora import catalogue, demo, m2d2

SIZES = {"train": 40, "valid": 5, "test": 5}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    demo.generate(root, seed=11, source_documents=300, domain_documents=SIZES, archived_domains=["math.AG"])
    return root


def test_same_seed_gives_identical_bytes(tree, tmp_path):
    demo.generate(tmp_path, seed=11, source_documents=300, domain_documents=SIZES, archived_domains=["math.AG"])
    written = sorted(p.relative_to(tree) for p in tree.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert all((tree / p).read_bytes() == (tmp_path / p).read_bytes() for p in written)


def test_other_seed_gives_other_text(tree, tmp_path):
    demo.generate(tmp_path, seed=12, source_documents=300, domain_documents=SIZES)
    assert (tree / "m2d2/hep-ex/train.txt").read_bytes() != (tmp_path / "m2d2/hep-ex/train.txt").read_bytes()


def test_output_paths_match_what_is_written(tree):
    paths = demo.output_paths(tree, ["math.AG"])
    listed = {p for group in paths.values() for p in group}
    assert listed == {str(p) for p in tree.rglob("*") if p.is_file()}


def test_real_m2d2_names_four_per_portion():
    portions = Counter(catalogue.portion(d) for d in demo.DOMAINS)
    assert portions["wiki"] >= 4 and portions["s2orc"] >= 4
    assert set(demo.DOMAINS) <= catalogue.M2D2_DOMAINS


def test_tree_reads_in_both_release_forms(tree):
    for domain in demo.DOMAINS:
        expected_kind = "archive" if domain == "math.AG" else "directory"
        assert m2d2.locate_domain(tree / "m2d2", domain).kind == expected_kind
        for split in m2d2.SPLITS:
            lines = m2d2.read_split(tree / "m2d2", domain, split).lines
            documents = m2d2.documents(lines, "paragraph")
            assert len(documents) == SIZES[split]


def test_source_corpus_is_web_text_with_blank_line_paragraphs(tree):
    records = [json.loads(line) for line in (tree / "sources/webtext.jsonl").read_text().splitlines()]
    assert len(records) == 300 and len({r["id"] for r in records}) == 300
    assert sum("\n\n" in r["text"] for r in records) > 250


def _words(text):
    return Counter(re.findall(r"[A-Za-z]+|[^\sA-Za-z]", text.lower()))


def _js_divergence(p: Counter, q: Counter) -> float:
    total_p, total_q = sum(p.values()), sum(q.values())
    out = 0.0
    for word in set(p) | set(q):
        a, b = p[word] / total_p, q[word] / total_q
        m = (a + b) / 2
        out += 0.5 * (a * math.log(a / m) if a else 0) + 0.5 * (b * math.log(b / m) if b else 0)
    return out


def test_wiki_like_domains_are_closer_to_the_source_than_s2orc_like(tree):
    source = Counter()
    for line in (tree / "sources/webtext.jsonl").read_text().splitlines():
        source.update(_words(json.loads(line)["text"]))
    divergence = {
        domain: _js_divergence(source, _words("\n".join(m2d2.read_split(tree / "m2d2", domain, "train").lines)))
        for domain in demo.DOMAINS
    }
    wiki = [v for d, v in divergence.items() if catalogue.portion(d) == "wiki"]
    s2orc = [v for d, v in divergence.items() if catalogue.portion(d) == "s2orc"]
    assert max(wiki) < min(s2orc), divergence


def test_s2orc_like_domains_have_their_own_line_structure(tree):
    """Headings and display equations sit on short lines of their own; Wikipedia-like text has only titles."""

    def short_line_share(domain):
        lines = [line for line in m2d2.read_split(tree / "m2d2", domain, "train").lines if line.strip()]
        return sum(len(line.split()) < 8 for line in lines) / len(lines)

    wiki = [short_line_share(d) for d in demo.DOMAINS if catalogue.portion(d) == "wiki"]
    s2orc = [short_line_share(d) for d in demo.DOMAINS if catalogue.portion(d) == "s2orc"]
    assert min(s2orc) > 1.8 * max(wiki), (wiki, s2orc)


def test_s2orc_like_domains_use_notation_the_source_never_does(tree):
    source = (tree / "sources/webtext.jsonl").read_text()
    assert "$" not in source and "\\" not in source.replace("\\n", "").replace('\\"', "")
    for domain in demo.FIELDS:
        text = "\n".join(m2d2.read_split(tree / "m2d2", domain, "train").lines)
        assert "$$" in text and re.search(r"\[\d+(, \d+)*\]", text)
