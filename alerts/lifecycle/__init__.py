"""Alert lifecycle: the Alert model, the pipeline from findings to notifications with its
noise stages (``stages/``), the alerts table and queries, operations and lines."""
