"""StableSDG: defect image generation with a Stable Diffusion prior, and defect recognition experiments."""

__version__ = "0.1.0"
