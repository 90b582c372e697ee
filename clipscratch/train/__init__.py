"""Pretraining: config, optimisation, gradient caching, checkpoints and the loop."""
