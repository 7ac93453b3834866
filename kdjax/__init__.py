"""kdjax: knowledge distillation and model fusion for JAX/Flax."""

__version__ = "0.1.0"
