"""Exceptions that carry a message meant for the user.

Every error raised on bad input derives from ``NephrowebError``. Its message names the
file or field, what is wrong with it and what to do, so callers show it unchanged.
"""


class NephrowebError(Exception):
    """Base class for errors whose message is shown to the user unchanged."""


class SlideError(NephrowebError, ValueError):
    """A slide file cannot be opened or lacks what analysis needs (e.g. its mpp)."""


class CheckpointError(NephrowebError):
    """A SAM checkpoint is missing, cannot be downloaded, or does not match."""


class SettingsError(NephrowebError, ValueError):
    """A setting has a wrong type or a value outside its allowed range."""
