"""The GPU check's carried wheels, preflight, CUDA search and row handling, offline and without a GPU.

The carried set is benchmarks/gpu_carry.json (written by `make gpu-wheels`); the image's packages are
benchmarks/gpu_image.txt. An image package listed by name only is taken as meeting any version
requirement (its version was not read; gpu_check.sh's preflight reads the real ones on the machine).
"""

from __future__ import annotations

import inspect
import io
import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check, gpu_wheels

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest() -> dict:
    return gpu_wheels.read_manifest()


@pytest.fixture(scope="module")
def image() -> tuple[dict, dict]:
    return gpu_wheels.read_image()


def carried(manifest: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in manifest["carried"]}


# ------------------------------------------------------------------------------------------------
# The manifest against the lock, the image and the limit
# ------------------------------------------------------------------------------------------------

def test_manifest_matches_the_lock_and_the_image(manifest, image):
    """Fails when the lock or gpu_image.txt changes without `make gpu-wheels`."""
    lock = gpu_wheels.read_lock()
    packages, header = image
    stale = [f"{e['name']} {e['version']} (lock: {lock.get(e['name'])})" for e in manifest["carried"]
             if lock.get(e["name"]) != e["version"]]
    assert not stale, f"gpu_carry.json is stale against envs/requirements.lock: {stale}; run make gpu-wheels"
    for entry in manifest["carried"]:
        name, version = entry["filename"].split("-")[:2]
        assert (gpu_wheels.normalise(name), version) == (entry["name"], entry["version"]), entry["filename"]
    for name, meta in manifest["image_requires"].items():
        assert packages.get(name) == meta["version"], f"gpu_image.txt has {name} {packages.get(name)}"
    assert manifest["python"] == header["python_version"]


def test_every_carried_wheel_is_for_cpython_312_manylinux(manifest):
    tags = gpu_wheels.target_tags(manifest["python"])
    wrong = [e["filename"] for e in manifest["carried"] if not gpu_wheels.wheel_tags(e["filename"]) & tags]
    assert not wrong
    assert not gpu_wheels.wheel_tags("pydantic_core-2.50.4-cp311-cp311-manylinux_2_17_x86_64.whl") & tags


def test_the_torch_stack_comes_from_the_image(manifest):
    names = set(carried(manifest))
    assert not {n for n in names if gpu_wheels.IMAGE_ONLY.match(n)}
    # The deliberate choices of gpu_wheels' docstring.
    assert "transformers" in names and "huggingface-hub" not in names and "deepspeed" in names


def test_the_carried_set_is_closed(manifest, image):
    """What the check imports, by the project's code (every import in the modules its entry points
    reach) and as its --smoke run saw it (every process), resolves from the image plus the carried
    wheels for CPython 3.12 on Linux x86-64, recursively; the carried replacements meet the known
    requirements of the image's packages."""
    packages, header = image
    _, external = gpu_wheels.check_imports()
    roots, unknown = gpu_wheels.distributions_of(external)
    assert not unknown, f"modules no installed distribution provides: {unknown}"
    assert {"torch", "transformers", "deepspeed", "jsonschema"} <= roots
    assert manifest["observed_imports"], "gpu_carry.json has no record of the --smoke run's imports"
    problems = gpu_wheels.closure_problems(roots | set(manifest["observed_imports"]), packages, carried(manifest),
                                           manifest["image_requires"], header["python_full_version"])
    assert not problems, "\n".join(problems)


def test_the_carried_wheels_and_the_tree_fit_one_call(manifest):
    size = sum(e["size"] for e in manifest["carried"])
    assert size == manifest["carried_bytes"]
    try:
        tree = gpu_wheels.tree_bytes()
    except (OSError, subprocess.CalledProcessError):
        tree = manifest["tree_bytes_when_made"]  # no git here: the tree as it was when the manifest was made
    assert size + tree <= gpu_wheels.LIMIT_BYTES, f"{size / 2**20:.1f} + {tree / 2**20:.1f} MiB"


# ------------------------------------------------------------------------------------------------
# The closure check itself bites
# ------------------------------------------------------------------------------------------------

HUB_2 = {"version": "2.4.0", "requires_python": ">=3.10.0",
         "requires_dist": ["httpx2<3,>=2.0.0", "tomli>=1.1.0; python_version < \"3.11\"",
                           "pytest; extra == \"testing\""]}
SBERT = {"version": "6.0.1", "requires_dist": ["huggingface-hub<2.0.0,>=1.3.0", "transformers<6.0.0,>=5.0.0"]}


