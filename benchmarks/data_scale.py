"""Benchmark the data path at paper scale: sample_domain and tokenize_domain, time and peak memory.

    .venv/bin/python benchmarks/data_scale.py [--sizes 32 128 512] [--workdir /tmp/bench-data-scale]
        [--threads 2] [--old-keep-max-mb 32] [--old-line-max-mb 128] [--old-sample-max-mb 128]
        [--line-ends unix crlf] [--smoke]

Builds M2D2-shaped domains (one paragraph per line, a blank line between documents) of about
``--sizes`` MB of train text, from the demo generator's Wikipedia-like and S2ORC-like documents
shuffled with replacement, with Unix line ends or (``--line-ends crlf``) Windows ones, whose lines
end in ``\\r``, and a GPT-2-style byte-level BPE of 4,096 tokens trained on the demo's
source corpus (the demo model's tokenizer). Every measurement runs in a fresh interpreter and
reports wall seconds, MB/s of text and peak resident memory (VmHWM), side by side (``--repeat``:
the median of interleaved runs, as these machines are noisy):

* ``tokenize_domain`` (streamed, pieces cut by ``analysis.lm.tokenize``) under ``keep`` and
  ``line``, against the pre-streaming path (each split read whole, each policy text tokenised with
  the transformers call, the streams saved in one .npz), run only up to the ``--old-*-max-mb`` sizes
  (keep needs about 200x the text in memory);
* ``sample_domain`` (two streamed passes) against the pre-streaming path (every text of the
  domain listed, then drawn), which it must reproduce text for text.

The streams of old and new paths are compared for equality where both ran. Prints a Markdown table.
``--smoke`` (what ``make test`` runs): 0.1 MB domains of both line ends in a temporary directory, the
old paths of sample_domain and of keep included, one run each.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "Culture_and_the_arts__Culture_and_Humanities"

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
task, workdir, name, policy, threads = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
os.environ["RAYON_NUM_THREADS"] = str(threads)
root = f"{workdir}/m2d2_{name}"
domain = "Culture_and_the_arts__Culture_and_Humanities"
out = f"{workdir}/out/{task}_{policy}_{name}"
start = time.perf_counter()
result = {}
if task == "tokenize_new":
    from analysis.lm.data import tokenize_domain
    record = tokenize_domain(model_name=f"{workdir}/tokenizer", m2d2_root=root, domain=domain, policy=policy,
                             output=out + ".bin", metadata=out + ".json", threads=threads)
    result["tokens"] = sum(s["tokens"] for s in record["splits"].values())
elif task == "tokenize_old":
    # The pre-streaming tokenize_domain: each split read whole (bytes, then lines), each policy text
    # tokenised with the transformers call (tokenize_documents), the three streams saved in one .npz.
    import numpy as np
    from analysis.corpora import m2d2
    from analysis.lm.data import tokenize_documents
    from analysis.lm.models import load_tokenizer
    tokenizer = load_tokenizer(f"{workdir}/tokenizer")
    arrays, tokens = {}, 0
    for split in m2d2.SPLITS:
        data = open(f"{root}/{domain}/{split}.txt", "rb").read()
        lines = (data[:-1] if data.endswith(b"\n") else data).decode("utf-8").split("\n")
        del data
        docs = m2d2.lm_texts(lines, policy)
        stream, starts = tokenize_documents(tokenizer, docs, eos=m2d2.ends_with_eos(policy))
        arrays[split], arrays[f"{split}_starts"] = stream, starts
        tokens += len(stream)
    with open(out + ".npz", "wb") as handle:
        np.savez(handle, **arrays)
    result["tokens"] = tokens
elif task in ("sample_new", "sample_old"):
    from analysis.corpora import m2d2
    from analysis.corpora.sampling import domain_sample_size, sample_domain
    if task == "sample_new":
        record = sample_domain(root=root, domain=domain, splits=["train"], document_policy="line", fraction=0.05,
                               max_texts=50000, min_texts=0, base_seed=1, max_invalid_fraction=0.01,
                               output=out + ".parquet", provenance=out + ".json")
        result["sampled"] = record["n_sampled"]
    else:
        # The pre-streaming sample_domain: every text of the split listed, then a subset drawn.
        import random
        import pyarrow as pa, pyarrow.parquet as pq
        from analysis.io import derive_seed
        data = open(f"{root}/{domain}/train.txt", "rb").read()
        lines = (data[:-1] if data.endswith(b"\n") else data).decode("utf-8").split("\n")
        pool = [("train", i, t) for i, t in enumerate(m2d2.documents(lines, "line"))]
        n = domain_sample_size(len(pool), 0.05, 50000, 0)
        chosen = sorted(random.Random(derive_seed(1, "domain", domain)).sample(range(len(pool)), n))
        sample = [pool[i] for i in chosen]
        pq.write_table(pa.table({"text": [t for _, _, t in sample], "split": [s for s, _, _ in sample],
                                 "source_index": pa.array([i for _, i, _ in sample], type=pa.int64())}),
                       out + ".parquet")
        result["sampled"] = n
result["wall_s"] = time.perf_counter() - start
# VmHWM, not ru_maxrss: ru_maxrss survives exec and would count the parent's memory at the fork.
result["peak_rss_mb"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) * 1024 / 1e6
print(json.dumps(result))
"""


