"""Choosing a sparse-update scheme under a memory budget (tiny-training's recipe), model-agnostic.

1. **Contribution analysis**: each candidate unit (biases of the last k blocks; one layer's weight at
   one update ratio) is trained alone, briefly, from the same starting point; its contribution is
   the validation-loss decrease it achieves. Contributions are assumed to add up, as in
   tiny-training.
2. **Evolutionary search** over schemes ``(n_bias_update, {layer: ratio})``: fitness is the summed
   contribution when the scheme's *measured* memory fits the budget, and the scheme is discarded
   otherwise. Mutation changes k or one layer's ratio; crossover takes each layer's ratio from one of
   two parents. The fittest scheme seen is returned, with the full history.

Nothing here knows about transformers or convolutions: the caller passes ``gain(scheme)`` (train a
scheme briefly, return the loss decrease) and ``memory(scheme)`` (bytes), and the vision stages use
the same functions as the LM adaptation.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

from analysis.errors import PipelineError

log = logging.getLogger(__name__)
MIB = 2**20


@dataclass(frozen=True)
class SparseScheme:
    n_bias_update: int
    weight_update: tuple[tuple[str, float], ...] = ()  # sorted (layer, ratio) pairs, ratio > 0

    @classmethod
    def make(cls, n_bias_update: int, weight_update: dict[str, float]) -> "SparseScheme":
        return cls(n_bias_update, tuple(sorted((k, v) for k, v in weight_update.items() if v > 0)))

    def as_dict(self) -> dict:
        return {"n_bias_update": self.n_bias_update, "weight_update": dict(self.weight_update)}


@dataclass
class SearchSpace:
    n_blocks: int  # the largest n_bias_update (0: the model has no biases)
    layers: Sequence[str]  # weight layers that may be updated
    ratios: Sequence[float]  # update ratios a layer may take (0 = frozen is always allowed)


@dataclass
class Contributions:
    bias: dict[int, float]  # k -> gain of the biases of the last k blocks
    weight: dict[tuple[str, float], float]  # (layer, ratio) -> gain
    baseline_loss: float | None = None
    records: list[dict] = field(default_factory=list)

    def estimate(self, scheme: SparseScheme) -> float:
        gain = self.bias.get(scheme.n_bias_update, 0.0)
        return gain + sum(self.weight[(layer, ratio)] for layer, ratio in scheme.weight_update)


def contribution_analysis(space: SearchSpace, gain: Callable[[SparseScheme], float]) -> Contributions:
    """Train every unit alone with ``gain`` and collect the loss decreases."""
    bias, weight, records = {0: 0.0}, {}, []
    for k in range(1, space.n_blocks + 1):
        bias[k] = gain(SparseScheme(k))
        records.append({"unit": f"bias of the last {k} blocks", "gain": bias[k]})
    for layer in space.layers:
        for ratio in space.ratios:
            weight[(layer, ratio)] = gain(SparseScheme.make(0, {layer: ratio}))
            records.append({"unit": f"{layer} at ratio {ratio}", "gain": weight[(layer, ratio)]})
    for record in records:
        log.info("contribution of %s: %.5f", record["unit"], record["gain"])
    return Contributions(bias=bias, weight=weight, records=records)


def evolutionary_search(
    space: SearchSpace,
    contributions: Contributions,
    memory: Callable[[SparseScheme], int],
    budget_bytes: int,
    *,
    population: int = 24,
    generations: int = 15,
    mutation_rate: float = 0.3,
    seed: int = 0,
    budget_key: str = "budget_mib",
    unit: str = "MiB",
) -> dict:
    """The scheme with the largest estimated gain whose measured memory fits ``budget_bytes``.

    ``budget_key`` and ``unit`` (MiB or KiB) only shape the error message for a budget that is too small.
    """
    rng = random.Random(seed)
    cache: dict[SparseScheme, int] = {}

    def cost(scheme: SparseScheme) -> int:
        if scheme not in cache:
            cache[scheme] = memory(scheme)
        return cache[scheme]

    bias_units = [SparseScheme(1)] if space.n_blocks else []
    cheapest = min((*bias_units, *[SparseScheme.make(0, {layer: min(space.ratios)}) for layer in space.layers]),
                   key=cost)
    if cost(cheapest) > budget_bytes:
        scale = MIB if unit == "MiB" else 1024
        raise PipelineError(
            f"memory budget {budget_bytes / scale:.2f} {unit} is below the cheapest sparse scheme "
            f"({cheapest.as_dict()}: {cost(cheapest) / scale:.2f} {unit} measured); raise {budget_key}"
        )
    choices = [0.0, *space.ratios]

    def random_scheme() -> SparseScheme:
        density = rng.random()
        return SparseScheme.make(rng.randint(0, space.n_blocks),
                                 {layer: rng.choice(choices[1:]) if rng.random() < density * 0.5 else 0.0
                                  for layer in space.layers})

    def fitness(scheme: SparseScheme) -> float:
        if not scheme.n_bias_update and not scheme.weight_update:
            return float("-inf")
        return contributions.estimate(scheme) if cost(scheme) <= budget_bytes else float("-inf")

    def mutate(scheme: SparseScheme) -> SparseScheme:
        k = scheme.n_bias_update
        if rng.random() < mutation_rate:
            k = min(space.n_blocks, max(0, k + rng.choice((-1, 1))))
        ratios = dict(scheme.weight_update)
        for layer in space.layers:
            if rng.random() < mutation_rate / 2:
                ratios[layer] = rng.choice(choices)
        return SparseScheme.make(k, ratios)

    def crossover(a: SparseScheme, b: SparseScheme) -> SparseScheme:
        ra, rb = dict(a.weight_update), dict(b.weight_update)
        return SparseScheme.make(rng.choice((a.n_bias_update, b.n_bias_update)),
                                 {layer: (ra if rng.random() < 0.5 else rb).get(layer, 0.0) for layer in space.layers})

    members = [cheapest, *[random_scheme() for _ in range(population - 1)]]
    history = []
    best = max(members, key=fitness)
    for generation in range(generations):
        # Duplicates dropped in order (a set's order follows the process's string hashes, and ties in
        # fitness are common: the seeded search would differ from run to run).
        ranked = sorted(dict.fromkeys(members), key=fitness, reverse=True)
        parents = [m for m in ranked if fitness(m) > float("-inf")][: max(2, population // 4)] or [cheapest]
        if fitness(ranked[0]) > fitness(best):
            best = ranked[0]
        history.append({"generation": generation, "best_gain": fitness(best), "best_memory_bytes": cost(best),
                        "feasible": sum(fitness(m) > float("-inf") for m in members),
                        "measured_schemes": len(cache)})
        children = []
        while len(children) < population - len(parents):
            child = crossover(rng.choice(parents), rng.choice(parents))
            children.append(mutate(child))
        members = parents + children
    best = max([best, *members], key=fitness)
    log.info("chosen scheme %s: estimated gain %.5f, memory %.2f MiB (budget %.2f MiB)", best.as_dict(),
             fitness(best), cost(best) / MIB, budget_bytes / MIB)
    return {
        "scheme": best.as_dict(),
        "estimated_gain": fitness(best),
        "memory_bytes": cost(best),
        "budget_bytes": budget_bytes,
        "cheapest": {"scheme": cheapest.as_dict(), "memory_bytes": cost(cheapest)},
        "history": history,
        "measured": [{"scheme": s.as_dict(), "memory_bytes": m} for s, m in cache.items()],
    }
