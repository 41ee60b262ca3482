"""Where a backend keeps its files: one small interface (``base``), a factory, one module per kind of store."""
