"""Adapting Stable Diffusion to a defect category: textual inversion, LoRA and full fine-tuning."""
