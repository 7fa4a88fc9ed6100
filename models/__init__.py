"""Shared transformer models: blocks, positions, adaptive input/softmax and the LM."""

from models.adaptive import AdaptiveInput, AdaptiveSoftmax
from models.lm import TransformerLM, validate_config
from models.positions import LearnedPositions, SinusoidalPositions, sinusoidal
from models.transformer import DecoderBlock, FeedForward, MultiHeadAttention

__all__ = [
    'AdaptiveInput', 'AdaptiveSoftmax', 'DecoderBlock', 'FeedForward', 'LearnedPositions',
    'MultiHeadAttention', 'SinusoidalPositions', 'TransformerLM', 'sinusoidal', 'validate_config',
]
