"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.builders import WIKI_TEST, WIKI_TRAIN, WIKI_VALID, PAPER_TRAIN, write_domain_archive, write_domain_dir


@pytest.fixture
def m2d2_root(tmp_path: Path) -> Path:
    """A release-shaped root: typo'd Wikipedia names as directories, an arXiv name as an archive."""
    root = tmp_path / "m2d2"
    wiki = {"train": WIKI_TRAIN, "valid": WIKI_VALID, "test": WIKI_TEST}
    write_domain_dir(root, "General_referece__Further_research_tools_and_topics", wiki)
    write_domain_dir(root, "Human_activites__Human_activities", wiki)
    write_domain_archive(root, "math.AG", {"train": PAPER_TRAIN, "valid": "v\n", "test": "t\n"})
    return root
