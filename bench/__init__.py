"""Benchmarks run by ``lifeline bench NAME``; each module measures its own ceiling too."""
