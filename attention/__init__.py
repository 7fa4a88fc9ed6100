"""Attention cores, the registry that selects them, the mask/bias library, and `capture` to
read what they sow (`attention.capture.attention_maps`)."""

from attention.registry import (accumulation_dtype, core_class, core_config, create_core,
                                default_configs, known_kinds, make_core, register)

__all__ = ['accumulation_dtype', 'core_class', 'core_config', 'create_core', 'default_configs',
           'known_kinds', 'make_core', 'register']