def test_closure_names_a_replacement_that_breaks_an_image_package():
    image = {"huggingface-hub": "1.33.0", "sentence-transformers": "6.0.1", "transformers": "5.17.0",
             "httpx2": None}
    problems = gpu_wheels.closure_problems(["huggingface-hub"], image, {"huggingface-hub": HUB_2},
                                           {"sentence-transformers": SBERT}, "3.12.3")
    assert problems == ["image sentence-transformers 6.0.1 requires huggingface-hub<2.0.0,>=1.3.0, but the "
                        "carried version is huggingface-hub 2.4.0"]


def test_closure_follows_requirements_evaluates_markers_and_ignores_unrequested_extras():
    # tomli applies below 3.11 only, pytest to an extra nobody asked for: neither is needed.
    problems = gpu_wheels.closure_problems(["huggingface-hub"], {}, {"huggingface-hub": HUB_2}, {}, "3.12.3")
    assert problems == ["carried huggingface-hub 2.4.0 requires httpx2<3,>=2.0.0, which is neither carried "
                        "nor in the image"]
    old = dict(HUB_2, requires_python=">=3.13")
    problems = gpu_wheels.closure_problems(["huggingface-hub"], {"httpx2": "2.1.0"}, {"huggingface-hub": old}, {},
                                           "3.12.3")
    assert problems == ["carried huggingface-hub 2.4.0 requires Python >=3.13, not 3.12.3"]


def test_a_new_third_party_import_in_the_package_fails_the_closure(tmp_path, monkeypatch, manifest, image):
    """A top-level import of a package neither carried nor in the image (snakemake; datasets, which
    the package otherwise imports only inside a function the check never calls) in a module the check
    reaches is found and named."""
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "gpu_check.py").write_text("from analysis import new_module\n")
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "__init__.py").write_text("")
    (tmp_path / "analysis" / "new_module.py").write_text("import json\nimport snakemake\nfrom . import other\n")
    (tmp_path / "analysis" / "other.py").write_text("import datasets as top\n\ndef f():\n    import jsonschema\n"
                                                   "    import datasets\n")
    monkeypatch.setattr(gpu_wheels, "REPO", tmp_path)
    project, external = gpu_wheels.check_imports(["benchmarks/gpu_check.py"])
    assert project == {"benchmarks.gpu_check", "analysis", "analysis.new_module", "analysis.other"}
    # datasets, which only a function the check never calls imports in the package, counts at a module's top.
    assert external == {"snakemake", "jsonschema", "datasets"}
    roots, _ = gpu_wheels.distributions_of(external)
    packages, header = image
    problems = gpu_wheels.closure_problems(roots, packages, carried(manifest), manifest["image_requires"],
                                           header["python_full_version"])
    assert problems == [f"the check imports {name}, which is neither carried nor in the image"
                        for name in ("datasets", "snakemake")]


# ------------------------------------------------------------------------------------------------
# Preflight on the GPU machine (gpu_check.sh: gpu_wheels.py check)
# ------------------------------------------------------------------------------------------------

def preflight(wheels: Path, installed: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_wheels.py"), "check", "--wheels", str(wheels),
                           "--installed", str(installed), "--python", "3.12"], capture_output=True, text=True)


@pytest.fixture
def fake_image(tmp_path) -> Path:
    """The image's list with jsonschema 4.26.0 already installed (so it needs no wheel)."""
    path = tmp_path / "image.txt"
    path.write_text(gpu_wheels.IMAGE_LIST.read_text() + "jsonschema==4.26.0\n")
    return path


def test_preflight_without_the_wheels_says_what_is_missing_and_how_to_carry_it(tmp_path, fake_image, manifest):
    done = preflight(tmp_path / "wheels", fake_image)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and done.stdout == ""
    first = manifest["carried"][0]
    assert f"{first['name']}=={first['version']}" in lines[0]
    assert "make gpu-wheels" in lines[0] and "carry `wheels`" in lines[0]


def test_preflight_refuses_a_wheel_for_another_python(tmp_path, fake_image, manifest):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    binary = next(e for e in manifest["carried"] if "-cp312-" in e["filename"])
    for entry in manifest["carried"]:
        name = entry["filename"].replace("-cp312-cp312-", "-cp311-cp311-") if entry is binary else entry["filename"]
        (wheels / name).write_bytes(b"")
    done = preflight(wheels, fake_image)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert binary["filename"].replace("-cp312-cp312-", "-cp311-cp311-") in line
    assert "not for CPython 3.12" in line and "make gpu-wheels" in line


def test_preflight_lists_the_wheels_to_install_and_skips_what_the_image_has(tmp_path, fake_image, manifest):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for entry in manifest["carried"]:
        (wheels / entry["filename"]).write_bytes(b"")
    done = preflight(wheels, fake_image)
    assert done.returncode == 0, done.stderr
    listed = {Path(line).name for line in done.stdout.split()}
    assert listed == {e["filename"] for e in manifest["carried"] if e["name"] != "jsonschema"}


