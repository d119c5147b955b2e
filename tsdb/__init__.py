"""Time-series storage contract: the InfluxDB schema and its line protocol encoder.

No project imports: the lowest layer, usable by every other package.
"""
