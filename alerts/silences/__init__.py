"""Silences and maintenance windows: model, matching, store and operations."""
