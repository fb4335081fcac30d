"""Tezzeret's write-ahead log: the on-disk format (`format`, written down in FORMAT.md), recovery's scan and
classification (`scan`), the log itself (`log`: group commit, retirement, checkpoints) and its CLI (`cli`)."""
