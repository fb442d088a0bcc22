"""One module per ``rerefine`` sub-command; see :mod:`rerefine.flows.cli`."""
