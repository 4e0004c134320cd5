"""What benchmarks/gpu_check.sh carries to a GPU machine without network access, and its checks there.

    .venv/bin/python benchmarks/gpu_wheels.py wheels [DIR]   (make gpu-wheels: wheels/ and gpu_carry.json)
    python3 benchmarks/gpu_wheels.py check [--wheels DIR]    (on the GPU machine: the wheels to install)
    python3 benchmarks/gpu_wheels.py cuda-env                (on the GPU machine: CUDA_HOME and libraries)
    .venv/bin/python benchmarks/gpu_wheels.py observe -- CMD (the distributions CMD's processes import)
    .venv/bin/python benchmarks/gpu_wheels.py --smoke        (offline, make test: the committed manifest as a
                                                              table, its closure against the image and its size)

**Target.** The lent machine (/work/.library/device/KINDS.md, kind nvidia-h200) runs CPython 3.12 on
Linux x86-64 with an image whose packages benchmarks/gpu_image.txt lists (gpu_check.sh refreshes it).
Only wheels for that interpreter are fetched (``pip download --only-binary=:all: --python-version
3.12 --implementation cp`` with the manylinux x86-64 platforms), and each call to the machine carries
at most 64 MiB, the working tree included: the wheels and the tree must fit together.

**What is carried** is computed, not listed: from the distributions the check imports (the modules
that benchmarks/gpu_check.py and workflow/scripts/adapt.py reach in the project, and everything the
check's --smoke run imported, in every process, when the manifest was made), each is taken from the
image when the image has it, else from envs/requirements.lock at its pinned version, following the
Requires-Dist of every carried wheel (markers for CPython 3.12 on Linux x86-64) until nothing is
missing. An image package whose version is not known (a name alone in gpu_image.txt) is taken as
satisfying any requirement; ``check`` reads the real versions on the machine. Deliberate choices:

* torch (and triton, the nvidia-* and cuda-* libraries): the image's 2.11.0 CUDA 13.0 build, never
  the lock's 2.13.0: a CUDA torch wheel, without its CUDA libraries, is many times the 64 MiB.
* transformers: the lock's 5.23.0 (13 MB), not the image's 5.17.0. The check measures the project's
  training path (the model code sets tokens/s and activation memory), which the tests run on the
  lock's version. The image's packages accept it: sentence-transformers 6.0.1 wants >=5.0,<6,
  accelerate 1.15.0 does not require it, and peft (its image version not known; the lock's 0.21.2
  requires transformers without bounds) serves only the lora mode, which the check does not run.
  5.23.0 itself wants huggingface-hub >=1.31,<3 and tokenizers >=0.23.1,<0.24: the image's meet both.
* huggingface_hub: the image's 1.33.0, not the lock's 2.4.0. 2.x needs httpx2 (and httpcore2), which
  the image lacks, and it would break the image's sentence-transformers 6.0.1 and tokenizers 0.23.2
  (both require huggingface-hub <2.0); the check never reaches the hub (HF_HUB_OFFLINE=1), so
  nothing it measures depends on the choice.
* tokenizers, peft, accelerate, safetensors, numpy, pandas and the rest the image has: the image's
  (tokenizers 0.23.2 meets transformers 5.23.0's >=0.23.1,<0.24; numpy 2.5.2 is the one the image's
  torch, scipy and pandas were built against; peft only serves the lora mode, which the check does
  not run).
* typing-extensions: the lock's, although the image has one: pydantic (for DeepSpeed) requires
  >=4.16.0, the lock's own pin, and the image's version is not known; 45 kB against a failed run.
* DeepSpeed publishes only a source distribution: its wheel is built here with DS_BUILD_OPS=0 (pure
  Python; it compiles its CPU Adam on first use on the machine, which gpu_check.py starts at once).
* What the image lacks comes from the lock: jsonschema (with referencing, rpds-py and
  jsonschema-specifications; ``analysis.config`` imports it at the top), DeepSpeed's hjson and
  pydantic (with pydantic-core, annotated-types, typing-inspection).

The set was 12 wheels, 18.0 MiB, with a 1.3 MiB tree: everything fits (gpu_carry.json has the
sizes). Should it ever exceed the limit, ``wheels`` stops and names the largest wheels. The ZeRO rows
need DeepSpeed and the package needs jsonschema, so the one to drop is transformers (remove it from
FROM_LOCK): the check then runs, and measures, the image's 5.17.0, which the tests here do not run
(an incompatibility would show as a failing row, each row running on its own).

benchmarks/gpu_carry.json (the manifest, committed) records each carried wheel's name, version, file
name, size, Requires-Python and Requires-Dist, the Requires-Dist of the image packages that depend on
carried ones (read from their PyPI wheels), and the distributions the --smoke run imported;
tests/test_gpu_check.py checks from it, offline, that the set is closed and fits.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Callable, Iterable, Mapping

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "envs/requirements.lock"
IMAGE_LIST = REPO / "benchmarks/gpu_image.txt"
MANIFEST = REPO / "benchmarks/gpu_carry.json"
#: What one call to the lent machine carries, working tree included (/work/.library/device/README.md).
LIMIT_BYTES = 64 * 2**20
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
#: Where the check starts: its own script and the adapt job it launches.
ENTRY_POINTS = ("benchmarks/gpu_check.py", "workflow/scripts/adapt.py")
PROJECT_MODULES = {"analysis", "benchmarks", "workflow"}
#: Imports inside functions, in modules the check reaches, that the check never calls.
NOT_ON_CHECK_PATH = {
    "datasets": "analysis.corpora.sources loads a hub dataset with it; the check reads random tokens, offline",
    "gguf": "analysis.lm.gguf reads and converts a model given as a GGUF file; the check's models are none",
}
#: The image's CUDA stack: never carried (see the module docstring).
IMAGE_ONLY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
#: Taken from the lock although the image has a version (why: the module docstring).
FROM_LOCK = {
    "transformers": "the lock's version: the check measures the project's training path as tested",
    "typing-extensions": "pydantic needs >=4.16.0; the image's version is not known",
}
#: Image packages whose Requires-Dist the manifest records: they import what is carried, so a carried
#: replacement must meet their requirements too.
IMAGE_REQUIRES = ("accelerate", "huggingface-hub", "sentence-transformers", "tokenizers")
WHEELS_HINT = ("run `make gpu-wheels` where PyPI is reachable, then carry `wheels` with the tree "
               "(device tool: carry [\"wheels\"])")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------------------------
# The lists: the lock, the image, the manifest
# ------------------------------------------------------------------------------------------------

def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalise(name)] = version.strip()
    return pins


def read_image(path: Path = IMAGE_LIST) -> tuple[dict[str, str | None], dict[str, str]]:
    """``({name: version or None}, header)``: the image's packages and its ``# key: value`` lines."""
    packages: dict[str, str | None] = {}
    header: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#"):
            match = re.match(r"#\s*([a-z_]+):\s*(\S.*)$", line)
            if match:
                header[match.group(1)] = match.group(2).strip()
            continue
        if not line:
            continue
        if " @ " in line:  # pip freeze's direct references: the name is what matters
            packages[normalise(line.split(" @ ", 1)[0])] = None
        elif "==" in line:
            name, version = line.split("==", 1)
            packages[normalise(name)] = version.strip()
        else:
            packages[normalise(line)] = None
    if "python_version" not in header:
        raise SystemExit(f"{path}: no '# python_version: X.Y' line (gpu_check.sh writes one)")
    return packages, header


