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
from analysis import resources as resources_lib
from analysis.corpora import demo as demo_lib
from analysis.corpora import m2d2 as m2d2_lib
from analysis.corpora import sources as sources_lib
from analysis.edge import names as edge_names
from analysis.lm import modes as modes_lib
from analysis.errors import PipelineError

try:
    config_lib.validate(
        config,
        config_lib.load_schema(workflow.source_path("../schemas/config.schema.yaml")),
        source=", ".join(map(str, workflow.configfiles)) or "config",
    )
    # A mode that cannot train anything on a model stops here, before any job runs.
    modes_lib.check_modes(config)
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
CONVERTED = [name for name, spec in config["models"].items() if "gguf" in spec]
ADAPTATION = config["adaptation"]
MODES = ADAPTATION["modes"]
ADAPTATION_DOMAINS = list(config["domains"]["adaptation"])
EVALUATION = config["evaluation"]
EDGE = config["edge"]
EDGE_MODES = EDGE["transfer"]["modes"]
# Budgets name files: 64 -> budget_64.json, 0.5 -> budget_0.5.json.
EDGE_BUDGETS = [f"{b:g}" for b in EDGE["sparse"]["budgets_kib"]]
EDGE_PARTITIONS = EDGE["federated"]["partitions"]
EDGE_COMPRESSIONS = list(edge_names.COMPRESSIONS)
# Leakage without defense, and each defense that lists a strength.
EDGE_DEFENSES = ["none"] + [
    d for d, strengths in EDGE["leakage"]["defenses"].items() if strengths
]
# How a split's lines become the text a model trains on and the text it is evaluated on.
TRAIN_POLICY = ADAPTATION["join_policy"]
EVAL_POLICY = EVALUATION["join_policy"]
# The join-policy ablation: (model, train_policy, domain) runs in one mode, beside the main grid.
ABLATION = ADAPTATION["join_ablation"]
ABLATION_DOMAINS = list(ABLATION["domains"] or ADAPTATION_DOMAINS)
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
    mode=_alternatives(MODES + [ABLATION["mode"]]),
    name=_alternatives(DOMAINS + CORPORA),
    train_policy=_alternatives(m2d2_lib.JOIN_POLICIES),
    budget=_alternatives(EDGE_BUDGETS),
    partition=_alternatives(EDGE_PARTITIONS),


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


def adapted_runs():
    """(model, train_policy, mode, domain) of every adaptation: the main grid under the training
    join policy, then the join-policy ablation, without repeats."""
    main = [
        (model, TRAIN_POLICY, mode, domain)
        for model in MODELS
        for mode in MODES
        for domain in ADAPTATION_DOMAINS
    ]
    ablation = [
        (model, train_policy, ABLATION["mode"], domain)
        for model in ABLATION["models"]
        for train_policy in ABLATION["policies"]
        for domain in ABLATION_DOMAINS
    ]
    return list(dict.fromkeys(main + ablation))


def adapted_paths(pattern):
    """``pattern`` (with {model}, {train_policy}, {mode}, {domain}) for every adapted run."""
    return [
        pattern.format(model=m, train_policy=p, mode=mode, domain=d)
        for m, p, mode, d in adapted_runs()
    ]


def adaptation_targets():
    return adapted_paths(
        f"{RESULTS}/adapted/{{model}}/{{train_policy}}/{{mode}}/{{domain}}/metrics.json"
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
        *join_policy_targets(),
    ]


def join_policy_targets():
    if not ABLATION["models"]:
        return []
    return [
        *expand(f"{RESULTS}/tables/join_policy.{{ext}}", ext=["tsv", "md"]),
        *expand(
            f"{RESULTS}/figures/join_policy_{{model}}.png", model=ABLATION["models"]
        ),
    ]


def all_targets():
    return (
        sample_targets()
        + similarity_targets()
        + adaptation_targets()
        + evaluation_targets()
        + (edge_targets() if EDGE["enabled"] else [])
    )


def token_files(model, train_policy, domain):
    """The token files tokenize_domain writes, for wildcards or values: streams, offsets, metadata."""
    stem = f"{RESULTS}/tokens/{model}/{train_policy}/{domain}"
    return {
        "tokens": f"{stem}.bin",
        "index": f"{stem}.idx",
        "metadata": f"{stem}.json",
    }


def model_inputs(wildcards):
    """The model directory a job loads, when the pipeline builds it (pretrain_base) or converts it
    (convert_gguf)."""
    if wildcards.model in PRETRAINED:
        return [f"{RESULTS}/models/{wildcards.model}/metrics.json"]
    if wildcards.model in CONVERTED:
        return [f"{RESULTS}/models/{wildcards.model}/gguf.json"]
    return []


def gguf_file(model):
    """The GGUF file a converted model comes from (checked when the config was validated)."""
    from analysis.lm import gguf

    return str(gguf.resolve(config["models"][model]["gguf"], f"models.{model}.gguf"))


def gguf_dtype(model):
    """The converted weights' dtype: the model's training dtype, float32 for auto."""
    dtype = config["models"][model]["dtype"]
    return "float32" if dtype == "auto" else dtype


def grows(minutes):
    """A runtime that grows with each attempt, so a job retried after hitting its time limit
    (SLURM kills it at the limit) gets longer."""
    return lambda wildcards, attempt: minutes * attempt


def model_resource(stage, key):
    """A resource of a model's adapt or evaluation job (models.<name>.resources.<stage>); gpus null
    falls back to adaptation.gpus / evaluation.gpus; runtime grows with the attempt."""
    fallback = {"adapt": ADAPTATION, "evaluate": EVALUATION}[stage]["gpus"]

    def resource(wildcards, attempt):
        value = config["models"][wildcards.model]["resources"][stage][key]
        if key == "gpus":
            return fallback if value is None else value
        return value * attempt if key == "runtime" else value

    return resource


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


def domain_text_bytes(files):
    """About how many bytes of text a domain's split files (or archive) hold (0 while missing)."""
    return sum(
        (
            m2d2_lib.archive_text_bytes(f)
            if f.endswith(m2d2_lib.ARCHIVE_SUFFIXES)
            else os.path.getsize(f)
        )
        for f in files
        if os.path.exists(f)
    )


def corpus_files(corpus):
    spec = config["corpora"][corpus]
    if DEMO_OUTPUTS is not None and spec["path"] in DEMO_OUTPUTS["sources"]:
        return [spec["path"]]
    if spec["format"] == "hf" or sources_lib.is_remote(spec["path"]):
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
