"""Gate runner tests against real model servers."""