def read_manifest(path: Path = MANIFEST) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"{path} not found: {WHEELS_HINT}") from None


def wheel_metadata(path: Path) -> dict:
    """Name, version, Requires-Python and Requires-Dist of a wheel, from its METADATA."""
    with zipfile.ZipFile(path) as wheel:
        name = next(n for n in wheel.namelist() if re.match(r"^[^/]+\.dist-info/METADATA$", n))
        message = Parser().parsestr(wheel.read(name).decode("utf-8"))
    return {"name": normalise(message["Name"]), "version": message["Version"],
            "requires_python": message.get("Requires-Python"),
            "requires_dist": message.get_all("Requires-Dist") or []}


def wheel_tags(filename: str) -> set[str]:
    """The ``python-abi-platform`` tags of a wheel file name."""
    from packaging.utils import parse_wheel_filename

    return {str(tag) for tag in parse_wheel_filename(filename)[3]}


def target_tags(python: str) -> set[str]:
    """Tags a CPython ``python`` on manylinux x86-64 installs (glibc up to 2.39, Ubuntu 24.04's)."""
    from packaging import tags

    version = tuple(int(p) for p in python.split(".")[:2])
    platforms = [f"manylinux_2_{n}_x86_64" for n in range(39, 4, -1)] + [
        "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    interpreter = f"cp{version[0]}{version[1]}"
    found = set(tags.cpython_tags(version, platforms=platforms))
    found |= set(tags.compatible_tags(version, interpreter=interpreter, platforms=platforms))
    return {str(tag) for tag in found}


def marker_environment(python: str) -> dict[str, str]:
    """PEP 508 marker values of CPython ``python`` (X.Y or X.Y.Z) on Linux x86-64."""
    full = python if python.count(".") >= 2 else f"{python}.0"
    return {"python_version": ".".join(full.split(".")[:2]), "python_full_version": full,
            "implementation_name": "cpython", "implementation_version": full,
            "platform_python_implementation": "CPython", "os_name": "posix", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "platform_release": "",
            "platform_version": ""}


def requirements(requires_dist: Iterable[str], extras: Iterable[str], env: Mapping[str, str]) -> list:
    """The requirements that apply: markers evaluated for ``env``, extras only when requested."""
    from packaging.requirements import Requirement

    wanted = [""] + sorted(extras)
    out = []
    for text in requires_dist:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**env, "extra": extra}) for extra in wanted):
            out.append(req)
    return out


