"""Wheels that benchmarks/gpu_check.sh installs on a GPU machine without network access.

    .venv/bin/python benchmarks/gpu_wheels.py wheels      (or: make gpu-wheels)

The GPU machine brings its own Python and CUDA torch; what the checks import beyond that is taken
from envs/requirements.lock at the pinned versions: pure-Python wheels once (DeepSpeed publishes
only a source distribution: its wheel is built here, without ops, which it compiles on first use),
binary wheels for CPython 3.11, 3.12 and 3.13 on manylinux x86-64 (numpy 2.4 has none for 3.10;
numpy comes with the machine's torch).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PURE = ["deepspeed", "transformers", "huggingface-hub", "peft", "accelerate", "hjson", "py-cpuinfo", "einops",
        "typer", "tqdm", "packaging", "filelock", "fsspec", "typing-extensions", "click", "shellingham", "rich",
        "markdown-it-py", "mdurl", "pygments", "typing-inspection", "annotated-types", "safetensors"]
BINARY = ["tokenizers", "pydantic", "pydantic-core", "msgpack", "psutil", "regex", "ninja", "pyyaml",
          "hf-xet", "safetensors"]
PYTHONS = ["3.11", "3.12", "3.13"]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned() -> dict[str, str]:
    pins = {}
    for line in (REPO / "envs/requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[normalise(name)] = f"{name}=={version.strip()}"
    return pins


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "wheels")
    target.mkdir(exist_ok=True)
    pins = pinned()
    missing = [n for n in PURE + BINARY if normalise(n) not in pins]
    if missing:
        raise SystemExit(f"not in envs/requirements.lock: {', '.join(missing)}")
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "-w", str(target),
                    *(pins[normalise(n)] for n in PURE if n != "safetensors")], check=True,
                   env={**__import__("os").environ, "DS_BUILD_OPS": "0"})
    for version in PYTHONS:
        subprocess.run([*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", version,
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                        "--platform", "manylinux_2_28_x86_64", "-d", str(target),
                        *(pins[normalise(n)] for n in BINARY)], check=True)
    print(f"{len(list(target.glob('*.whl')))} wheels in {target}")


if __name__ == "__main__":
    main()
