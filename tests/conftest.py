"""Shared test configuration: every test that needs the Pulumi engine runs against the pinned one."""
