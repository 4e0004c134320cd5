"""Shared fixtures."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: torch in each runs one thread, set before torch is
    # imported. With two each, their spinning OpenMP threads slowed a model-training fixture from
    # seconds to 147 s. Jobs the tests start set their own threads (Snakemake: the rule's).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest
from filelock import FileLock

from tests.builders import WIKI_TEST, WIKI_TRAIN, WIKI_VALID, PAPER_TRAIN, write_domain_archive, write_domain_dir
from tests.workflow import small_demo_config, snakemake


@pytest.fixture
def m2d2_root(tmp_path: Path) -> Path:
    """A release-shaped root: typo'd Wikipedia names as directories, an arXiv name as an archive."""
    root = tmp_path / "m2d2"
    wiki = {"train": WIKI_TRAIN, "valid": WIKI_VALID, "test": WIKI_TEST}
    write_domain_dir(root, "General_referece__Further_research_tools_and_topics", wiki)
    write_domain_dir(root, "Human_activites__Human_activities", wiki)
    write_domain_archive(root, "math.AG", {"train": PAPER_TRAIN, "valid": "v\n", "test": "t\n"})
    return root


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The small demo run end to end, once per test session (~6 minutes); tests only read it.

    Under pytest-xdist (`make test`) each worker has its own session: the run lives in the
    directory the workers share, the first worker to need it makes it under a file lock, and the
    others wait for it and read its record (a failed run fails them all, without a second try).
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    workdir, record_file = root / "demo_workflow", root / "demo_workflow.json"
    configfile = workdir / "config.yaml"
    with FileLock(str(root / "demo_workflow.lock")):
        if not record_file.exists():
            workdir.mkdir()
            small_demo_config(configfile)
            # ~6 minutes on 2 quiet cores; the limit only guards against a hang.
            result = snakemake(workdir, configfile=configfile, timeout=1500)
            record_file.write_text(json.dumps({"returncode": result.returncode, "output": result.output}))
    record = json.loads(record_file.read_text())
    assert record["returncode"] == 0, record["output"][-4000:]
    # The run's closing words (onsuccess): what it made and its headline numbers, from its tables.
    assert "Headline numbers of this run:" in record["output"] and "Wikipedia vs S2ORC domains" in record["output"]
    return workdir, configfile


@pytest.fixture
def demo_copy(demo_run, tmp_path):
    """A copy of the demo run (outputs, checkpoints and Snakemake's records, modification times
    kept) for a test that deletes or rebuilds outputs: the shared run stays as the read-only tests
    expect it, whatever the order the tests run in."""
    workdir, configfile = demo_run
    copy = tmp_path / "demo"
    shutil.copytree(workdir, copy, symlinks=True)
    return copy, copy / configfile.relative_to(workdir)


# The fixtures whose tests share the one demo run of a test session.
DEMO_FIXTURES = {"demo_run", "demo_copy"}


def pytest_collection_modifyitems(config, items):
    """The tests of the demo run go first, as the suite's longest chain (the run, ~6 minutes on both
    cores, then its tests), and the SLURM test next, which mostly waits on its cluster. Under
    `make test`'s two workers the first worker to reach the run makes it and the other waits for it
    (the run keeps both cores busy). The order changes nothing else: the tests pass in any order."""
    demo = [item for item in items if DEMO_FIXTURES & set(getattr(item, "fixturenames", ()))]
    slurm = [item for item in items if item not in demo and item.path.name == "test_slurm.py"]
    first = demo + slurm
    items[:] = first + [item for item in items if item not in first]
