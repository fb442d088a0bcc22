"""The installed version of rerefine (the package metadata's), shared by the CLI, the flows and the
records every output carries."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rerefine")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
