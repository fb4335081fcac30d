"""Tezzeret as a Kafka service: `esper compiler run` (see app.py for the pipeline)."""
