"""Benchmark the sampling stage: wall time and peak memory against input size.

    .venv/bin/python benchmarks/sampling.py [--mb 150] [--workdir /tmp/bench-sampling]
    .venv/bin/python benchmarks/sampling.py --smoke   # 0.5 MB inputs in a temporary directory (make test)

Writes a synthetic M2D2 domain (directory and .tar.gz form) and a jsonl source corpus of about
``--mb`` MB each, then runs sample_domain and sample_source, each in a fresh interpreter, and prints
wall time, peak RSS and peak RSS per input MB. The data-scale benchmark (benchmarks/data_scale.py)
measures sample_domain against the domain size, old and new paths side by side.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
from analysis.corpora.sampling import sample_domain, sample_source
kind, root, out, n_texts = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
start = time.perf_counter()
if kind == "source":
    spec = {"format": "jsonl", "path": root, "text_field": "text", "n_texts": n_texts}
    record = sample_source(name="bench", spec=spec, base_seed=1, output=out + ".parquet", provenance=out + ".json", progress=False)
else:
    record = sample_domain(root=root, domain=kind, splits=["train"], document_policy="line", fraction=0.05,
                           max_texts=50000, min_texts=0, base_seed=1, max_invalid_fraction=0.01,
                           output=out + ".parquet", provenance=out + ".json")
print(json.dumps({"wall_s": time.perf_counter() - start, "n_available": record["n_available"],
                  "n_sampled": record["n_sampled"],
                  # VmHWM, not ru_maxrss, which survives exec and counts the parent's memory
                  "peak_rss_mib": next(int(l.split()[1]) for l in open("/proc/self/status")
                                       if l.startswith("VmHWM")) / 1024}))
"""


def paragraphs(target_bytes: int, seed: int = 0):
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    written = 0
    while written < target_bytes:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(20, 90)))
        written += len(line) + 1
        yield line


def write_inputs(workdir: Path, megabytes: float) -> dict[str, Path]:
    target = int(megabytes * 1e6)
    m2d2 = workdir / "m2d2"
    (m2d2 / "cs.LG").mkdir(parents=True, exist_ok=True)
    text = "".join(line + "\n" + ("\n" if i % 8 == 7 else "") for i, line in enumerate(paragraphs(target)))
    (m2d2 / "cs.LG" / "train.txt").write_text(text)
    data = text.encode()
    with tarfile.open(m2d2 / "cs.CL.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cs.CL/train.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    source = workdir / "source.jsonl"
    with open(source, "w") as handle:
        for line in paragraphs(target, seed=1):
            handle.write(json.dumps({"text": line}) + "\n")
    return {"cs.LG": m2d2, "cs.CL": m2d2, "source": source}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=150)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-sampling"))
    parser.add_argument("--smoke", action="store_true", help="0.5 MB inputs in a temporary directory")
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            measure(Path(tmp), 0.5, source_texts=500)
        return
    measure(args.workdir, args.mb)


def measure(workdir: Path, megabytes: float, source_texts: int = 50000) -> None:
    inputs = write_inputs(workdir, megabytes)
    sizes = {
        "cs.LG": (inputs["cs.LG"] / "cs.LG" / "train.txt").stat().st_size,
        "cs.CL": (inputs["cs.CL"] / "cs.CL.tar.gz").stat().st_size,
        "source": inputs["source"].stat().st_size,
    }
    print("| case | input MB | texts | sampled | wall s | peak MiB | MiB per input MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, label in [("cs.LG", "domain (directory)"), ("cs.CL", "domain (tar.gz archive)"), ("source", "source (jsonl, reservoir)")]:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, kind, str(inputs[kind]), str(workdir / f"out-{kind}"), str(source_texts)],
            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        mb = sizes[kind] / 1e6
        print(f"| {label} | {mb:.1f} | {r['n_available']} | {r['n_sampled']} | {r['wall_s']:.2f} | "
              f"{r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] / mb:.2f} |")


if __name__ == "__main__":
    main()
