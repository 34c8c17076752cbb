"""Prompt datasets and pilot reward tables."""
