"""map-jax: multi-value alignment of language models (MAP) in JAX."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
  "jax>=0.10.2",
  "numpy>=2.0",
  "chex>=0.1.90",
  "flax>=0.12",
  "optax>=0.2.8",
  "orbax-checkpoint>=0.12",
  "absl-py>=2.1",
  "ml-collections>=1.0",
  "scipy>=1.13",
  "tqdm>=4.66",
  "tabulate>=0.9",
  "matplotlib>=3.9",
  "safetensors>=0.4",
  "gguf>=0.17",
  "transformers>=5.0",
  "tokenizers>=0.21",
  "jinja2>=3.1",  # chat templates
  "sentencepiece>=0.2",
  "datasets>=3.0",
  "vaderSentiment>=3.3.2",
  "alt-profanity-check>=1.6",
  "chitchat-dataset>=0.9",
  "tensorboardX>=2.6",
]

TEST_REQUIRES = [
  "pytest>=8",
  "pytest-xdist>=3.5",
  # PyTorch and accelerate only serve as independent references in tests.
  "torch==2.13.0",
  "accelerate>=1.0",
  "nbclient>=0.10",
  "nbformat>=5.10",
  "ipykernel>=6.29",
  "ruff==0.17.6",  # the formatter and linter CI runs (ruff.toml); pinned, so a format is one format
  # Drives Debian's chromium (apt-get install chromium chromium-driver) in the palette explorer's page tests.
  "selenium>=4.20",
]

setup(
  name="map-jax",
  version="0.1.0",
  description="MAP (Multi-Human-Value Alignment Palette) in JAX: exact dual solver, "
  "Flax language and reward models, alignment by decoding and by PPO.",
  packages=find_packages(include=["map_jax", "map_jax.*"]),
  package_data={"map_jax.explorer": ["static/*"]},  # the explorer's page, script and style sheet
  python_requires=">=3.10",
  install_requires=INSTALL_REQUIRES,
  extras_require={"test": TEST_REQUIRES},
)
