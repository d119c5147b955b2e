"""Cases: model, workflow state machine, CaseBook, deadlines, KPIs, tables and queries,
actions with idempotency keys and signatures, listings and lines."""
