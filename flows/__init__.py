"""Orchestration: settings, the ``rerefine`` CLI and the Prefect flows that tie the stages together."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rerefine")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
