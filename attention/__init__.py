"""Attention cores, the registry that selects them, and the mask/bias library."""

from attention.registry import (core_class, create_core, default_configs, known_kinds,
                                register)

__all__ = ['core_class', 'create_core', 'default_configs', 'known_kinds', 'register']