def input_name(size: float, line_ends: str) -> str:
    return f"{size:g}" + ("" if line_ends == "unix" else f"_{line_ends}")


def build_inputs(workdir: Path, sizes: list[float], line_ends: list[str]) -> None:
    """The tokenizer, and per size and line end a domain whose train split holds ``size`` MB of text."""
    sys.path.insert(0, str(REPO))
    from analysis.corpora import demo
    from analysis.lm.pretrain import train_tokenizer

    if not (workdir / "tokenizer").is_dir():
        source = [line for line in demo.source_corpus_lines(800, 1) if line.strip()]
        train_tokenizer(source, 4096).save_pretrained(workdir / "tokenizer")
    documents = []
    for domain in ("Culture_and_the_arts__Culture_and_Humanities", "History_and_events__By_period",
                   "Philosophy_and_thinking__Philosophy", "hep-ex", "math.AG", "nucl-ex"):
        documents += demo.domain_split_text(domain, "train", 300, 7).split("\n\n")
    for size in sizes:
        for ends in line_ends:
            directory = workdir / f"m2d2_{input_name(size, ends)}" / DOMAIN
            if (directory / "train.txt").is_file():
                continue
            directory.mkdir(parents=True, exist_ok=True)
            rng = random.Random(size)  # the same documents for both line ends
            newline = "\r\n" if ends == "crlf" else "\n"
            for split, megabytes in (("train", size), ("valid", min(size, 1)), ("test", min(size, 1))):
                written, target = 0, megabytes * 1_000_000
                # newline="": what is written is what the domain holds, on any platform.
                with open(directory / f"{split}.txt", "w", encoding="utf-8", newline="") as handle:
                    while written < target:
                        document = (rng.choice(documents) + "\n\n").replace("\n", newline)
                        handle.write(document)
                        written += len(document.encode("utf-8"))


