"""Alerts: lifecycle, noise control, cases, webhook outbox and delivery."""
