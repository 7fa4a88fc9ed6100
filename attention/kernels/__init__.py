"""Pallas kernels for the attention cores (`attention.impl=pallas`), each beside its reference."""