def test_installed_versions_are_those_imports_see(tmp_path, monkeypatch):
    """The carried wheels' directory, first on the path, shadows the image's copy of the same name."""
    for where, version in (("carried", "2.50.4"), ("image", "2.50.5")):
        info = tmp_path / where / f"pydantic_core-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: pydantic_core\nVersion: {version}\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "carried"), str(tmp_path / "image")])
    assert gpu_wheels.installed_versions() == {"pydantic-core": "2.50.4"}


def test_after_install_names_unmet_requirements(manifest):
    installed = {"pydantic-core": "2.50.4", "typing-extensions": "4.10.0", "annotated-types": "0.8.0",
                 "typing-inspection": "0.4.5"}
    pydantic = {"carried": [e for e in manifest["carried"] if e["name"] == "pydantic"]}
    unmet = gpu_wheels.unmet_after_install(pydantic, installed, "3.12.3")
    assert unmet == ["pydantic requires typing-extensions>=4.16.0: typing-extensions 4.10.0 is installed"]


# ------------------------------------------------------------------------------------------------
# The CUDA toolkit search (gpu_check.sh: gpu_wheels.py cuda-env)
# ------------------------------------------------------------------------------------------------

def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def toolkit(home: Path) -> Path:
    executable(home / "bin/nvcc")
    (home / "include").mkdir(parents=True, exist_ok=True)
    (home / "include/cuda_runtime.h").write_text("")
    return home


