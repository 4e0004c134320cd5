"""The M2D2 reader: both release forms, exact lines, document policies, and every kind of bad input."""

from __future__ import annotations

import logging

import pytest

from analysis.corpora import m2d2
from analysis.errors import CorpusError
from tests.builders import PAPER_TRAIN, WIKI_TEST, WIKI_TRAIN, write_domain_archive, write_domain_dir

TYPO_WIKI = "General_referece__Further_research_tools_and_topics"


def test_directory_form_keeps_lines_and_blank_lines_exactly(m2d2_root):
    split = m2d2.read_split(m2d2_root, TYPO_WIKI, "train")
    assert split.lines == WIKI_TRAIN[:-1].split("\n")
    assert split.n_blank_lines == 2
    assert split.source.endswith(f"{TYPO_WIKI}/train.txt")


def test_last_line_without_newline_and_whitespace_are_kept(m2d2_root):
    split = m2d2.read_split(m2d2_root, TYPO_WIKI, "test")
    assert split.lines == ["Test title", "  indented paragraph  ", "", "Last one"]


def test_archive_form_is_read_without_extracting(m2d2_root):
    split = m2d2.read_split(m2d2_root, "math.AG", "train")
    assert split.lines == PAPER_TRAIN[:-1].split("\n")
    assert split.source.endswith("math.AG.tar.gz:math.AG/train.txt")
    assert not (m2d2_root / "math.AG").exists()


def test_archive_and_directory_give_identical_lines(tmp_path):
    splits = {"train": WIKI_TRAIN, "valid": "a\n", "test": WIKI_TEST}
    write_domain_dir(tmp_path / "dir", "Human_activites", splits)
    write_domain_archive(tmp_path / "arc", "Human_activites", splits)
    for split in splits:
        a = m2d2.read_split(tmp_path / "dir", "Human_activites", split)
        b = m2d2.read_split(tmp_path / "arc", "Human_activites", split)
        assert a.lines == b.lines and a.sha256 == b.sha256


def test_archive_member_found_at_any_depth(tmp_path):
    write_domain_archive(tmp_path, "hep-ex", {"train": "x\n"}, prefix="./release/hep-ex/SPLIT")
    assert m2d2.read_split(tmp_path, "hep-ex", "train").lines == ["x"]


def test_unicode_line_separators_do_not_split_paragraphs(tmp_path):
    write_domain_dir(tmp_path, "Art", {"train": "one\u2028still one\x0bstill\nnext\n"})
    assert m2d2.read_split(tmp_path, "Art", "train").lines == ["one\u2028still one\x0bstill", "next"]


def test_typo_names_are_located(m2d2_root):
    assert m2d2.locate_domain(m2d2_root, "Human_activites__Human_activities").kind == "directory"
    assert m2d2.available_domains(m2d2_root) == {
        TYPO_WIKI, "Human_activites__Human_activities", "math.AG",
    }


def test_line_policy_gives_each_non_blank_line():
    lines = WIKI_TRAIN[:-1].split("\n")
    assert m2d2.documents(lines, "line") == [
        "Title one", "First paragraph.", "Second paragraph.", "Title two", "Only paragraph.",
    ]


def test_paragraph_policy_joins_blank_line_separated_blocks():
    lines = WIKI_TRAIN[:-1].split("\n")
    assert m2d2.documents(lines, "paragraph") == [
        "Title one\nFirst paragraph.\nSecond paragraph.", "Title two\nOnly paragraph.",
    ]


def test_unknown_policy_is_an_error():
    with pytest.raises(CorpusError, match="unknown document policy 'lines'"):
        m2d2.documents(["a"], "lines")


def test_missing_domain_names_both_forms_and_suggests(m2d2_root):
    with pytest.raises(CorpusError) as info:
        m2d2.locate_domain(m2d2_root, "Human_activities__Human_activities")
    message = str(info.value)
    assert str(m2d2_root / "Human_activities__Human_activities") in message
    assert "Human_activities__Human_activities.tar.gz" in message
    assert "did you mean 'Human_activites__Human_activities'" in message


def test_missing_root_is_named(tmp_path):
    with pytest.raises(CorpusError, match="M2D2 root directory not found: .*nowhere"):
        m2d2.read_split(tmp_path / "nowhere", "hep-ex", "train")


def test_missing_split_file_is_named(tmp_path):
    write_domain_dir(tmp_path, "hep-ex", {"train": "x\n"})
    with pytest.raises(CorpusError, match=r"split file not found: .*hep-ex/test\.txt"):
        m2d2.read_split(tmp_path, "hep-ex", "test")


def test_missing_split_in_archive_is_named(tmp_path):
    archive = write_domain_archive(tmp_path, "hep-ex", {"train": "x\n"})
    with pytest.raises(CorpusError, match=f"'valid.txt' not found in archive {archive}"):
        m2d2.read_split(tmp_path, "hep-ex", "valid")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_split_is_an_error(tmp_path, content):
    write_domain_dir(tmp_path, "hep-ex", {"train": content})
    with pytest.raises(CorpusError, match=r"split is empty .*hep-ex/train\.txt"):
        m2d2.read_split(tmp_path, "hep-ex", "train")


def test_a_few_invalid_bytes_are_replaced_counted_and_logged(tmp_path, caplog):
    good = b"".join(b"line %d\n" % i for i in range(200))
    write_domain_dir(tmp_path, "hep-ex", {"train": good + b"bad \xff\xfe byte\n"})
    with caplog.at_level(logging.WARNING):
        split = m2d2.read_split(tmp_path, "hep-ex", "train")
    assert split.n_invalid_lines == 1 and split.n_replaced_bytes == 2
    assert split.lines[-1] == "bad \ufffd\ufffd byte"
    assert "1 of 201 lines had invalid UTF-8; 2 bytes were replaced" in caplog.text
    assert "hep-ex/train.txt" in caplog.text


def test_mostly_invalid_bytes_are_rejected_as_not_text(tmp_path):
    write_domain_dir(tmp_path, "hep-ex", {"train": b"\xff\xfe\n\x80\x81\nok\n"})
    with pytest.raises(CorpusError, match=r"hep-ex/train\.txt: not UTF-8 text: 2 of 3 lines"):
        m2d2.read_split(tmp_path, "hep-ex", "train")


def test_truncated_archive_is_reported_as_corrupted(tmp_path):
    archive = write_domain_archive(tmp_path, "hep-ex", {"train": "x" * 100_000 + "\n"})
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(CorpusError, match=f"cannot read M2D2 archive {archive}: corrupted or truncated"):
        m2d2.read_split(tmp_path, "hep-ex", "train")


def test_garbage_archive_is_reported_as_corrupted(tmp_path):
    (tmp_path / "hep-ex.tar.gz").write_bytes(b"this is not a tar file at all")
    with pytest.raises(CorpusError, match="hep-ex.tar.gz: corrupted or truncated"):
        m2d2.read_split(tmp_path, "hep-ex", "train")
