"""Task-specific training code: each task (text, diffusion) is a peer package."""
