"""Stable Diffusion LoRA training: the diffusion task."""
