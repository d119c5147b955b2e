"""Alerts, by concept: ``lifecycle`` (alerts and their noise stages), ``cases`` (the
workflow), ``delivery`` (the webhook outbox) and ``silences``."""
