"""Errors users can act on. The CLI prints `lmforge: error: <message>` and exits 2 for any of them.

A message names the problem and the fix in one line; never raise these for programming bugs.
"""


class LmforgeError(Exception):
    """Base class: an error caused by the user's input, with a one-line message."""


class ConfigError(LmforgeError):
    """An invalid option, preset or combination of settings."""


class DataError(LmforgeError):
    """A corpus, dataset or field that cannot be read or used."""


class CheckpointError(LmforgeError):
    """A run folder or checkpoint that is missing, incomplete or incompatible."""
