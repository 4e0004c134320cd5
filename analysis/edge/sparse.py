"""Sparse back-propagation on the vision net: contribution analysis and evolutionary search.

The search code is the LM stages' (``analysis.selection.search``); this module supplies its two
callables for the vision net:

* ``gain(scheme)``: accuracy (or loss) gain on the validation split from fine-tuning the scheme's
  parameters for a few epochs, starting from the source net with a classifier already trained on
  the target task. As in the lecture (tiny-training): the biases of the last k blocks are measured
  against the frozen baseline (classifier only); one layer's weight at ratio r is trained together
  with every bias and measured against the bias-only baseline. Gains are assumed to add up.
* ``memory(scheme)``: the extra training memory (gradients + momentum + activations saved for
  backward, by TinyTL's rules) at the configured batch size.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

from analysis.config import schema_defaults, settings_from
from analysis.edge.data import ImageSet
from analysis.edge.nets import MobileNet
from analysis.edge.train import TrainSettings, evaluate, fit
from analysis.edge.transfer import apply_mode, apply_sparse, layer_names, memory_report, resolve_layer
from analysis.errors import PipelineError
from analysis.selection.search import (Contributions, SearchSpace, SparseScheme, contribution_analysis,
                                       evolutionary_search)

log = logging.getLogger(__name__)
GAINS = ("accuracy", "loss")


@dataclass
class SparseSettings:
    """Section edge.sparse (``config.settings_from``); ``train`` is edge.transfer's training."""

    SECTION: ClassVar[str] = "edge.sparse"
    ratios: Sequence[float]
    layers: Sequence[str] | str
    unit_epochs: int
    gain: str
    batch_size: int
    population: int
    generations: int
    train: TrainSettings = field(
        default_factory=lambda: settings_from(TrainSettings, schema_defaults("edge.transfer")))
    seed: int = 0

    def check(self, net: MobileNet) -> None:
        for ratio in self.ratios:
            if not 0 < ratio <= 1:
                raise PipelineError(f"edge.sparse.ratios: {ratio} is not in (0, 1]")
        if self.gain not in GAINS:
            raise PipelineError(f"edge.sparse.gain: {self.gain!r} is not one of {', '.join(GAINS)}")
        if self.layers != "all":
            for layer in self.layers:
                resolve_layer(net, layer)


def search_space(net: MobileNet, settings: SparseSettings) -> SearchSpace:
    layers = layer_names(net) if settings.layers == "all" else list(settings.layers)
    return SearchSpace(n_blocks=len(net.blocks), layers=layers, ratios=sorted(settings.ratios))


def scheme_memory(source: MobileNet, scheme: SparseScheme, num_classes: int, image_shape, batch_size: int) -> int:
    """Extra training memory of ``scheme`` in bytes (analytic, TinyTL's rules)."""
    net = apply_sparse(copy.deepcopy(source), scheme, num_classes)
    return memory_report(net, batch_size, image_shape, num_classes, measure=False)["extra_bytes"]


def _score(result: dict, gain: str) -> float:
    return result["accuracy"] if gain == "accuracy" else -result["loss"]


def contributions(source: MobileNet, train: ImageSet, validation: ImageSet, settings: SparseSettings) -> dict:
    """Train every unit alone and record its gain; returns records, baselines and the raw table."""
    settings.check(source)
    space = search_space(source, settings)
    num_classes = len(train.classes)
    unit = dataclasses.replace(settings.train, epochs=settings.unit_epochs)
    start = apply_mode(copy.deepcopy(source), "last", num_classes, seed=settings.seed)
    fit(start, train, settings.train)  # the classifier every unit starts from
    classifier = copy.deepcopy(start.classifier.state_dict())

    def tuned(scheme: SparseScheme) -> dict:
        net = apply_sparse(copy.deepcopy(source), scheme, num_classes, seed=settings.seed)
        net.classifier.load_state_dict(classifier)
        fit(net, train, unit)
        return evaluate(net, validation)

    frozen = tuned(SparseScheme(0))
    all_biases = tuned(SparseScheme(space.n_blocks))
    results: list[dict] = []

    def gain(scheme: SparseScheme) -> float:
        if scheme.weight_update:
            measured = tuned(SparseScheme.make(space.n_blocks, dict(scheme.weight_update)))
            baseline = all_biases
        else:
            measured, baseline = tuned(scheme), frozen
        value = _score(measured, settings.gain) - _score(baseline, settings.gain)
        results.append({"scheme": scheme.as_dict(), "validation_accuracy": measured["accuracy"],
                        "validation_loss": measured["loss"], "gain": value})
        return value

    found = contribution_analysis(space, gain)
    return {
        "gain": settings.gain,
        "baselines": {"frozen": frozen, "all_biases": all_biases},
        "space": {"n_blocks": space.n_blocks, "layers": list(space.layers), "ratios": list(space.ratios)},
        "bias": {str(k): v for k, v in found.bias.items()},
        "weight": [{"layer": layer, "ratio": ratio, "gain": value} for (layer, ratio), value in found.weight.items()],
        "units": results,
    }


def load_contributions(blob: dict) -> tuple[SearchSpace, Contributions]:
    """The search space and gains of a ``contributions`` result (as written to JSON)."""
    return (SearchSpace(blob["space"]["n_blocks"], blob["space"]["layers"], blob["space"]["ratios"]),
            Contributions(bias={int(k): v for k, v in blob["bias"].items()},
                          weight={(w["layer"], float(w["ratio"])): w["gain"] for w in blob["weight"]}))


def search(source: MobileNet, contributions_blob: dict, budget_bytes: int, num_classes: int, image_shape,
           settings: SparseSettings) -> dict:
    """The evolutionary search under ``budget_bytes`` of extra memory."""
    space, found = load_contributions(contributions_blob)
    memory = lambda scheme: scheme_memory(source, scheme, num_classes, image_shape, settings.batch_size)  # noqa: E731
    return evolutionary_search(space, found, memory, budget_bytes, population=settings.population,
                               generations=settings.generations, seed=settings.seed,
                               budget_key="edge.sparse.budgets_kib", unit="KiB")
