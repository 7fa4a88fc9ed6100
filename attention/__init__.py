"""Attention cores, the registry that selects them, and the mask/bias library."""

from attention.registry import (accumulation_dtype, core_class, create_core, default_configs,
                                known_kinds, register)

__all__ = ['accumulation_dtype', 'core_class', 'create_core', 'default_configs', 'known_kinds',
           'register']
