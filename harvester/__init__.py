"""Harvester: find newly released cryo-EM entries and fetch model, map and half-maps.

API for the flows: :func:`discover` -> list of :class:`Candidate`;
:func:`fetch_entry` -> :class:`FetchedEntry` (see :mod:`rerefine.harvester.harvest`).
"""

from .harvest import Candidate, FetchedEntry, candidate_from_dict, discover, emdb_metadata, fetch_entry

__all__ = ["Candidate", "FetchedEntry", "candidate_from_dict", "discover", "emdb_metadata", "fetch_entry"]