# ------------------------------------------------------------------------------------------------
# Which distributions the check imports
# ------------------------------------------------------------------------------------------------

def _module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imports_of(path: Path, module: str) -> list[tuple[str, bool]]:
    """Every module a file imports, at the top or inside functions (relative imports resolved), and
    whether the import statement is inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    nested = {id(inner) for node in ast.walk(tree)
              if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
              for inner in ast.walk(node) if inner is not node}
    found = []
    for node in ast.walk(tree):
        inside = id(node) in nested
        if isinstance(node, ast.Import):
            found += [(alias.name, inside) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join((package[: len(package) - node.level + 1] if node.level else [])
                            + ([node.module] if node.module else []))
            found.append((base, inside))
            found += [(f"{base}.{alias.name}", inside) for alias in node.names
                      if _module_file(f"{base}.{alias.name}")]
    return found


def check_imports(entry_points: Iterable[str] = ENTRY_POINTS) -> tuple[set[str], set[str]]:
    """``(project modules, third-party top-level modules)`` that the check's code imports: the project
    modules it reaches from its entry points, following every import (top-level or in a function),
    and what those import outside the project and the standard library, less NOT_ON_CHECK_PATH's
    imports inside functions (at a module's top they would run)."""
    todo = [(Path(p).with_suffix("").as_posix().replace("/", "."), REPO / p) for p in entry_points]
    seen: dict[str, Path] = {}
    external: set[str] = set()
    while todo:
        module, path = todo.pop()
        if module in seen:
            continue
        seen[module] = path
        for name, inside in _imports_of(path, module):
            root = name.split(".")[0]
            if root in PROJECT_MODULES:
                parts = name.split(".")
                todo += [(".".join(parts[:i]), f) for i in range(1, len(parts) + 1)
                         if (f := _module_file(".".join(parts[:i])))]
            elif root and root not in sys.stdlib_module_names and not (inside and root in NOT_ON_CHECK_PATH):
                external.add(root)
    return set(seen), external


def distributions_of(modules: Iterable[str] | Mapping[str, str | None]) -> tuple[set[str], set[str]]:
    """``(distributions, unknown modules)``: the installed distributions that provide ``modules``
    (top-level names, or a mapping of them to their files: a module vendored inside another
    distribution, such as setuptools/_vendor/jaraco, belongs to that one). A name of no distribution,
    the standard library or the project, with a file, is unknown; one without a file was made at run
    time (cython_runtime)."""
    import importlib.metadata

    import sysconfig

    files = dict(modules) if isinstance(modules, Mapping) else dict.fromkeys(modules)
    owners = importlib.metadata.packages_distributions()
    project = {normalise(d) for m in PROJECT_MODULES for d in owners.get(m, [])}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    dists, unknown = set(), set()
    for module, file in files.items():
        if module in PROJECT_MODULES or module in sys.stdlib_module_names or module in sys.builtin_module_names:
            continue
        site = next((p for p in ("site-packages", "dist-packages") if file and p in Path(file).parts), None)
        if module.startswith("__editable__") or (file and not site and stdlib in Path(file).parents):
            continue  # the project's editable-install finder; the standard library's own data modules
        names = {normalise(d) for d in owners.get(module, [])}
        if not names and site:
            parts = Path(file).parts
            names = {normalise(d) for d in owners.get(parts[parts.index(site) + 1], [])}
        if names - project:
            dists |= names - project
        elif not names and (file or not isinstance(modules, Mapping)) and module not in (
                "__main__", "__mp_main__", "sitecustomize"):
            unknown.add(module)
    return dists, unknown


def local_only(observed: Iterable[str], image: Mapping[str, str | None], carried: Mapping[str, Mapping],
               python: str) -> dict[str, str]:
    """Distributions the --smoke run imported here that the machine will not: neither the image nor a
    carried wheel has them, and no carried wheel requires them (closure_problems checks that). Why
    each was imported here, from this environment's metadata: an optional import (no imported
    distribution requires it), or a requirement of the lock's version of a package that the machine
    runs in the image's version (huggingface_hub 2.x's httpx2)."""
    import importlib.metadata

    env = marker_environment(python)
    observed = set(observed)
    requirers: dict[str, list[str]] = {}
    for dist in importlib.metadata.distributions():
        name = normalise(dist.metadata["Name"] or "")
        if name in observed:
            for req in requirements(dist.requires or [], (), env):
                requirers.setdefault(normalise(req.name), []).append(f"{name} {dist.version}")
    out = {}
    for name in sorted(observed - set(image) - set(carried)):
        who = requirers.get(name)
        out[name] = (f"required here by {', '.join(who)}; the machine runs the image's version" if who
                     else "an optional import: no imported distribution requires it")
    return out


#: Written into a temporary directory put first on PYTHONPATH: every Python process started under it
#: (the check, its adapt jobs) records the top-level modules it imported when it exits.
_HOOK = '''import atexit, os, sys

def _record_imports():
    import json
    top = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items()) if "." not in name}
    with open(os.path.join(os.environ["GPU_WHEELS_OBSERVE"], f"{os.getpid()}.json"), "w") as out:
        json.dump(top, out)

atexit.register(_record_imports)
'''


def observe(command: list[str], env: Mapping[str, str] | None = None) -> tuple[dict[str, str | None], int]:
    """Top-level modules (and their files) imported by ``command`` and every Python process it
    starts; its exit status."""
    with tempfile.TemporaryDirectory(prefix="gpu-wheels-observe-") as tmp:
        hook, records = Path(tmp, "hook"), Path(tmp, "records")
        hook.mkdir()
        records.mkdir()
        (hook / "sitecustomize.py").write_text(_HOOK)
        environ = dict(env if env is not None else os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), environ.get("PYTHONPATH")]))
        environ["GPU_WHEELS_OBSERVE"] = str(records)
        status = subprocess.run(command, env=environ, cwd=REPO).returncode
        modules: dict[str, str | None] = {}
        for record in records.glob("*.json"):
            modules.update(json.loads(record.read_text()))
    return modules, status


