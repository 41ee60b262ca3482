"""Canary step runner and local target tests against real processes."""
