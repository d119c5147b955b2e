"""Exception root of the rules package."""


class RulesError(Exception):
    """Base class of every error raised by :mod:`rules`."""


class RuleFileError(RulesError):
    """A rule file is missing or invalid; the message names file, line or rule and field."""


class BacktestError(RulesError):
    """A backtest input (CSV file, option) is unusable; the message names file and line."""
