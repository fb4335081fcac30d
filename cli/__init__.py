"""Esper on Kafka: Tezzeret (compiler), Kasmina (safety), their Leyline contracts, Kafka plumbing and projections.

Subpackages: esper.proto, esper.streams, esper.projections, esper.compiler, esper.safety.
"""

__version__ = "0.1.0"
