"""Exception root of the simulators package."""


class SimulatorError(Exception):
    """Base class of every error raised by :mod:`simulators`."""


class ScenarioError(SimulatorError):
    """A scenario file is invalid; the message names the file and the field."""