# ------------------------------------------------------------------------------------------------
# Closure: every requirement met by a carried wheel or the image
# ------------------------------------------------------------------------------------------------

def closure_problems(roots: Iterable[str], image: Mapping[str, str | None], carried: Mapping[str, Mapping],
                     image_requires: Mapping[str, Mapping], python: str) -> list[str]:
    """What the machine would lack: one line per problem, none when closed.

    ``roots``: the distributions the check imports. ``carried``: name -> {version, requires_python,
    requires_dist}; it shadows the image (installed first on the path). ``image_requires``: name ->
    {version, requires_dist} of image packages whose requirements are known. An image package known
    by name only (version None) is taken as meeting any version. Carried wheels' requirements are
    followed recursively; an image package's only where they are known (its own install met the rest).
    """
    from packaging.specifiers import SpecifierSet

    env = marker_environment(python)
    problems: list[str] = []

    def provider(name: str) -> tuple[str, str | None] | None:
        if name in carried:
            return "carried", carried[name]["version"]
        if name in image:
            return "image", image[name]
        return None

    def meets(req, who: str) -> tuple[str, str | None] | None:
        name = normalise(req.name)
        found = provider(name)
        if found is None:
            problems.append(f"{who} requires {req}, which is neither carried nor in the image")
        elif found[1] is not None and not req.specifier.contains(found[1], prereleases=True):
            problems.append(f"{who} requires {req}, but the {found[0]} version is {name} {found[1]}")
        return found

    queue = [(normalise(r), frozenset()) for r in roots]
    done: set = set()
    while queue:
        name, extras = queue.pop()
        if (name, extras) in done:
            continue
        done.add((name, extras))
        found = provider(name)
        if found is None:
            problems.append(f"the check imports {name}, which is neither carried nor in the image")
            continue
        where, version = found
        if where == "carried":
            meta = carried[name]
            if meta.get("requires_python") and not SpecifierSet(meta["requires_python"]).contains(
                    env["python_full_version"], prereleases=True):
                problems.append(f"carried {name} {version} requires Python {meta['requires_python']}, "
                                f"not {env['python_full_version']}")
            requires = meta["requires_dist"]
        elif name in image_requires and image_requires[name]["version"] == version:
            requires = image_requires[name]["requires_dist"]
        else:
            continue
        for req in requirements(requires, extras, env):
            if meets(req, f"{where} {name} {version}"):
                queue.append((normalise(req.name), frozenset(req.extras)))
    # Image packages not on the check's path still run beside the carried replacements.
    for name, meta in image_requires.items():
        if image.get(name) == meta["version"] and name not in carried:
            for req in requirements(meta["requires_dist"], (), env):
                if normalise(req.name) in carried:
                    meets(req, f"image {name} {meta['version']}")
    return sorted(set(problems))


def tree_bytes() -> int:
    """Bytes of the working tree that travels with every call: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sum((REPO / name).stat().st_size for name in listed if name and (REPO / name).is_file())


# ------------------------------------------------------------------------------------------------
# make gpu-wheels: fetch, build, decide, record
# ------------------------------------------------------------------------------------------------

def _pip() -> list[str]:
    return [sys.executable, "-m", "pip"]


def _download(spec: str, target: Path, python: str) -> None:
    """pip's output is kept for the error: a project without wheels (DeepSpeed) is expected to fail here."""
    subprocess.run([*_pip(), "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version",
                    python, "--implementation", "cp", *(a for p in PLATFORMS for a in ("--platform", p)),
                    "-d", str(target), spec], check=True, capture_output=True, text=True)


def _find_wheel(directory: Path, name: str, version: str) -> Path | None:
    for path in directory.glob("*.whl"):
        stem = path.name.split("-")
        if normalise(stem[0]) == name and stem[1] == version:
            return path
    return None


