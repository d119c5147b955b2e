"""Device vocabulary: types, metrics, units, devices, topics and series."""
