"""FedAvg of the edge stage as a Flower App for ``flwr run`` (benchmarks/federated_api.py).

The ServerApp and the ClientApps run in processes Flower starts (``flwr-simulation`` and its Ray
actors), not in the job that launched the run, so everything travels through the job directory named
by the run config ``job-dir``: the driver writes ``spec.json`` (settings, net), ``clients.npz`` (the
clients' data, as the pipeline's run_simulation path writes it), ``test.pt`` and ``initial.pt``; the
ServerApp writes its per-round records to ``result.json``. The FedAvg itself is
analysis/edge/federated.py's ``train_reply`` and ``fedavg_server``, the code the pipeline runs.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from analysis.edge.data import ImageSet
from analysis.edge.federated import FederatedSettings, fedavg_server, train_reply


@functools.lru_cache(maxsize=2)
def _spec(job_dir: str) -> tuple[FederatedSettings, dict]:
    spec = json.loads((Path(job_dir) / "spec.json").read_text())
    return FederatedSettings(**spec["settings"]), spec["net_settings"]


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    job_dir = str(context.run_config["job-dir"])
    settings, net_settings = _spec(job_dir)
    return train_reply(msg, context, os.path.join(job_dir, "clients.npz"), net_settings, settings)


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    if context.run_config.get("fail"):
        raise ValueError("injected ServerApp failure")
    torch.set_num_threads(1)  # as the pipeline's job (workflow/scripts/edge_federated.py) scores the model
    job_dir = Path(str(context.run_config["job-dir"]))
    settings, net_settings = _spec(str(job_dir))
    test = torch.load(job_dir / "test.pt")
    initial = torch.load(job_dir / "initial.pt")
    rounds: list[dict] = []
    # time.time(): the driver in another process subtracts its own start from it.
    fedavg_server(grid, rounds, settings, net_settings, initial,
                  ImageSet(test["images"], test["labels"], test["classes"]), clock=time.time)
    partial = job_dir / "result.json.part"
    partial.write_text(json.dumps({"rounds": rounds, "pid": os.getpid()}))
    partial.replace(job_dir / "result.json")
