"""Contribution analysis and the evolutionary search under a memory budget (model-agnostic)."""

from __future__ import annotations

import itertools

import pytest

from analysis.errors import PipelineError
from analysis.selection.search import MIB, SearchSpace, SparseScheme, contribution_analysis, evolutionary_search

SPACE = SearchSpace(n_blocks=3, layers=["-2.fc", "-2.attn", "-1.fc", "-1.attn"], ratios=[0.25, 0.5, 1.0])
LAYER_VALUE = {"-2.fc": 0.4, "-2.attn": 0.1, "-1.fc": 0.8, "-1.attn": 0.3}
LAYER_COST = {"-2.fc": 4, "-2.attn": 3, "-1.fc": 2, "-1.attn": 1}


def gain(scheme: SparseScheme) -> float:
    # Diminishing returns in the ratio, as measured contributions tend to show.
    return 0.05 * scheme.n_bias_update + sum(LAYER_VALUE[l] * r**0.5 for l, r in scheme.weight_update)


def memory(scheme: SparseScheme) -> int:
    return int(MIB * (1 + 2 * scheme.n_bias_update + sum(LAYER_COST[l] * r for l, r in scheme.weight_update)))


def brute_force(contributions, budget):
    best = None
    for k in range(SPACE.n_blocks + 1):
        for ratios in itertools.product([0.0, *SPACE.ratios], repeat=len(SPACE.layers)):
            scheme = SparseScheme.make(k, dict(zip(SPACE.layers, ratios)))
            if (k or scheme.weight_update) and memory(scheme) <= budget:
                value = contributions.estimate(scheme)
                best = value if best is None else max(best, value)
    return best


def test_contributions_are_measured_once_per_unit():
    calls = []
    contributions = contribution_analysis(SPACE, lambda s: calls.append(s) or gain(s))
    assert len(calls) == 3 + 4 * 3
    assert contributions.bias[2] == pytest.approx(0.1) and contributions.weight[("-1.fc", 1.0)] == pytest.approx(0.8)


@pytest.mark.parametrize("budget_mib", [2.5, 4, 7])
def test_search_finds_the_best_scheme_that_fits(budget_mib):
    contributions = contribution_analysis(SPACE, gain)
    result = evolutionary_search(SPACE, contributions, memory, int(budget_mib * MIB), seed=1)
    assert result["memory_bytes"] <= budget_mib * MIB
    assert result["estimated_gain"] == pytest.approx(brute_force(contributions, budget_mib * MIB), rel=0.05)
    assert result["history"][-1]["best_gain"] <= result["estimated_gain"]
    again = evolutionary_search(SPACE, contributions, memory, int(budget_mib * MIB), seed=1)
    assert again["scheme"] == result["scheme"]  # seeded


def test_a_space_without_bias_units_never_asks_for_one():
    """A model without biases (LLaMA): n_blocks = 0, and no scheme measured or chosen updates a bias
    (a bias-only scheme would train nothing there, and building it fails)."""
    space = SearchSpace(n_blocks=0, layers=SPACE.layers, ratios=SPACE.ratios)

    def weights_only(measure):
        def call(scheme):
            assert scheme.n_bias_update == 0, scheme
            return measure(scheme)
        return call

    contributions = contribution_analysis(space, weights_only(gain))
    assert contributions.bias == {0: 0.0}
    result = evolutionary_search(space, contributions, weights_only(memory), 4 * MIB, seed=1)
    assert result["scheme"]["n_bias_update"] == 0 and result["scheme"]["weight_update"]


def test_budget_below_the_cheapest_scheme_is_named():
    contributions = contribution_analysis(SPACE, gain)
    with pytest.raises(PipelineError, match=r"memory budget 1.00 MiB is below the cheapest sparse scheme"):
        evolutionary_search(SPACE, contributions, memory, MIB, seed=0)


def test_the_search_does_not_depend_on_the_processs_string_hashes():
    """Schemes with equal estimated gains must keep their order: an order taken from a set of
    schemes varied with PYTHONHASHSEED, so the same seeded search chose different schemes in two
    runs of the demo (sparse@128KiB: bias x4 in one, bias x2 in the other)."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json\n"
        "from analysis.selection.search import MIB, SearchSpace, SparseScheme, contribution_analysis, "
        "evolutionary_search\n"
        "space = SearchSpace(n_blocks=4, layers=['-2.fc', '-2.attn', '-1.fc', '-1.attn'], ratios=[0.25, 0.5, 1.0])\n"
        # Weights gain nothing (as on the demo): many schemes tie.
        "contributions = contribution_analysis(space, lambda s: 0.01 * min(s.n_bias_update, 2))\n"
        "memory = lambda s: int(MIB * (1 + s.n_bias_update + sum(r for _, r in s.weight_update)))\n"
        "result = evolutionary_search(space, contributions, memory, 6 * MIB, population=8, generations=6, seed=3)\n"
        "print(json.dumps([result['scheme'], result['history']], sort_keys=True))\n"
    )
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout
               for seed in range(6)}
    assert len(outputs) == 1, [json.loads(o)[0] for o in outputs]