def fetch(name: str, version: str, target: Path, python: str) -> Path:
    """The wheel of ``name==version`` for the target in ``target``: downloaded, or, for a project that
    publishes only a source distribution (DeepSpeed), built here, which must give a pure-Python wheel."""
    found = _find_wheel(target, name, version)
    if found is not None and wheel_tags(found.name) & target_tags(python):
        return found
    try:
        _download(f"{name}=={version}", target, python)
    except subprocess.CalledProcessError as exc:
        if "No matching distribution" not in exc.stderr:  # the network, the index: not a missing wheel
            raise SystemExit(f"gpu_wheels: pip download {name}=={version} failed:\n{exc.stderr[-2000:]}") from None
        print(f"gpu_wheels: no {name}=={version} wheel for CPython {python} on PyPI: building it from the "
              "source distribution (DS_BUILD_OPS=0: DeepSpeed without compiled ops)", file=sys.stderr, flush=True)
        subprocess.run([*_pip(), "wheel", "--quiet", "--no-deps", "--no-binary", name, "-w", str(target),
                        f"{name}=={version}"], check=True, env={**os.environ, "DS_BUILD_OPS": "0"})
    found = _find_wheel(target, name, version)
    if found is None or not wheel_tags(found.name) & target_tags(python):
        raise SystemExit(f"gpu_wheels: {name}=={version}: no wheel for CPython {python} on manylinux x86-64 "
                         f"({found.name if found else 'none'} in {target})")
    return found


def decide(roots: Iterable[str], image: Mapping[str, str | None], lock: Mapping[str, str],
           metadata: Callable[[str, str], dict], python: str) -> dict[str, dict]:
    """The wheels to carry: name -> metadata with ``why`` (see the module docstring for the rules)."""
    env = marker_environment(python)
    carried: dict[str, dict] = {}

    def carry(name: str, why: str) -> None:
        if name not in lock:
            raise SystemExit(f"gpu_wheels: {name} is needed ({why}) but the image lacks it and "
                             f"{LOCK.relative_to(REPO)} does not pin it")
        if name not in carried:
            carried[name] = {**metadata(name, lock[name]), "why": why}
            queue.append(name)

    queue: list[str] = []
    for name in sorted(map(normalise, roots)):
        if IMAGE_ONLY.match(name):
            if name not in image:
                raise SystemExit(f"gpu_wheels: the check imports {name}, which only the image can bring, "
                                 f"and {IMAGE_LIST.relative_to(REPO)} does not list it")
        elif name in FROM_LOCK:
            carry(name, FROM_LOCK[name])
        elif name not in image:
            carry(name, "imported by the check; not in the image")
    while queue:
        parent = queue.pop()
        for req in requirements(carried[parent]["requires_dist"], (), env):
            name = normalise(req.name)
            if name in carried or IMAGE_ONLY.match(name):
                continue
            if name in FROM_LOCK:
                carry(name, FROM_LOCK[name])
            elif name not in image:
                carry(name, f"required by {parent} ({req}); not in the image")
            elif image[name] is not None and not req.specifier.contains(image[name], prereleases=True):
                carry(name, f"required by {parent} ({req}); the image has {image[name]}")
    return carried


