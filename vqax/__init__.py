"""vqax: memory-aware JAX/Flax training of audio representation models."""

__version__ = "0.1.0"
