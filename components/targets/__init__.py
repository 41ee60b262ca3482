"""Serving targets: one interface (``base``), one module per target."""
