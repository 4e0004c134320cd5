"""Rule convert_gguf: a GGUF model file dequantized once into a plain HF folder (analysis/lm/gguf.py)."""

from analysis.lm.gguf import convert
from analysis.runner import rule_log

with rule_log(snakemake.log[0]):
    convert(
        snakemake.input.gguf,
        snakemake.output.model,
        snakemake.output.provenance,
        dtype=snakemake.params.dtype,
    )
