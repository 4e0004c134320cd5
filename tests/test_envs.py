"""The software environments: conda files named by rules exist and pin what the lock pins."""

from __future__ import annotations

import re

import yaml

from tests.builders import REPO


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "envs" / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_lock_is_fully_pinned_and_leaves_torch_to_the_makefile():
    lines = [l for l in (REPO / "envs" / "requirements.lock").read_text().splitlines() if l and not l.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[^=\s]+", line) for line in lines), lines
    assert "torch" not in lock_pins()
    assert "torch==2.13.0" in (REPO / "Makefile").read_text()


def test_every_conda_env_named_by_a_rule_exists_and_matches_the_lock():
    pins = lock_pins()
    rule_files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    named = {m for f in rule_files for m in re.findall(r'"\.\./\.\./envs/([\w.-]+\.yaml)"', f.read_text())}
    assert named, "rules name their conda environments"
    for env_file in named:
        # torch is pinned by the Makefile, not the lock; its version must agree with it.
        pins_with_torch = {**pins, "torch": "2.13.0"}
        env = yaml.safe_load((REPO / "envs" / env_file).read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        for requirement in pip:
            name, version = requirement.split("==")
            name = name.split("[")[0]  # an extra (flwr[simulation]) pins the package itself
            assert pins_with_torch[name.lower().replace("_", "-")] == version, (env_file, requirement)
