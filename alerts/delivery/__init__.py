"""Webhook delivery: the outbox (model, table, worker, operations), the HTTP notifier and
the signatures (webhook v1, callback v2)."""
