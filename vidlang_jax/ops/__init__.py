"""Attention kernels: the plain reference and (later) ring attention over the sequence axis."""
