# Config validation, targets, wildcard constraints and input functions shared by all rules.
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

REPO_ROOT = Path(workflow.basedir)
# Rule scripts import `analysis` from this checkout, also inside per-rule conda environments and
# in cluster jobs (which inherit this environment). Set here, never required from the user.
_pythonpath = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH", "")])]
os.environ.update(PYTHONPATH=os.pathsep.join(_pythonpath))
sys.path.insert(0, str(REPO_ROOT))

from analysis import config as config_lib
from analysis.corpora import demo as demo_lib
from analysis.corpora import m2d2 as m2d2_lib
from analysis.corpora import sources as sources_lib
from analysis.errors import PipelineError

try:
    config_lib.validate(
        config,
        config_lib.load_schema(workflow.source_path("../schemas/config.schema.yaml")),
        source=", ".join(map(str, workflow.configfiles)) or "config",
    )
except PipelineError as exc:
    raise WorkflowError(f"invalid configuration:\n{exc}") from None

RESULTS = "results"
LOGS = f"{RESULTS}/logs"
DOMAINS = config_lib.all_domains(config)
SIMILARITY_DOMAINS = config_lib.similarity_domains(config)
CORPORA = list(config["corpora"])
SIMILARITY = config["similarity"]
DEMO = config["demo"]
DEMO_OUTPUTS = (
    demo_lib.output_paths(DEMO["root"], DEMO["archived_domains"])
    if DEMO["enabled"]
    else None
)


def _alternatives(names):
    return "|".join(re.escape(name) for name in names)


wildcard_constraints:
    domain=_alternatives(DOMAINS),
    corpus=_alternatives(CORPORA),
    kind="sources|domains",
    name=_alternatives(DOMAINS + CORPORA),


def sample_targets():
    return expand(
        f"{RESULTS}/samples/domains/{{domain}}.{{ext}}",
        domain=DOMAINS,
        ext=["parquet", "json"],
    ) + expand(
        f"{RESULTS}/samples/sources/{{corpus}}.{{ext}}",
        corpus=CORPORA,
        ext=["parquet", "json"],
    )


def similarity_targets():
    return [
        f"{RESULTS}/tables/similarity.tsv",
        f"{RESULTS}/tables/similarity.md",
        *expand(f"{RESULTS}/figures/similarity_{{corpus}}.png", corpus=CORPORA),
    ]


def all_targets():
    return sample_targets() + similarity_targets()


def domain_inputs(wildcards):
    """The split files (or the archive) a domain sample reads."""
    splits = config["sampling"]["domain_splits"]
    root = Path(config["m2d2"]["root"])
    if DEMO_OUTPUTS is not None:
        archive = str(root / f"{wildcards.domain}.tar.gz")
        if archive in DEMO_OUTPUTS["archives"]:
            return [archive]
        return [str(root / wildcards.domain / f"{split}.txt") for split in splits]
    try:
        return [
            str(p)
            for p in m2d2_lib.locate_domain(root, wildcards.domain).input_files(splits)
        ]
    except PipelineError:
        # Not there (yet): name the expected files so Snakemake reports exactly what is missing.
        return [str(root / wildcards.domain / f"{split}.txt") for split in splits]


def source_inputs(wildcards):
    """The local files a source-corpus sample reads (none for a hub dataset id)."""
    spec = config["corpora"][wildcards.corpus]
    if DEMO_OUTPUTS is not None and spec["path"] in DEMO_OUTPUTS["sources"]:
        return [spec["path"]]
    if spec["format"] == "hf":
        return []
    try:
        return [
            str(p)
            for p in sources_lib.resolve_files(
                os.path.expanduser(spec["path"]), spec["format"]
            )
        ]
    except PipelineError as exc:
        raise WorkflowError(f"corpora.{wildcards.corpus}.path: {exc}") from None


def sample_domain_mem_mb(wildcards, input):
    """Peak memory of sample_domain: about 4.6x the split text plus the interpreter
    (benchmarks/sampling.py); an archive's text is taken as 4x its compressed size."""
    text_mb = (
        sum(
            os.path.getsize(f) * (4 if f.endswith(m2d2_lib.ARCHIVE_SUFFIXES) else 1)
            for f in input
            if os.path.exists(f)
        )
        / 1e6
    )
    return int(1000 + 5 * text_mb)
