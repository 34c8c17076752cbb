"""Alignment of a base model to a palette: MAP-D by decoding (decode.py)."""
