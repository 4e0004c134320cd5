"""Federated averaging (McMahan et al., 2017) on Flower's simulation engine.

K simulated clients hold disjoint parts of the training split: IID (a seeded shuffle cut into K
parts) or non-IID (per class, Dirichlet(alpha) proportions over the clients; small alpha: each client
sees few classes). Each round every sampled client starts from the global weights, takes
``local_steps`` SGD steps on its own data and sends its weights back; the server averages them
weighted by the clients' example counts (Flower's ``FedAvg``) and scores the new global model on the
test split. The client and server code are a Flower ``ClientApp`` and ``ServerApp``: the same code
runs under ``flwr run`` on real SuperNodes (benchmarks/federated_app wraps it as a Flower App); here
``run_simulation`` runs the clients as Ray actors in the job's own process tree.

``run_simulation`` is deprecated since Flower 1.41 in favour of ``flwr run``; the pipeline keeps it,
with Flower pinned (pyproject.toml), because ``flwr run`` from a pipeline job measured worse
(``benchmarks/federated_api.py``; see ``PINNED_RUN_SIMULATION``), and drops only that one warning from
the job's log, logging its own line instead (tests/test_edge_privacy.py fails when the pinned Flower
drops ``run_simulation`` or the arguments used here).

Clients read their data from an ``.npz`` written once by the driver, so a Ray actor (a separate
process) loads it once and nothing large travels in the messages but the weights.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch.nn import functional as F

from analysis.edge.data import ImageSet
from analysis.edge.names import PARTITIONS
from analysis.edge.nets import LeNet
from analysis.errors import PipelineError
from analysis.runner import restored_environment

# Flower (and through it Ray) is imported inside the functions that run the simulation: the
# settings, the tables and the tests import this module without starting on them.

log = logging.getLogger(__name__)

# Why run_simulation, not `flwr run` (measured with `.venv/bin/python benchmarks/federated_api.py`: digits,
# 4 clients, 3 rounds, 5 local steps, 2 Ray CPUs, each run a fresh process, paths interleaved, 2-core machine):
# - Same numbers: every round's test accuracy and losses were identical on every path (same code, same seeds).
# - Slower: a job took 16.8 s (median of 3) here and 25.0 s with `flwr run` on a SuperLink of its own
#   (+6.9 s median, +4.7 to +8.2 repeat by repeat): the SuperLink, SuperExec and `flwr-simulation` processes
#   start first (launch to the first score 1.4 s -> 5.7 s); rounds take as long (0.16 s).
# - Less isolated with Flower's default local SuperLink (`flwr run` without an address): it is a detached
#   daemon on the fixed port 127.0.0.1:39091 that outlives the job (2 processes left after every run) and
#   serves every job on the node: of two jobs started at once with their own FLWR_HOME, one ran on the other
#   job's SuperLink (3 of 3 benchmark runs); with one FLWR_HOME, one of the two failed to start it ("Failed to
#   start local SuperLink", 1 of 3 runs). A SuperLink per job avoids that but is the slower line above.
# - Failures hide: when the ServerApp raised, `flwr run --stream` exited 0 (the error only in the streamed log;
#   the job must notice the missing result), where run_simulation raises the ServerApp's error in the job.
# - Its one cost: run_simulation starts Ray in the calling process, which sets variables in its environment
#   (PYTHONPATH, RAY_CLIENT_MODE, RAY_USAGE_STATS_ENABLED, ...); they are put back after the call.
PINNED_RUN_SIMULATION = ("Flower's run_simulation is deprecated (Flower 1.41: use `flwr run`) but pinned here: "
                         "`flwr run` from a job measured slower and less isolated (see analysis/edge/federated.py, "
                         "benchmarks/federated_api.py)")
RUN_SIMULATION_DEPRECATION = "The `run_simulation` function is deprecated"  # the start of Flower's warning


class _DropRunSimulationDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return RUN_SIMULATION_DEPRECATION not in record.getMessage()


@contextlib.contextmanager
def pinned_run_simulation():
    """Around the ``run_simulation`` call: Flower's deprecation warning for it, and no other record,
    is dropped from the ``flwr`` logger; one line of ours says why the call stays."""
    flower_log, drop = logging.getLogger("flwr"), _DropRunSimulationDeprecation()
    log.info(PINNED_RUN_SIMULATION)
    flower_log.addFilter(drop)
    try:
        yield
    finally:
        flower_log.removeFilter(drop)


@dataclass
class FederatedSettings:
    """Section edge.federated (``config.settings_from``)."""

    SECTION: ClassVar[str] = "edge.federated"
    clients: int
    rounds: int
    local_steps: int
    batch_size: int
    lr: float
    fraction: float  # of the clients sampled per round
    alpha: float  # Dirichlet concentration of the non-IID split
    activation: str
    threads: int
    min_examples: int = 2  # every client holds at least this many examples
    seed: int = 0

    def check(self, n_examples: int) -> None:
        if self.clients < 1:
            raise PipelineError(f"edge.federated.clients = {self.clients}: need at least one client")
        if self.clients * self.min_examples > n_examples:
            raise PipelineError(f"edge.federated.clients = {self.clients}: {n_examples} training images cannot give "
                                f"every client {self.min_examples}")
        if not 0 < self.fraction <= 1:
            raise PipelineError(f"edge.federated.fraction = {self.fraction} is not in (0, 1]")
        if self.alpha <= 0:
            raise PipelineError(f"edge.federated.alpha = {self.alpha} must be positive")


def partition(labels: np.ndarray, clients: int, scheme: str, *, alpha: float = 0.5, seed: int = 0,
              min_examples: int = 2) -> list[np.ndarray]:
    """Indices of each client's examples, sorted; every example belongs to exactly one client."""
    if scheme not in PARTITIONS:
        raise PipelineError(f"unknown partition {scheme!r}; expected one of {', '.join(PARTITIONS)}")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), clients)]
    for _ in range(1000):  # redraw until every client holds enough examples, as is usual for Dirichlet splits
        parts: list[list[int]] = [[] for _ in range(clients)]
        for label in np.unique(labels):
            index = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(clients, alpha))) * len(index)).astype(int)[:-1]
            for client, piece in enumerate(np.split(index, cuts)):
                parts[client] += piece.tolist()
        if min(len(p) for p in parts) >= min_examples:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise PipelineError(f"a Dirichlet split with alpha = {alpha} over {clients} clients left a client with fewer than "
                        f"{min_examples} examples in 1000 draws; raise edge.federated.alpha or lower clients")


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], classes: int) -> list[list[int]]:
    return [np.bincount(labels[p], minlength=classes).tolist() for p in parts]


