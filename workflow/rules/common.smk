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
MODELS = list(config["models"])
PRETRAINED = [name for name, spec in config["models"].items() if "pretrain" in spec]
ADAPTATION = config["adaptation"]
MODES = ADAPTATION["modes"]
ADAPTATION_DOMAINS = list(config["domains"]["adaptation"])
EVALUATION = config["evaluation"]
# How a split's lines become the text a model trains on and the text it is evaluated on.
TRAIN_POLICY = config["m2d2"]["document_policy"]
EVAL_POLICY = EVALUATION["join_policy"]
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
    model=_alternatives(MODELS) if MODELS else "(?!)",
    mode=_alternatives(MODES),
    name=_alternatives(DOMAINS + CORPORA),
    policy=_alternatives(m2d2_lib.JOIN_POLICIES),


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


def adaptation_targets():
    return expand(
        f"{RESULTS}/adapted/{{model}}/{{mode}}/{{domain}}/metrics.json",
        model=MODELS,
        mode=MODES,
        domain=ADAPTATION_DOMAINS,
    )


def evaluation_targets():
    if not MODELS:
        return []
    pairs = dict(model=MODELS, mode=MODES)
    return [
        *expand(
            f"{RESULTS}/tables/{{table}}.{{ext}}",
            table=["perplexity", "correlation"],
            ext=["tsv", "md"],
        ),
        *expand(f"{RESULTS}/figures/perplexity_change_{{model}}_{{mode}}.png", **pairs),
        *expand(f"{RESULTS}/figures/tokens_{{model}}_{{mode}}.png", **pairs),
        *expand(f"{RESULTS}/tables/tokens/{{model}}/{{mode}}/summary.md", **pairs),
        *expand(f"{RESULTS}/figures/curves_{{model}}_{{mode}}.png", **pairs),
    ]


def all_targets():
    return (
        sample_targets()
        + similarity_targets()
        + adaptation_targets()
        + evaluation_targets()
    )


def model_inputs(wildcards):
    """The model directory a job loads, when the pipeline builds it (pretrain_base)."""
    if wildcards.model in PRETRAINED:
        return [f"{RESULTS}/models/{wildcards.model}/metrics.json"]
    return []


def adapt_spec(wildcards, output, threads):
    """The adapt job's arguments, one shell-quoted JSON word (the deepspeed launcher passes it on)."""
    import json
    import shlex

    spec = {
        "log": f"{LOGS}/adapt/{wildcards.model}/{wildcards.mode}/{wildcards.domain}.log",
        "model_key": wildcards.model,
        "model_spec": config["models"][wildcards.model],
        "mode": wildcards.mode,
        "scheme_options": ADAPTATION["schemes"],
        "domain": wildcards.domain,
        "tokens": f"{RESULTS}/tokens/{wildcards.model}/{TRAIN_POLICY}/{wildcards.domain}.npz",
        "output_dir": str(Path(output.metrics).parent),
        "checkpoint_dir": f"{ADAPTATION['checkpoint_root']}/adapt/{wildcards.model}/{wildcards.mode}/{wildcards.domain}",
        "adaptation": {
            k: ADAPTATION[k]
            for k in (
                "curve_points",
                "curve_max_blocks",
                "seen_first_fraction",
                "checkpoint_every",
                "loss",
            )
        },
        "seed": config["seed"],
        "threads": threads,
    }
    return shlex.quote(json.dumps(spec))


def evaluation_spec(wildcards):
    """Arguments of analysis.lm.evaluate.evaluate shared by rules zero_shot and evaluate."""
    return {
        "model_key": wildcards.model,
        "model_spec": config["models"][wildcards.model],
        "stage": wildcards.get("mode", "zero_shot"),
        "domain": wildcards.domain,
        "portion": config_lib.domain_portion(config, wildcards.domain),
        "evaluation": EVALUATION,
        "seed": config["seed"],
    }


def launcher(gpus):
    """One process, or `deepspeed --num_gpus N` for multi-GPU jobs."""
    script = workflow.source_path("../scripts/adapt.py")
    if gpus > 1:
        return f"deepspeed --num_gpus {gpus} {script}"
    return f"{sys.executable} {script}"


def domain_files(domain, splits):
    """The split files (or the archive) of a domain that a job reads."""
    root = Path(config["m2d2"]["root"])
    if DEMO_OUTPUTS is not None:
        archive = str(root / f"{domain}.tar.gz")
        if archive in DEMO_OUTPUTS["archives"]:
            return [archive]
        return [str(root / domain / f"{split}.txt") for split in splits]
    try:
        return [
            str(p) for p in m2d2_lib.locate_domain(root, domain).input_files(splits)
        ]
    except PipelineError:
        # Not there (yet): name the expected files so Snakemake reports exactly what is missing.
        return [str(root / domain / f"{split}.txt") for split in splits]


def domain_inputs(wildcards):
    """The split files (or the archive) a domain sample reads."""
    return domain_files(wildcards.domain, config["sampling"]["domain_splits"])


def source_inputs(wildcards):
    """The local files a source-corpus sample reads (none for a hub dataset id)."""
    return corpus_files(wildcards.corpus)


def corpus_files(corpus):
    spec = config["corpora"][corpus]
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
        raise WorkflowError(f"corpora.{corpus}.path: {exc}") from None


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
