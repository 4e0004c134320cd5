"""Training memory of TinyTL's transfer modes and of sparse schemes; search and step wall time.

    .venv/bin/python benchmarks/edge_memory.py [--shapes demo mobilenetv2-128] [--results results]
    .venv/bin/python benchmarks/edge_memory.py --smoke   # the demo shape, one budget, one run each (make test)

1. For each net shape (random weights: memory depends on shapes, not values) and each mode, at
   batch sizes 1 and 8: extra memory (gradients + SGD momentum + activations saved for backward, by
   TinyTL's rules), training memory (weights + gradients + momentum + forward peak of activations),
   the bytes autograd saved with the frugal layers and with stock PyTorch layers, and full / mode.
   Shapes: ``demo`` is config.yaml's net on 1x32x32 digits; ``mobilenetv2-128`` is MobileNetV2
   (width 1.0, its own stage table) on 3x128x128, the kind of net TinyTL reports on.
2. Sparse schemes: full's extra memory over each scheme's, from the pipeline's own results
   (``<results>/edge/sparse/budget_*.json``) when they exist.
3. Wall time of the evolutionary search (demo net; the pipeline's contributions if present, else
   seeded random gains) per budget, median of 3; and the time of one training step (batch 16) with
   frugal and stock layers, interleaved, median of 5.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from analysis.edge.nets import MobileNet
from analysis.config import settings_from
from analysis.edge.sparse import SparseSettings, search, search_space
from analysis.edge.transfer import MODES, apply_mode, memory_report

KIB = 1024
SHAPES = {
    "demo": dict(image=(1, 32, 32), net=dict(in_channels=1)),
    "mobilenetv2-128": dict(image=(3, 128, 128), net=dict(
        in_channels=3, stages=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                               (6, 160, 3, 2), (6, 320, 1, 1)),
        stem_channels=32, head_channels=1280, stem_stride=2)),
}
CLASSES = 5


def net_of(shape: str, frugal: bool = True) -> MobileNet:
    torch.manual_seed(0)
    return MobileNet(num_classes=CLASSES, frugal=frugal, **SHAPES[shape]["net"])


def mode_table(shape: str) -> None:
    image = SHAPES[shape]["image"]
    print(f"\n## {shape}: {sum(p.numel() for p in net_of(shape).parameters()):,} parameters, input {image}\n")
    print("| mode | batch | trained params | extra KiB | training KiB | saved KiB (rules) | saved KiB measured, frugal "
          "| saved KiB measured, stock PyTorch | full/mode extra | full/mode training |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for batch in (1, 8):
        rows = {}
        for mode in MODES:
            report = memory_report(apply_mode(net_of(shape), mode, CLASSES), batch, image, CLASSES)
            stock = memory_report(apply_mode(net_of(shape, frugal=False), mode, CLASSES), batch, image, CLASSES)
            rows[mode] = (report, stock["measured_saved_bytes"])
        full = rows["full"][0]
        for mode, (r, stock) in rows.items():
            print(f"| {mode} | {batch} | {r['trained_parameters']:,} | {r['extra_bytes'] / KIB:,.1f} | "
                  f"{r['training_bytes'] / KIB:,.1f} | {r['analytic_saved_bytes'] / KIB:,.1f} | "
                  f"{r['measured_saved_bytes'] / KIB:,.1f} | {stock / KIB:,.1f} | "
                  f"{full['extra_bytes'] / r['extra_bytes']:.1f} | {full['training_bytes'] / r['training_bytes']:.2f} |")


def sparse_table(results: Path) -> None:
    paths = sorted((results / "edge/sparse").glob("budget_*.json"), key=lambda p: float(p.stem[7:]))
    full_path = results / "edge/transfer/full.json"
    if not paths or not full_path.exists():
        print(f"\n(no sparse results under {results}/edge: run `snakemake edge` first for the sparse table)")
        return
    full = json.loads(full_path.read_text())
    print(f"\n## Sparse schemes found by the pipeline ({results}/edge), extra memory at batch 8\n")
    print("| method | scheme | test accuracy | extra KiB | full/scheme extra | training KiB | full/scheme training |")
    print("|---|---|---|---|---|---|---|")
    f8 = full["memory"]["8"]
    print(f"| full | all | {full['test']['accuracy']:.3f} | {f8['extra_bytes'] / KIB:,.1f} | 1.0 | "
          f"{f8['training_bytes'] / KIB:,.1f} | 1.00 |")
    for path in paths:
        r = json.loads(path.read_text())
        m8 = r["memory"]["8"]
        print(f"| budget {r['budget_kib']:g} KiB | {r['scheme']} | {r['test']['accuracy']:.3f} | "
              f"{m8['extra_bytes'] / KIB:,.1f} | {f8['extra_bytes'] / m8['extra_bytes']:.1f} | "
              f"{m8['training_bytes'] / KIB:,.1f} | {f8['training_bytes'] / m8['training_bytes']:.2f} |")


def search_time(results: Path, budgets=(64, 128, 256), repeats: int = 3, **search_settings) -> None:
    net = net_of("demo")
    settings = settings_from(SparseSettings, batch_size=8, **search_settings)
    path = results / "edge/sparse/contributions.json"
    if path.exists():
        blob, origin = json.loads(path.read_text()), str(path)
    else:
        space = search_space(net, settings)
        rng = random.Random(0)
        blob = {"space": {"n_blocks": space.n_blocks, "layers": list(space.layers), "ratios": list(space.ratios)},
                "bias": {str(k): 0.01 * k for k in range(space.n_blocks + 1)},
                "weight": [{"layer": layer, "ratio": r, "gain": rng.random() * 0.03} for layer in space.layers
                           for r in space.ratios]}
        origin = "seeded random gains"
    units = len(blob["weight"]) + len(blob["bias"]) - 1
    print(f"\n## Evolutionary search wall time (demo net, {units} units from {origin}; population "
          f"{settings.population}, {settings.generations} generations), median of {repeats}\n")
    print("| budget KiB | seconds | schemes measured | extra KiB of the scheme |")
    print("|---|---|---|---|")
    for budget in budgets:
        times, found = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            found = search(net, blob, budget * KIB, CLASSES, SHAPES["demo"]["image"], settings)
            times.append(time.perf_counter() - start)
        measured = found["history"][-1]["measured_schemes"]
        print(f"| {budget} | {statistics.median(times):.2f} | {measured} | {found['memory_bytes'] / KIB:.1f} |")


def step_time(modes=("full", "bias", "lite_residual"), repeats: int = 5) -> None:
    print(f"\n## One training step, demo net, batch 16, 1 thread (ms; median of {repeats}, frugal and stock "
          "interleaved)\n")
    print("| mode | frugal layers | stock PyTorch | frugal / stock |")
    print("|---|---|---|---|")
    torch.set_num_threads(1)
    x, y = torch.rand(16, 1, 32, 32), torch.randint(0, CLASSES, (16,))
    for mode in modes:
        nets = {frugal: apply_mode(net_of("demo", frugal), mode, CLASSES).train() for frugal in (True, False)}
        times = {True: [], False: []}
        for _ in range(repeats):
            for frugal, net in nets.items():
                for _ in range(2):  # warm-up
                    F.cross_entropy(net(x), y).backward()
                start = time.perf_counter()
                for _ in range(10):
                    F.cross_entropy(net(x), y).backward()
                times[frugal].append((time.perf_counter() - start) / 10 * 1000)
        frugal, stock = statistics.median(times[True]), statistics.median(times[False])
        print(f"| {mode} | {frugal:.1f} | {stock:.1f} | {frugal / stock:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--smoke", action="store_true", help="demo shape, one budget and mode, one run each")
    args = parser.parse_args()
    if args.smoke:
        mode_table("demo")
        with tempfile.TemporaryDirectory() as tmp:
            sparse_table(Path(tmp))  # no pipeline results: the note, then seeded gains for the search
            search_time(Path(tmp), budgets=(64,), repeats=1, population=4, generations=2)
        step_time(modes=("bias",), repeats=1)
        return
    for shape in args.shapes:
        mode_table(shape)
    sparse_table(args.results)
    search_time(args.results)
    step_time()


if __name__ == "__main__":
    main()
