"""The science core of rerefine: maps, models, restraints, sharpening, metrics, refinement.

Nothing here imports ``rerefine.harvester``, ``rerefine.reports`` or ``rerefine.flows``;
functions take numpy arrays and gemmi objects and return them.
"""
