"""Load and validate the pipeline configuration.

The schema (``workflow/schemas/config.schema.yaml``) fixes types, enums, required keys and defaults;
this module applies it, fills defaults in place, and adds the checks a schema cannot express (names
that must refer to each other, domains that must exist). Every error names the offending key.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
import yaml

from analysis.corpora import catalogue
from analysis.corpora import demo as demo_corpus
from analysis.corpora.m2d2 import available_domains
from analysis.errors import ConfigError
from analysis.lm.zero import check_zero_settings

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


def _extend_with_defaults(validator_class):
    """A validator that fills ``default`` values into the instance while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if "default" in subschema and key not in instance:
                    instance[key] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _extend_with_defaults(jsonschema.Draft7Validator)


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _key_path(parts: Iterable[Any]) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


#: Keys that existed in earlier versions, and what took their place.
REMOVED_KEYS = {
    "similarity.interval": (
        "removed: every interval is now the estimate -/+ z x its standard deviation over random halves of "
        "the sets, and the bias that the basic interval corrected is removed by the corrected estimators "
        "(mmd_unbiased, fd_corrected; similarity.estimator picks what the figures draw)"
    ),
    "similarity.bootstrap_resamples": "renamed similarity.resamples (random halves, no longer a bootstrap)",
    "similarity.bootstrap_blocks": "renamed similarity.blocks",
}


def _describe(error: jsonschema.ValidationError, source: str) -> str:
    """One readable line for a schema violation, naming the key and what was expected."""
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        pieces = []
        for key in extra:
            full = _key_path([*error.absolute_path, key])
            if full in REMOVED_KEYS:
                pieces.append(f"'{full}' was {REMOVED_KEYS[full]}")
            else:
                pieces.append(f"unknown key '{full}'{catalogue.did_you_mean(key, allowed)}")
        return f"{source}: " + "; ".join(pieces)
    if error.validator == "required":
        return f"{source}: missing required key under '{where}': {error.message}"
    if error.validator == "enum":
        options = ", ".join(repr(v) for v in error.validator_value)
        return f"{source}: '{where}' is {error.instance!r}; expected one of {options}"
    if error.validator == "type":
        return (
            f"{source}: '{where}' has the wrong type: {error.instance!r} is not "
            f"of type {error.validator_value!r}"
        )
    if error.validator == "oneOf" and "x-expected" in error.schema:
        return f"{source}: '{where}' is {error.instance!r}; expected {error.schema['x-expected']}"
    if "propertyNames" in error.schema_path:
        return (
            f"{source}: name {error.instance!r} under '{where}' is not allowed: names are used in "
            f"file names and may hold only letters, digits, '_', '.' and '-'"
        )
    return f"{source}: '{where}': {error.message}"


def validate(config: dict, schema: Mapping | None = None, source: str = "config") -> dict:
    """Validate ``config`` in place against the schema, fill defaults, run cross-checks; return it.

    Raises ConfigError naming the first offending key (all schema errors are listed).
    """
    schema = schema if schema is not None else load_schema()
    validator = _DefaultFillingValidator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("\n".join(_describe(e, source) for e in errors))
    _cross_check(config, source)
    return config


@functools.cache
def _shipped_schema() -> dict:
    """The shipped schema, parsed once per process (schema_defaults only reads it; 0.13 s a parse)."""
    return load_schema()


def schema_defaults(path: str, schema: Mapping | None = None) -> dict:
    """The schema's defaults of the section at a dotted ``path`` (``"similarity"``,
    ``"edge.federated"``; ``*`` stands for any name, as in ``"models.*"``): what a run that sets
    nothing there uses. Required keys without a default are left out."""
    node = schema if schema is not None else _shipped_schema()
    for key in path.split("."):
        found = node.get("additionalProperties") if key == "*" else node.get("properties", {}).get(key)
        if not isinstance(found, Mapping):
            raise ConfigError(f"no config section '{path}' in the schema (at '{key}')")
        node = found
    values: dict = {}
    for _ in _DefaultFillingValidator(node).iter_errors(values):  # fills defaults; missing required keys
        pass
    return values


def settings_from(cls, section: Mapping | None = None, **fixed):
    """A settings dataclass from its config section: each field that the section sets, then ``fixed``
    (values that do not come from the section: seeds, threads, a resolved precision).

    The schema is the only place a default lives. Without a ``section`` (a caller of the library
    with no config), the schema's defaults of ``cls.SECTION`` are used, so that caller gets the
    numbers of a pipeline run that sets nothing.
    """
    if section is None:
        if not getattr(cls, "SECTION", None):
            raise TypeError(f"{cls.__name__} stands for several config sections: pass the section")
        section = schema_defaults(cls.SECTION)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in section.items() if k in names}, **fixed})


