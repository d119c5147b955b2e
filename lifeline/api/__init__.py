"""HTTP API: one router per domain package, assembled in :mod:`lifeline.app`."""
