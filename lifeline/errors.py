"""Exception root of the composition root."""


class LifelineError(Exception):
    """Base class of errors raised by :mod:`lifeline`."""


class ConfigError(LifelineError):
    """The configuration is invalid; the message names the key."""
