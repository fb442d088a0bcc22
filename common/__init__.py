"""Infrastructure shared by every part of rerefine, and nothing scientific.

* :mod:`rerefine.common.errors` — the one error hierarchy (one-line causes, ``transient`` flag);
* :mod:`rerefine.common.atomicfile` — atomic file writes;
* :mod:`rerefine.common.version` — the installed version of rerefine.

Every other package (``refine``, ``harvester``, ``reports``, ``flows``) may import from here;
this package imports none of them.
"""
