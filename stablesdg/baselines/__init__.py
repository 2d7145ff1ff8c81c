"""Generators the paper compares against, trained from scratch per category: DCGAN and DDPM (Yang et al.)."""
