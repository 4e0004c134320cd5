"""Errors the pipeline reports to a person: each message names the file, key or value at fault."""


class PipelineError(Exception):
    """Base class: an error caused by input or configuration, not by a bug.

    Scripts print these as one readable line instead of a stack trace.
    """


class ConfigError(PipelineError):
    """The configuration is invalid: a key is unknown, a value has the wrong type or is out of range."""


class CorpusError(PipelineError):
    """A corpus on disk (or on the hub) cannot be read as configured."""
