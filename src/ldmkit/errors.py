"""User-facing errors.

Every mistake a user can make (a config typo, a missing file, a missing asset, a wrong checkpoint)
raises a subclass of :class:`LdmkitError`. The command line prints ``error: <message>`` on one line
and exits with status 2, without a traceback; library users catch the class they care about.
"""

from __future__ import annotations


class LdmkitError(Exception):
    """Base class of errors whose message alone tells the user what went wrong and what to do."""


class ConfigError(LdmkitError):
    """A configuration key, type or value is not allowed."""


class DataError(LdmkitError):
    """A data set path, file or format problem."""


class AssetMissingError(LdmkitError):
    """A data set or pretrained network has not been fetched; the message names the fetch command."""


class CheckpointError(LdmkitError):
    """A model directory or training checkpoint is missing, damaged or does not fit the model."""
