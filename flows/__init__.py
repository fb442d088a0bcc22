"""Orchestration: settings, the ``rerefine`` CLI and the Prefect flows that tie the stages together."""

from rerefine.common.version import __version__

__all__ = ["__version__"]
