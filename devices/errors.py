"""Exception root of the devices package."""


class DevicesError(Exception):
    """Base class of every error raised by :mod:`devices`."""


class CatalogueError(DevicesError):
    """The device type catalogue is invalid."""


class InventoryError(DevicesError):
    """A device inventory file is invalid."""
