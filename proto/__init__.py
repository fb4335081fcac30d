"""Leyline contracts: the protobuf messages every Esper service exchanges on Kafka."""

from esper.proto import leyline_pb2

__all__ = ["leyline_pb2"]