def _net(settings: dict) -> LeNet:
    return LeNet(**settings)


@functools.lru_cache(maxsize=2)
def _client_data(path: str) -> dict:
    with np.load(path) as blob:
        return {k: blob[k] for k in blob.files}


def local_training(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int,
                   lr: float, generator: torch.Generator) -> float:
    """``steps`` SGD steps on mini-batches drawn in a seeded order (reshuffled every pass); mean loss."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    order = torch.randperm(len(labels), generator=generator)
    position, total = 0, 0.0
    for _ in range(steps):
        if position >= len(order):
            order, position = torch.randperm(len(labels), generator=generator), 0
        index = order[position:position + batch_size]
        position += batch_size
        loss = F.cross_entropy(net(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / max(1, steps)


CLIENT_RECORD = "client"  # the reply's ConfigRecord naming the client's partition


def in_client_order(replies) -> list:
    """Replies sorted by the partition of the client that sent them (failed replies last).

    FedAvg sums the clients' weights in the order of the list it is given; Flower gives them in order
    of arrival, which Ray's scheduling varies from run to run, and floating-point addition depends on
    the order: the same seeded run differed from round 3 on (test accuracy by up to 0.013 after
    10 rounds of the demo). In client order the run is reproducible.
    """
    def key(message):
        if message.has_error():
            return (1, 0)
        return (0, int(message.content[CLIENT_RECORD]["partition-id"]))

    return sorted(replies, key=key)


def train_reply(msg, context, data_path: str, net_settings: dict, settings: FederatedSettings):
    """The ClientApp's train step: ``local_steps`` SGD steps on the partition of the node's ``partition-id``."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    torch.set_num_threads(1)
    data = _client_data(data_path)
    client = int(context.node_config["partition-id"])
    index = data[f"client_{client}"]
    images, labels = torch.from_numpy(data["images"][index]), torch.from_numpy(data["labels"][index])
    net = _net(net_settings)
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    server_round = int(msg.content["config"]["server-round"])
    generator = torch.Generator().manual_seed(settings.seed * 100_003 + server_round * 1009 + client)
    loss = local_training(net, images, labels, settings.local_steps, settings.batch_size, settings.lr, generator)
    metrics = MetricRecord({"num-examples": len(index), "train_loss": loss})
    content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics,
                          CLIENT_RECORD: ConfigRecord({"partition-id": client})})
    return Message(content=content, reply_to=msg)


def client_app(data_path: str, net_settings: dict, settings: FederatedSettings):
    """The Flower ClientApp: local training on the partition of the node's ``partition-id``."""
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_reply(msg, context, data_path, net_settings, settings)

    return app


@torch.no_grad()
def _score(net: torch.nn.Module, data: ImageSet) -> dict:
    net.eval()
    logits = net(data.images)
    return {"accuracy": float((logits.argmax(1) == data.labels).float().mean()),
            "loss": float(F.cross_entropy(logits, data.labels))}


