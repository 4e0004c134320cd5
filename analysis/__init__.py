"""Continued-pretraining and on-device-training study: the importable logic behind the Snakemake rules.

Rules only wire paths; everything they run lives here so that it can be imported, tested and reused
(``python -m analysis ...`` for the command line).
"""

__version__ = "0.1.0"
