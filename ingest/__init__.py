"""Ingest: MQTT subscriber, decoding, dead letters, columnar batches, InfluxDB writer."""
