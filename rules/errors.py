"""Exception root of the rules package."""


class RulesError(Exception):
    """Base class of every error raised by :mod:`rules`."""


class RuleFileError(RulesError):
    """A rule file is missing or invalid; the message names file, line or rule and field."""
