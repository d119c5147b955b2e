"""Tooling outside the runtime: the service harness, test receiver, dependency audit.

``lifeline serve`` never imports this package; tests, benchmarks, simulators and
the tooling commands (``lifeline services``, ``lifeline demo``, ``lifeline
evaluate --online``) do.
"""
