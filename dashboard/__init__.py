"""The release dashboard: one panel definition (``panels``), rendered as a live local page (``page``) and as
Grafana dashboard JSON (``grafana``)."""
