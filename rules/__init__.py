"""Rules: rule files, numpy kernels, per-series state, the engine."""