def image_requirements(image: Mapping[str, str | None], python: str) -> dict[str, dict]:
    """Requires-Dist of the IMAGE_REQUIRES packages at the image's versions, from their PyPI wheels."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="gpu-wheels-image-") as tmp:
        for name in IMAGE_REQUIRES:
            if image.get(name) is None:
                continue  # version unknown: nothing to fetch (the check reads it on the machine)
            meta = wheel_metadata(fetch(name, image[name], Path(tmp), python))
            out[name] = {"version": meta["version"], "requires_dist": meta["requires_dist"]}
    return out


def make_wheels(target: Path, smoke: bool) -> dict:
    image, header = read_image()
    python = header["python_version"]
    lock = read_lock()
    target.mkdir(exist_ok=True)
    project, external = check_imports()
    roots, unknown = distributions_of(external)
    if unknown:
        raise SystemExit(f"gpu_wheels: the check imports {', '.join(sorted(unknown))}, which no installed "
                         "distribution provides (install the lock first: make)")
    observed: set[str] = set()
    if not smoke and MANIFEST.exists():  # the last run's record stands
        last = read_manifest()
        observed = set(last.get("observed_imports", [])) | set(last.get("observed_here_only", {}))
    if smoke:
        print("gpu_wheels: running the check's --smoke to see what it imports (about 1-2 minutes)",
              file=sys.stderr, flush=True)
        modules, status = observe([sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--smoke"])
        if status != 0:
            raise SystemExit("gpu_wheels: benchmarks/gpu_check.py --smoke failed; the import set would be partial")
        observed, unknown = distributions_of(modules)
        if unknown:
            raise SystemExit(f"gpu_wheels: the --smoke run imported {', '.join(sorted(unknown))}, of no "
                             "installed distribution")
    wheels = {}

    def metadata(name: str, version: str) -> dict:
        path = fetch(name, version, target, python)
        wheels[name] = path
        return wheel_metadata(path)

    # What the run imported and the image has is a root too (FROM_LOCK may replace it); what the
    # image lacks is carried only where a carried wheel requires it.
    carried = decide(roots | (observed & set(image)), image, lock, metadata, python)
    requires = image_requirements(image, python)
    entries = {name: {"name": name, "version": meta["version"], "filename": wheels[name].name,
                      "size": wheels[name].stat().st_size, "requires_python": meta["requires_python"],
                      "requires_dist": meta["requires_dist"], "why": meta["why"]}
               for name, meta in sorted(carried.items())}
    python_full = header.get("python_full_version", python)
    here_only = local_only(observed, image, entries, python_full)
    needed = observed - set(here_only)
    problems = closure_problems(roots | needed, image, entries, requires, python_full)
    if problems:
        raise SystemExit("gpu_wheels: the carried set is not closed:\n  " + "\n  ".join(problems))
    size, tree = sum(e["size"] for e in entries.values()), tree_bytes()
    if size + tree > LIMIT_BYTES:
        largest = sorted(entries.values(), key=lambda e: -e["size"])[:3]
        raise SystemExit(f"gpu_wheels: {size / 2**20:.1f} MiB of wheels + {tree / 2**20:.1f} MiB of tree exceed "
                         f"the {LIMIT_BYTES / 2**20:.0f} MiB a call carries; largest: "
                         + ", ".join(f"{e['filename']} ({e['size'] / 2**20:.1f} MiB)" for e in largest))
    keep = {e["filename"] for e in entries.values()}
    for stale in sorted(target.glob("*.whl")):
        if stale.name not in keep:  # the whole folder travels: another version would cost bytes and clash
            print(f"gpu_wheels: removing {stale} (not in the carried set)", file=sys.stderr)
            stale.unlink()
    manifest = {
        "about": "What benchmarks/gpu_check.sh installs on the GPU machine; written by benchmarks/gpu_wheels.py "
                 "wheels (make gpu-wheels); checked by tests/test_gpu_check.py",
        "python": python, "python_full_version": python_full, "platforms": list(PLATFORMS), "limit_bytes": LIMIT_BYTES,
        "carried_bytes": size, "tree_bytes_when_made": tree,
        "carried": list(entries.values()),
        "image_requires": requires,
        "observed_imports": sorted(needed),
        "observed_here_only": here_only,
    }
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(entries)} wheels in {target}: {size / 2**20:.1f} MiB (+ {tree / 2**20:.1f} MiB of tree, limit "
          f"{LIMIT_BYTES / 2**20:.0f} MiB); {MANIFEST.relative_to(REPO)} written")
    return manifest


# ------------------------------------------------------------------------------------------------
# On the GPU machine: preflight and CUDA
# ------------------------------------------------------------------------------------------------

def installed_versions() -> dict[str, str]:
    """Each distribution's version as imports see it: the first on sys.path (the carried wheels' directory
    comes before the image's site-packages, and both hold some of the same names)."""
    import importlib.metadata

    versions: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        if dist.metadata["Name"]:
            versions.setdefault(normalise(dist.metadata["Name"]), dist.version)
    return versions


def preflight(manifest: Mapping, wheels: Path, installed: Mapping[str, str | None], python: str
              ) -> tuple[list[Path], str | None]:
    """``(wheels to install, problem)``: each carried wheel the machine lacks at its version must be in
    ``wheels`` and fit this ``python``; the problem is one line naming what is missing and how to carry it."""
    tags = target_tags(python)
    install, missing, wrong = [], [], []
    for entry in manifest["carried"]:
        if installed.get(entry["name"]) == entry["version"]:
            continue  # the image has this very version
        path = wheels / entry["filename"]
        if path.is_file() and wheel_tags(path.name) & tags:
            install.append(path)
            continue
        other = [p.name for p in wheels.glob("*.whl") if normalise(p.name.split("-")[0]) == entry["name"]
                 and p.name.split("-")[1] == entry["version"]] if wheels.is_dir() else []
        if path.is_file() or other:
            name = path.name if path.is_file() else other[0]
            wrong.append(f"{name} (not for CPython {python} on x86-64)")
        else:
            missing.append(f"{entry['name']}=={entry['version']}")
    if not (missing or wrong):
        return install, None
    parts = []
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        parts.append(f"missing from {wheels}/: {shown}")
    if wrong:
        parts.append(f"wrong Python in {wheels}/: {', '.join(wrong[:2])}" + (" ..." if len(wrong) > 2 else ""))
    return install, f"gpu_check: {'; '.join(parts)}: {WHEELS_HINT}"


