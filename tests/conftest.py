"""Shared test set-up: the real-service harness fixtures."""

pytest_plugins = ["tests.harness_fixtures"]
