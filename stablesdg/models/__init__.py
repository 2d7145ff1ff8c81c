"""Stable Diffusion models by config: real SD1.5 weights, a tiny random SD, or the SD1.5 architecture at random."""

from stablesdg.models.components import SDComponents
from stablesdg.models.sd15 import load_sd15
from stablesdg.models.sd15_random import build_sd15_random
from stablesdg.models.tiny import build_tiny_sd

__all__ = ["SDComponents", "build_sd15_random", "build_tiny_sd", "load_sd15"]