def unmet_after_install(manifest: Mapping, installed: Mapping[str, str], python: str) -> list[str]:
    """Requirements of the carried wheels that the machine's real versions do not meet (after install)."""
    env = marker_environment(python)
    out = []
    for entry in manifest["carried"]:
        for req in requirements(entry["requires_dist"], (), env):
            have = installed.get(normalise(req.name))
            if have is None:
                out.append(f"{entry['name']} requires {req}: not installed")
            elif not req.specifier.contains(have, prereleases=True):
                out.append(f"{entry['name']} requires {req}: {normalise(req.name)} {have} is installed")
    return out


CUDA_LIBRARIES = ("cudart", "curand", "cublas")


def find_cuda(environ: Mapping[str, str], nvcc_on_path: str | None, roots: Iterable[Path],
              site_dirs: Iterable[Path]) -> dict:
    """The CUDA toolkit for DeepSpeed's op builds: ``{"home", "found_by", "lib_dirs", "missing"}``.

    ``home`` is the first directory with an executable bin/nvcc and include/cuda_runtime.h among:
    $CUDA_HOME, $CUDA_PATH, the toolkit of the nvcc on PATH, ``<root>/cuda`` and ``<root>/cuda-*``
    (newest first) for each of ``roots`` (/usr/local, /opt), and the pip packages' trees in
    ``site_dirs`` (``nvidia/cu13`` since CUDA 13, ``nvidia/cuda_nvcc`` before). ``lib_dirs``:
    directories holding lib<name>.so* of CUDA_LIBRARIES, in the toolkit first, then in the pip
    packages (the image's torch brings the runtime that way).
    """
    roots, site_dirs = list(roots), list(site_dirs)
    candidates: list[tuple[str, Path]] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(var):
            candidates.append((f"${var}", Path(environ[var])))
    if nvcc_on_path:
        candidates.append(("nvcc on PATH", Path(os.path.realpath(nvcc_on_path)).parent.parent))
    for root in roots:
        candidates.append((str(root / "cuda"), root / "cuda"))
        versions = sorted(root.glob("cuda-*"), key=lambda p: [int(x) if x.isdigit() else 0
                                                             for x in re.split(r"[.-]", p.name)[1:]], reverse=True)
        candidates += [(str(p), p) for p in versions]
    pip_trees = []
    for site in site_dirs:
        pip_trees += sorted((site / "nvidia").glob("cu[0-9]*"), reverse=True) + [site / "nvidia" / "cuda_nvcc"]
    candidates += [(f"pip package tree {p}", p) for p in pip_trees]
    home, found_by = None, None
    for label, path in candidates:
        # The headers too: an nvcc on PATH can be a wrapper script (/usr/local/bin/nvcc that execs
        # /usr/local/cuda-13.0/bin/nvcc), whose ../.. is no toolkit.
        nvcc = path / "bin" / "nvcc"
        if nvcc.is_file() and os.access(nvcc, os.X_OK) and (path / "include" / "cuda_runtime.h").is_file():
            home, found_by = path, label
            break
    search = []
    if home is not None:
        search += [home / "lib64", home / "lib", home / "targets" / "x86_64-linux" / "lib"]
    for site in site_dirs:
        search += sorted((site / "nvidia").glob("*/lib"))
    lib_dirs, missing = [], []
    for lib in CUDA_LIBRARIES:
        where = next((d for d in search if d.is_dir() and any(d.glob(f"lib{lib}.so*"))), None)
        if where is None:
            missing.append(lib)
        elif where not in lib_dirs:
            lib_dirs.append(where)
    return {"home": home, "found_by": found_by, "lib_dirs": lib_dirs, "missing": missing}


def cuda_exports(found: Mapping, environ: Mapping[str, str], shim: Path) -> list[str]:
    """Shell exports for what ``find_cuda`` found. The pip packages ship only versioned libraries
    (libcudart.so.13): the linker's -lcudart needs libcudart.so, so ``shim`` gets unversioned links."""
    exports = []
    if found["home"] is not None:
        exports.append(f"export CUDA_HOME={shlex.quote(str(found['home']))}")
        exports.append(f"export PATH={shlex.quote(str(found['home'] / 'bin'))}:\"$PATH\"")
    link_dirs = list(found["lib_dirs"])
    for directory in found["lib_dirs"]:
        for lib in CUDA_LIBRARIES:
            versioned = sorted(directory.glob(f"lib{lib}.so.*"))
            if versioned and not (directory / f"lib{lib}.so").exists():
                shim.mkdir(parents=True, exist_ok=True)
                link = shim / f"lib{lib}.so"
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(versioned[0])
                if shim not in link_dirs:
                    link_dirs.append(shim)
    for var, dirs in (("LD_LIBRARY_PATH", found["lib_dirs"]), ("LIBRARY_PATH", link_dirs)):
        present = environ.get(var, "").split(":")
        new = [str(d) for d in dirs if str(d) not in present]
        if new:
            exports.append(f"export {var}={shlex.quote(':'.join(new))}${{{var}:+:${var}}}")
    return exports


