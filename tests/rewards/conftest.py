"""Shared fixtures for reward tests: full-precision matmuls, the real MiniLM, the trained humor head."""

import os
import pathlib

import jax
import pytest

REFERENCE = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "map_reference" / \
    "opt1.3b-Anthropic-harmless.json"


@pytest.fixture(autouse=True)
def highest_precision():
    """Parity against PyTorch float32 needs full-precision matmuls."""
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="session")
def humor_head():
    """The witty-rating head: the full one from the cache when present, else trained now on 2,000
    conversations (about 40 s on 2 cores) so a cold run of tests/rewards stays near its time budget."""
    from map_jax.rewards import heads
    full = heads.cache_dir("heads", "chitchat-witty-all-minilm-l6-v2-64-nall-s0", "meta.json")
    return heads.chitchat_head("witty", limit=None if os.path.isfile(full) else 2000)


@pytest.fixture(scope="session")
def reference_rows():
    if not REFERENCE.exists():
        pytest.skip(f"MAP reference data not found at {REFERENCE}")
    import json
    return json.loads(REFERENCE.read_text())