def run(task: str, workdir: Path, name: str, policy: str, threads: int) -> dict:
    command = [sys.executable, "-c", CHILD, str(REPO), task, str(workdir), name, policy, str(threads)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def same_stream(workdir: Path, name: str, policy: str) -> bool:
    import numpy as np

    sys.path.insert(0, str(REPO))
    from analysis.lm.tokens import TokenStreams

    new = TokenStreams(workdir / "out" / f"tokenize_new_{policy}_{name}.bin")
    with np.load(workdir / "out" / f"tokenize_old_{policy}_{name}.npz") as old:
        return all(np.array_equal(new.split(s), old[s]) and np.array_equal(new.starts(s), old[f"{s}_starts"])
                   for s in ("train", "valid", "test"))


def same_sample(workdir: Path, name: str) -> bool:
    import pyarrow.parquet as pq

    new = pq.read_table(workdir / "out" / f"sample_new_line_{name}.parquet")
    old = pq.read_table(workdir / "out" / f"sample_old_line_{name}.parquet")
    return all(new.column(c).to_pylist() == old.column(c).to_pylist() for c in ("text", "split", "source_index"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[32, 128, 512], help="MB of train text")
    parser.add_argument("--line-ends", nargs="+", default=["unix"], choices=["unix", "crlf"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-data-scale"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--old-keep-max-mb", type=float, default=32)
    parser.add_argument("--old-line-max-mb", type=float, default=128)
    parser.add_argument("--old-sample-max-mb", type=float, default=128)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each measurement, old and new interleaved; the median is reported")
    parser.add_argument("--smoke", action="store_true", help="0.1 MB domains of both line ends, in a temporary directory")
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="data-scale-smoke-") as tmp:
            measure(Path(tmp), [0.1], ["unix", "crlf"], args.threads, 0.1, 0, 0.1, 1)
        return
    measure(args.workdir, args.sizes, args.line_ends, args.threads, args.old_keep_max_mb, args.old_line_max_mb,
            args.old_sample_max_mb, args.repeat)


def measure(workdir: Path, sizes: list[float], line_ends: list[str], threads: int, old_keep_max_mb: float,
            old_line_max_mb: float, old_sample_max_mb: float, repeat: int) -> None:
    (workdir / "out").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    build_inputs(workdir, sizes, line_ends)
    print(f"inputs ready in {time.perf_counter() - started:.0f} s under {workdir}", file=sys.stderr)

    rows = []
    for size in sizes:
        for ends in line_ends:
            name = input_name(size, ends)
            directory = workdir / f"m2d2_{name}" / DOMAIN
            text_mb = sum(p.stat().st_size for p in directory.glob("*.txt")) / 1e6
            train_mb = (directory / "train.txt").stat().st_size / 1e6
            plan = [("sample_domain", "line", "sample_new", "sample_old", old_sample_max_mb, train_mb)]
            plan += [("tokenize_domain", policy, "tokenize_new", "tokenize_old", limit, text_mb)
                     for policy, limit in (("keep", old_keep_max_mb), ("line", old_line_max_mb))]
            for stage, policy, new_task, old_task, limit, megabytes in plan:
                paths = [("new", new_task)] + ([("old", old_task)] if size <= limit else [])
                runs: dict[str, list[dict]] = {path: [] for path, _ in paths}
                for _ in range(repeat):  # interleaved, so that a slow spell of the machine hits both
                    for path, task in paths:
                        result = run(task, workdir, name, policy, threads)
                        print(f"{stage} {policy} {name} MB {path}: {result}", file=sys.stderr)
                        runs[path].append(result)
                for path in ("new", "old"):
                    cells = [stage, policy, f"{size:g}", ends, path]
                    if path not in runs:
                        rows.append(cells + ["not run (does not fit / too slow)", "", "", ""])
                        continue
                    errors = [r["error"] for r in runs[path] if "error" in r]
                    if errors:
                        rows.append(cells + [errors[0], "", "", ""])
                        continue
                    walls = sorted(r["wall_s"] for r in runs[path])
                    result = {"wall_s": walls[len(walls) // 2],
                              "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[path])}
                    same = ""
                    if path == "old":
                        same = same_sample(workdir, name) if stage == "sample_domain" else \
                            same_stream(workdir, name, policy)
                    rows.append(cells + [f"{result['wall_s']:.1f}", f"{megabytes / result['wall_s']:.2f}",
                                         f"{result['peak_rss_mb']:.0f}",
                                         "yes" if same is True else ("NO" if same is False else "")])
    print(f"\nthreads: {threads}; text per size: train = size, valid = test = min(size, 1) MB; "
          f"median of {repeat} interleaved run(s), peak RSS the largest\n")
    print("| stage | policy | train MB | line ends | path | seconds | MB/s | peak RSS MB | same output as old |")
    print("| --- | --- | ---: | --- | --- | ---: | ---: | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