def site_directories() -> list[Path]:
    import site

    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return [Path(d) for d in dict.fromkeys(dirs) if Path(d).is_dir()]


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def show_manifest() -> int:
    """The carried set as committed (no download): each wheel, and whether what the check imports
    resolves from the image plus the carried wheels (``closure_problems``) within the limit."""
    manifest, (image, header) = read_manifest(), read_image()
    carried = {normalise(e["name"]): e for e in manifest["carried"]}
    _, external = check_imports()
    roots, _ = distributions_of(external)
    problems = closure_problems(roots | set(manifest["observed_imports"]), image, carried, manifest["image_requires"],
                                header["python_full_version"])
    size = sum(e["size"] for e in manifest["carried"])
    print(f"Carried to the GPU machine (benchmarks/gpu_carry.json) for CPython {manifest['python']}: "
          f"{len(carried)} wheels, {size / 2**20:.1f} MiB of {LIMIT_BYTES / 2**20:.0f} MiB with the tree\n")
    print("| wheel | version | MiB | why |")
    print("| --- | --- | ---: | --- |")
    for entry in manifest["carried"]:
        print(f"| {entry['name']} | {entry['version']} | {entry['size'] / 2**20:.2f} | {entry['why']} |")
    print(f"\n{len(roots)} distributions imported by the check: "
          + ("closed against the image" if not problems else f"{len(problems)} problems: " + "; ".join(problems)))
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="offline: the committed manifest as a table, its closure and its size")
    sub = parser.add_subparsers(dest="command")
    wheels = sub.add_parser("wheels", help="fetch and build the carried wheels, write benchmarks/gpu_carry.json")
    wheels.add_argument("target", nargs="?", type=Path, default=REPO / "wheels")
    wheels.add_argument("--no-smoke", action="store_true",
                        help="skip the --smoke run that records what the check imports (keeps the last record)")
    check = sub.add_parser("check", help="on the GPU machine: print the wheels to install, or one line and exit 2")
    check.add_argument("--wheels", type=Path, default=REPO / "wheels")
    check.add_argument("--manifest", type=Path, default=MANIFEST)
    check.add_argument("--installed", type=Path, help="a package list (gpu_image.txt's format) instead of "
                       "this interpreter's distributions (tests)")
    check.add_argument("--python", help="X.Y instead of this interpreter's (tests)")
    check.add_argument("--after-install", action="store_true",
                       help="report carried wheels' requirements that the installed versions do not meet")
    cuda = sub.add_parser("cuda-env", help="on the GPU machine: shell exports for CUDA_HOME and the CUDA libraries")
    cuda.add_argument("--shim", type=Path, default=Path(tempfile.gettempdir()) / "gpu-check-cuda-lib")
    obs = sub.add_parser("observe", help="the distributions a command's Python processes import")
    obs.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.smoke:
        return show_manifest()
    if args.command is None:
        parser.error("name a command (wheels, check, cuda-env, observe) or give --smoke")
    if args.command == "wheels":
        make_wheels(args.target, smoke=not args.no_smoke)
        return 0
    if args.command == "check":
        try:
            import packaging.tags  # noqa: F401 - the wheel tags below; the image has it
        except ImportError:
            print(f"gpu_check: {sys.executable} has no 'packaging' module, which the preflight needs to read wheel "
                  "tags: install it, or point PYTHON at the interpreter with torch", file=sys.stderr)
            return 2
        manifest = read_manifest(args.manifest)
        python = args.python or f"{sys.version_info[0]}.{sys.version_info[1]}"
        installed = (read_image(args.installed)[0] if args.installed else installed_versions())
        if args.after_install:
            for line in unmet_after_install(manifest, installed, python):
                print(f"gpu_check: warning: {line}", file=sys.stderr)
            return 0
        install, problem = preflight(manifest, args.wheels, installed, python)
        if problem:
            print(problem, file=sys.stderr)
            return 2
        print("\n".join(str(p) for p in install))
        return 0
    if args.command == "cuda-env":
        nvcc = shutil.which("nvcc")
        found = find_cuda(os.environ, nvcc, [Path("/usr/local"), Path("/opt")], site_directories())
        exports = cuda_exports(found, os.environ, args.shim)
        where = f"CUDA_HOME={found['home']} (from {found['found_by']})" if found["home"] else "no nvcc found"
        libs = ", ".join(map(str, found["lib_dirs"])) or "none"
        note = f"; not found: {', '.join('lib' + m for m in found['missing'])}" if found["missing"] else ""
        print(f"gpu_check: CUDA: {where}; libraries in {libs}{note}", file=sys.stderr)
        print("\n".join(exports))
        return 0
    if args.command == "observe":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        modules, status = observe(cmd)
        dists, unknown = distributions_of(modules)
        print(json.dumps({"status": status, "distributions": sorted(dists), "unknown_modules": sorted(unknown)},
                         indent=1))
        return status
    return 2


if __name__ == "__main__":
    sys.exit(main())