def fedavg_server(grid, rounds: list[dict], settings: FederatedSettings, net_settings: dict, initial: dict,
                  test: ImageSet, clock) -> None:
    """The ServerApp's main: ``settings.rounds`` rounds of FedAvg (client updates summed in client order)
    from ``initial``; after each round (and before the first) the global model is scored on ``test`` and a
    record appended to ``rounds``, its ``seconds`` read from ``clock()``."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
    from flwr.serverapp.strategy import FedAvg

    sampled = max(1, round(settings.fraction * settings.clients))

    class ClientOrderFedAvg(FedAvg):
        def aggregate_train(self, server_round, replies):
            return super().aggregate_train(server_round, in_client_order(replies))

    strategy = ClientOrderFedAvg(fraction_train=settings.fraction, fraction_evaluate=0.0,
                                 min_train_nodes=sampled, min_evaluate_nodes=0,
                                 min_available_nodes=settings.clients)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        net = _net(net_settings)
        net.load_state_dict(arrays.to_torch_state_dict())
        scores = _score(net, test)
        rounds.append({"round": server_round, "test_accuracy": scores["accuracy"], "test_loss": scores["loss"],
                       "seconds": clock()})
        log.info("round %d: test accuracy %.4f", server_round, scores["accuracy"])
        return MetricRecord(scores)

    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=settings.rounds,
                            train_config=ConfigRecord({"lr": settings.lr}), evaluate_fn=evaluate)
    for record in rounds:
        metrics = result.train_metrics_clientapp.get(record["round"])
        if metrics is not None:
            record["train_loss"] = float(metrics["train_loss"])


@dataclass
class FederatedJob:
    """What every launch of one FedAvg run needs: the seeded partition, the net and its initial weights."""

    scheme: str
    labels: np.ndarray
    parts: list[np.ndarray]
    net_settings: dict
    initial: dict


def prepare(train: ImageSet, scheme: str, settings: FederatedSettings, image_size: int) -> FederatedJob:
    settings.check(len(train.labels))
    labels = train.labels.numpy()
    parts = partition(labels, settings.clients, scheme, alpha=settings.alpha, seed=settings.seed,
                      min_examples=settings.min_examples)
    net_settings = {"in_channels": train.images.shape[1], "num_classes": len(train.classes), "image_size": image_size,
                    "activation": settings.activation}
    torch.manual_seed(settings.seed)
    return FederatedJob(scheme, labels, parts, net_settings, _net(net_settings).state_dict())


def write_client_data(path: str, train: ImageSet, job: FederatedJob) -> None:
    """The clients' ``.npz``: the training images once and each client's indices into them."""
    np.savez(path, images=train.images.numpy(), labels=job.labels,
             **{f"client_{i}": part for i, part in enumerate(job.parts)})


def summarize(job: FederatedJob, settings: FederatedSettings, classes: int, rounds: list[dict], seconds: float) -> dict:
    """The stage's result from the server's per-round records (round 0: the initial model)."""
    if len(rounds) != settings.rounds + 1:
        raise PipelineError(f"the Flower simulation ended after {max(0, len(rounds) - 1)} of {settings.rounds} rounds; "
                            "see the log for the client error")
    durations = np.diff([r["seconds"] for r in rounds])
    return {"partition": job.scheme, "clients": settings.clients, "settings": settings.__dict__,
            "client_examples": [len(p) for p in job.parts],
            "client_label_histogram": label_histogram(job.labels, job.parts, classes),
            "rounds": rounds, "final_test_accuracy": rounds[-1]["test_accuracy"],
            "seconds": seconds,
            "round_seconds_median": float(np.median(durations[1:])) if len(durations) > 1 else float(durations[0]),
            "first_round_seconds": float(durations[0])}


def federated_averaging(train: ImageSet, test: ImageSet, scheme: str, settings: FederatedSettings,
                        image_size: int) -> dict:
    """Run FedAvg over ``settings.clients`` simulated clients; per-round test accuracy and timings."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    job = prepare(train, scheme, settings, image_size)
    rounds: list[dict] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedavg-") as tmp:
        data_path = os.path.join(tmp, "clients.npz")
        write_client_data(data_path, train, job)
        server = ServerApp()

        @server.main()
        def main(grid: Grid, context: Context) -> None:
            fedavg_server(grid, rounds, settings, job.net_settings, job.initial, test,
                          clock=lambda: time.perf_counter() - start)

        # Deprecated, kept on purpose (see PINNED_RUN_SIMULATION); Ray's variables are unset afterwards.
        with pinned_run_simulation(), restored_environment():
            run_simulation(server_app=server, client_app=client_app(data_path, job.net_settings, settings),
                           num_supernodes=settings.clients,
                           backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                           "init_args": {"num_cpus": settings.threads, "include_dashboard": False}})
    return summarize(job, settings, len(train.classes), rounds, time.perf_counter() - start)