def load(path: str | Path, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Read a YAML config file and validate it (see ``validate``)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return validate(config, load_schema(schema_path), source=str(path))


def _check_edge(edge: dict, source: str) -> None:
    """Dataset paths of the edge tasks exist before any job starts (the loader names the file at fault)."""
    specs = {"source": edge["source"], "target": edge["target"], "federated.task": edge["federated"]["task"],
             "leakage.task": edge["leakage"]["task"]}
    for which, spec in specs.items():
        path = spec.get("path")
        if spec["dataset"] == "digits":
            if path is not None:
                raise ConfigError(f"{source}: 'edge.{which}.path' is set ({path}) but the digits dataset has no path")
            continue
        if path is None:
            raise ConfigError(f"{source}: 'edge.{which}.path' is required for dataset {spec['dataset']!r}")
        if not Path(path).is_dir():
            hint = " (Debian: apt-get install dataset-fashion-mnist)" if "fashion-mnist" in str(path) else ""
            raise ConfigError(f"{source}: 'edge.{which}.path': dataset directory {path} does not exist{hint}")


def built_model_dir(name: str) -> str:
    """Where the pipeline writes a model it builds (rule pretrain_base) or converts (convert_gguf)."""
    return f"results/models/{name}/hf"


def _check_model_source(name: str, model: dict, source: str) -> None:
    """Exactly one source per model: name_or_path, a pretrain section (built at ``built_model_dir``)
    or a GGUF file (checked here: present, whole, an architecture transformers loads; converted to
    ``built_model_dir``, which becomes the entry's name_or_path)."""
    from analysis.lm import gguf

    built = built_model_dir(name)
    given = model.get("name_or_path")
    if "gguf" in model:
        if "pretrain" in model:
            raise ConfigError(f"{source}: 'models.{name}' has both a gguf file and a pretrain section; keep one")
        if given not in (None, built):
            raise ConfigError(
                f"{source}: 'models.{name}' names both a GGUF file (gguf) and name_or_path {given!r}; keep "
                f"one (a GGUF model is converted to {built!r} and loaded from there)"
            )
        try:
            gguf.check_source(model["gguf"], f"models.{name}.gguf")
        except gguf.GgufError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        model["name_or_path"] = built
    elif "pretrain" in model:
        if given is not None and given != built:
            raise ConfigError(
                f"{source}: 'models.{name}' has a pretrain section, so rule pretrain_base builds it at "
                f"{built!r}; set 'models.{name}.name_or_path' to that (it is {given!r})"
            )
        model["name_or_path"] = built
    elif given is None:
        raise ConfigError(
            f"{source}: 'models.{name}' names no model: give name_or_path (a hub id or a local folder), "
            "gguf (a GGUF file), or a pretrain section"
        )


def _cross_check(config: dict, source: str) -> None:
    _check_edge(config["edge"], source)
    demo = config["demo"]
    m2d2 = config["m2d2"]
    domains = config["domains"]
    sampling = config["sampling"]

    if sampling["domain_min_texts"] > sampling["domain_max_texts"]:
        raise ConfigError(
            f"{source}: 'sampling.domain_min_texts' ({sampling['domain_min_texts']}) is larger than "
            f"'sampling.domain_max_texts' ({sampling['domain_max_texts']})"
        )

    adaptation = config["adaptation"]
    if "auto_sparse" in adaptation["modes"] and adaptation["schemes"]["auto_sparse"]["budget_mib"] is None:
        raise ConfigError(
            f"{source}: 'adaptation.modes' includes auto_sparse, which needs "
            "'adaptation.schemes.auto_sparse.budget_mib' (the memory budget in MiB)"
        )

    for name, model in config["models"].items():
        _check_model_source(name, model, source)
        check_zero_settings(model["zero_stage"], model["offload_optimizer"], model["offload_parameters"],
                            where=f"{source}: 'models.{name}'", error=ConfigError)
        if model["corpus"] not in config["corpora"]:
            raise ConfigError(
                f"{source}: 'models.{name}.corpus' is {model['corpus']!r}, which is not a key of "
                f"'corpora' ({', '.join(sorted(config['corpora']))})"
            )

    if demo["enabled"]:
        expected_root = str(Path(demo["root"]) / "m2d2")
        if Path(m2d2["root"]) != Path(expected_root):
            raise ConfigError(
                f"{source}: 'm2d2.root' is {m2d2['root']!r} but the demo (demo.enabled) writes its "
                f"M2D2 tree to {expected_root!r}; set m2d2.root to that or disable the demo"
            )
        known, known_what = demo_corpus.DOMAINS, "the demo corpus generator"
        for key in ("archived_domains",):
            for name in demo[key]:
                if name not in known:
                    raise ConfigError(
                        f"{source}: 'demo.{key}' names {name!r}, which {known_what} does not "
                        f"write{catalogue.did_you_mean(name, known)}"
                    )
    else:
        root = Path(m2d2["root"])
        if root.is_dir():
            known = available_domains(root)
            known_what = f"the M2D2 root {str(root)!r}"
        else:
            # Not downloaded yet (a dry run on a laptop): check against the release's catalogue.
            known, known_what = catalogue.M2D2_DOMAINS, "the M2D2 release"

    for key in ("adaptation", "similarity"):
        for name in domains[key]:
            if name not in known:
                raise ConfigError(
                    f"{source}: 'domains.{key}' names unknown domain {name!r}: not in "
                    f"{known_what}{catalogue.did_you_mean(name, known)}"
                )
    # After the models and domains themselves, so that their own errors are reported first.
    ablation = adaptation["join_ablation"]
    for name in ablation["models"]:
        if name not in config["models"]:
            raise ConfigError(
                f"{source}: 'adaptation.join_ablation.models' names {name!r}, which is not a key of "
                f"'models' ({', '.join(sorted(config['models'])) or 'none'})"
            )
    for name in ablation["domains"] or []:
        if name not in domains["adaptation"]:
            raise ConfigError(
                f"{source}: 'adaptation.join_ablation.domains' names {name!r}, which is not in "
                f"'domains.adaptation'{catalogue.did_you_mean(name, domains['adaptation'])}"
            )


def similarity_domains(config: Mapping) -> list[str]:
    """Domains compared with the source corpora: the configured list, or the adaptation domains."""
    return list(config["domains"]["similarity"] or config["domains"]["adaptation"])


def all_domains(config: Mapping) -> list[str]:
    """Every domain the pipeline touches, in config order, without repeats."""
    return list(dict.fromkeys([*config["domains"]["adaptation"], *similarity_domains(config)]))


def domain_portion(config: Mapping, domain: str) -> str:
    return catalogue.portion(domain, config["domains"]["portions"])
