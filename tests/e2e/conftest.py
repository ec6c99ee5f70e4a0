"""Fixtures shared by the end-to-end tests."""

from flwr_helpers import flwr_home  # noqa: F401  (a fixture: a private FLWR_HOME for `flwr run`)
