"""Flax language models and encoders, and loading of real checkpoints into them."""
