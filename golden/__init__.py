"""Integer-exact NumPy model of WAGE training (Wu et al., ICLR 2018): the project's reference for every bit."""

from .config import ConfigError, LayerSpec, WageConfig

__all__ = ["ConfigError", "LayerSpec", "WageConfig"]