def library(directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(b"")


def test_cuda_newest_toolkit_under_usr_local(tmp_path):
    local = tmp_path / "usr/local"
    for version in ("12.8", "13.0", "9.2"):
        toolkit(local / f"cuda-{version}")
    for lib in ("libcudart.so", "libcudart.so.13", "libcurand.so.10", "libcublas.so.13"):
        library(local / "cuda-13.0/lib64", lib)
    found = gpu_wheels.find_cuda({}, None, [local], [])
    assert found["home"] == local / "cuda-13.0" and found["found_by"] == str(local / "cuda-13.0")
    assert found["lib_dirs"] == [local / "cuda-13.0/lib64"] and found["missing"] == []


def test_cuda_home_and_nvcc_on_path_come_first(tmp_path):
    local = tmp_path / "usr/local"
    toolkit(local / "cuda")
    elsewhere = toolkit(tmp_path / "opt/cuda-x") / "bin/nvcc"
    link = tmp_path / "bin/nvcc"
    link.parent.mkdir()
    link.symlink_to(elsewhere)
    assert gpu_wheels.find_cuda({}, str(link), [local], [])["home"] == tmp_path / "opt/cuda-x"
    found = gpu_wheels.find_cuda({"CUDA_HOME": str(local / "cuda")}, str(link), [local], [])
    assert (found["home"], found["found_by"]) == (local / "cuda", "$CUDA_HOME")
    # A CUDA_HOME without nvcc (a runtime-only install) is passed over.
    found = gpu_wheels.find_cuda({"CUDA_HOME": str(tmp_path / "runtime-only")}, None, [local], [])
    assert found["home"] == local / "cuda"


def test_cuda_behind_an_nvcc_wrapper_script(tmp_path):
    """As on this project's CPU machine: /usr/local/bin/nvcc is a script that execs the toolkit's nvcc,
    so its ../.. (/usr/local) has no headers; the search goes on to /usr/local/cuda."""
    local = tmp_path / "usr/local"
    toolkit(local / "cuda-13.0")
    (local / "cuda").symlink_to(local / "cuda-13.0")
    library(local / "cuda-13.0/lib", "libcudart.so.13")
    wrapper = executable(local / "bin/nvcc")
    found = gpu_wheels.find_cuda({}, str(wrapper), [local], [])
    assert (found["home"], found["found_by"]) == (local / "cuda", str(local / "cuda"))
    assert found["lib_dirs"] == [local / "cuda/lib"] and found["missing"] == ["curand", "cublas"]


def test_cuda_from_the_pip_packages_links_the_versioned_libraries(tmp_path):
    """CUDA 13's pip wheels (cuda-toolkit) put nvcc and every library under nvidia/cu13, versioned only."""
    site = tmp_path / "site-packages"
    toolkit(site / "nvidia/cu13")
    for lib in ("libcudart.so.13", "libcurand.so.10", "libcublas.so.13"):
        library(site / "nvidia/cu13/lib", lib)
    found = gpu_wheels.find_cuda({}, None, [tmp_path / "usr/local"], [site])
    assert found["home"] == site / "nvidia/cu13" and found["found_by"].startswith("pip package tree")
    shim = tmp_path / "shim"
    exports = gpu_wheels.cuda_exports(found, {"LD_LIBRARY_PATH": "/x"}, shim)
    assert f"export CUDA_HOME={site / 'nvidia/cu13'}" in exports
    assert (shim / "libcudart.so").resolve() == site / "nvidia/cu13/lib/libcudart.so.13"
    assert f"export LD_LIBRARY_PATH={site / 'nvidia/cu13/lib'}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" in exports
    assert any(e.startswith("export LIBRARY_PATH=") and str(shim) in e for e in exports)


def test_cuda_nothing_found(tmp_path):
    found = gpu_wheels.find_cuda({}, None, [tmp_path], [tmp_path])
    assert found["home"] is None and found["missing"] == list(gpu_wheels.CUDA_LIBRARIES)
    assert gpu_wheels.cuda_exports(found, {}, tmp_path / "shim") == []


# ------------------------------------------------------------------------------------------------
# gpu_check.py: the job spec, and one failing row among others
# ------------------------------------------------------------------------------------------------

def test_the_job_spec_is_what_adapt_takes_and_the_rule_passes(tmp_path):
    from analysis.config import schema_defaults
    from analysis.lm.adapt import adapt

    row = gpu_check.Adapt("gpt2-xl", 512, 4, 4096, gpu_check.ZERO2_OFFLOAD)
    spec = gpu_check.check_spec(tmp_path / "model", row)
    job = gpu_check.adapt_job(tmp_path, row, spec, tmp_path / "tokens.bin", threads=4)
    assert set(job) - {"log"} == set(inspect.signature(adapt).parameters)
    rule = (REPO / "workflow/rules/adaptation_specs.smk").read_text()
    passed = re.search(r"for k in \((.*?)\)", rule, re.S).group(1)
    assert set(job["adaptation"]) == set(re.findall(r'"(\w+)"', passed))
    # The schema's defaults, with only what the check sets changed.
    defaults = schema_defaults("models.*")
    changed = {k for k in defaults if spec[k] != defaults[k]}
    assert changed == {"context_length", "micro_batch_size", "zero_stage", "offload_optimizer"}
    # The job's own plan check runs, as in the pipeline (train() resets the CUDA peak after it).
    assert job["adaptation"]["plan"] == schema_defaults("adaptation")["plan"]
    with pytest.raises(ValueError, match=r"models\.gpt2-xl-zero_stage5\.zero_stage"):
        gpu_check.check_spec(tmp_path, gpu_check.Adapt("gpt2-xl", 1024, 1, 1, {"zero_stage": 5}))


def test_short_error_keeps_the_line_that_names_the_error():
    text = "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory | tried\n\nwarnings\n"
    assert gpu_check.short_error(text) == "RuntimeError: CUDA out of memory / tried"
    assert gpu_check.short_error("x" * 300).endswith("...") and len(gpu_check.short_error("x" * 300)) == 160


def test_a_failing_row_is_reported_and_the_others_run(tmp_path, monkeypatch):
    """The rows around a failing one still run; the table shows the error and the exit status is 1."""
    def run_adapt(work, row, spec, tokens, gpus, threads, timeout):
        if row.setting == gpu_check.ZERO2_OFFLOAD:
            raise gpu_check.RowError("PipelineError: offload_optimizer needs DeepSpeed's cpu_adam op", "log")
        return {"metrics": {"tokens_per_second": 100.0, "precision": "float32", "steps": 3},
                "memory": {"total_parameters": 1000, "peak_resident_bytes": 2e9}, "wall": 1.0}

    monkeypatch.setattr(gpu_check, "save_model", lambda directory, shape, device: directory)
    monkeypatch.setattr(gpu_check, "save_tokens", lambda stem, *args: stem.with_suffix(".bin"))
    monkeypatch.setattr(gpu_check, "run_adapt", run_adapt)
    monkeypatch.setattr(gpu_check, "planned_bytes", lambda *args: 1e9)
    monkeypatch.setattr(gpu_check, "perplexity_rates", lambda *args: (30.0, 10.0))
    out = io.StringIO()
    status = gpu_check.run_check(out, ["--smoke", "--out", str(tmp_path / "table.md")])
    assert status == 1
    rows = [line for line in out.getvalue().splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 5
    failed = [line for line in rows if "FAILED" in line]
    assert len(failed) == 1 and "ZeRO-2 + offload optimizer" in failed[0] and "cpu_adam" in failed[0]
    assert "| 3.00x |" in rows[-1]
    assert (tmp_path / "table.md").read_text().count("\n| ") == 2 + 5
