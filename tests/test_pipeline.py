"""map_jax.pipeline: a MAP-by-decoding run on a workdir, end to end on a tiny model and on real SmolLM2;
cached stages, reruns of exactly the stages a config change touches, resume after a kill, the report."""

import json

import jax
import numpy as np
import pytest

import configs
from map_jax import pipeline, spec
from map_jax.align.decode import select
from map_jax.data.pilot import load_pilot
from map_jax.store import ChunkStore


def default_config():
  return configs.load("default")


PROMPTS = [
  "How was your weekend?",
  "What do you do for fun?",
  "Any plans for the summer?",
  "Do you like dogs?",
  "What is your favorite food?",
  "Tell me about your job.",
  "Seen any good movies lately?",
  "Where did you grow up?",
  "What music do you like?",
  "Do you play any sports?",
  "What's the best book you read?",
  "Coffee or tea?",
  "x" * 300,
]


@pytest.fixture
def prompt_file(tmp_path):
  path = tmp_path / "prompts.jsonl"
  path.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS))
  return str(path)


def tiny_config(model, prompt_file):
  c = default_config()
  c.model = model
  c.prompts.source, c.prompts.num_pilot, c.prompts.num_test = prompt_file, 8, 3
  c.pilot.samples_per_prompt = 4  # = k + 1 below, and one length bucket: a single compiled sampler
  c.generation.max_new_tokens, c.generation.batch_size, c.generation.min_bucket = 6, 3, 64
  c.targeted, c.kept = "positiveness,diversity", "length"
  c.value_options = {}
  c.palettes = "all-60%;both=positiveness:0.99,diversity:0.99"
  c.decode.num_candidates = 3
  return c


def test_palette_specs():
  t, k = ["humor", "gpt2-helpful"], ["coherence"]
  assert spec.parse_palettes("HHH-70%; gpt2-helpful-80% ;x=humor:0.9", t, k) == [
    ("HHH-70%", {"humor": 0.7, "gpt2-helpful": 0.7}),
    ("gpt2-helpful-80%", {"gpt2-helpful": 0.8}),
    ("x", {"humor": 0.9}),
  ]
  for bad, msg in [
    ("coherence-80%", "kept at its mean"),
    ("wit-80%", "not a targeted value"),
    ("x=humor:1.5", "outside"),
    ("x=humor", "VALUE:QUANTILE"),
    ("HHH", "GROUP-Q%"),
    ("", "no palette"),
    ("a=humor:0.5;a=humor:0.6", "repeat"),
  ]:
    with pytest.raises(ValueError, match=msg):
      spec.parse_palettes(bad, t, k)


def test_config_validation_and_stage_keys():
  c = default_config()
  pipeline.validate(c)
  keys = pipeline.stage_keys(c)
  c.palettes = "HHH-80%"
  changed = {s for s, v in pipeline.stage_keys(c).items() if v != keys[s]}
  assert changed == {"solve", "decode", "report"}
  c.generation.max_new_tokens = 10
  assert {s for s, v in pipeline.stage_keys(c).items() if v == keys[s]} == {"prompts"}
  for field, value, msg in [
    ("targeted", "humor,coherence", "both targeted and kept"),
    ("targeted", "", "no value"),
    ("adjust", "scale", "adjust"),
    ("palettes", "coherence-50%", "kept"),
  ]:
    bad = default_config()
    setattr(bad, field, value)
    with pytest.raises(ValueError, match=msg):
      pipeline.validate(bad)
  c = default_config()
  c.mesh.tensor = 1 + jax.device_count()  # more devices than there are
  with pytest.raises(ValueError, match=r"config.mesh: mesh data=1 × fsdp=1 × tensor=\d+ does not cover"):
    pipeline.validate(c)
  c.mesh.tensor = 0
  with pytest.raises(ValueError, match=r"config.mesh sizes must be >= 1 or -1 .*'tensor': 0"):
    pipeline.validate(c)
  c.mesh.tensor, c.mesh.data = 2, 4
  assert pipeline.stage_keys(c) == pipeline.stage_keys(default_config())  # the mesh is in no stage key


def test_tiny_run_end_to_end_cache_and_rerun(tiny_smollm_dir, prompt_file, tmp_path):
  c = tiny_config(tiny_smollm_dir, prompt_file)
  c.prompts.max_chars = 200
  wd = tmp_path / "run"
  t = pipeline.run(c, str(wd))
  assert not any(v["skipped"] for v in t.values())
  assert list(t) == [s for s in pipeline.STAGES if s not in pipeline.MAP_F_STAGES]  # no MAP-F run configured
  with pytest.raises(ValueError, match="config.map_f names no MAP-F run"):
    pipeline.run(c, str(wd), until="score_map_f")

  prompts = json.loads((wd / "prompts.json").read_text())
  assert len(prompts["pilot"]) == 8 and len(prompts["test"]) == 3
  assert not set(prompts["pilot"]) & set(prompts["test"]) and "x" * 300 not in prompts["pilot"] + prompts["test"]
  pilot_rows = [json.loads(l) for l in (wd / "pilot.jsonl").read_text().splitlines()]
  assert [(r["prompt"], r["sample"]) for r in pilot_rows] == [(p, s) for p in prompts["pilot"] for s in range(4)]
  names = ["positiveness", "diversity", "length"]
  R, _ = load_pilot(str(wd / "pilot.rewards.jsonl"), names)
  assert R.shape == (32, 3)

  pal = json.loads((wd / "palettes.json").read_text())
  assert [p["label"] for p in pal["palettes"]] == ["all-60%", "both"]
  np.testing.assert_allclose(pal["palettes"][0]["palette"][2], R[:, 2].mean())  # kept at the mean
  assert pal["palettes"][1]["feasible"] is False and pal["palettes"][1]["use"] == "adjusted"

  # decoded choices are `select` on the stored candidate rewards with the stored key schedule
  C, _ = load_pilot(str(wd / "candidates.rewards.jsonl"), names)
  C = C.reshape(3, 4, 3)
  dec = json.loads((wd / "decoded.json").read_text())
  for d in dec["palettes"]:
    sel = select(pipeline.palette_key(c.seed, d["label"]), C[:, 1:].astype(np.float32), np.float32(d["lambda"]))
    assert d["index"] == (np.asarray(sel.index) + 1).tolist()

  rep = json.loads((wd / "report.json").read_text())
  for p, d in zip(rep["palettes"], dec["palettes"]):
    aligned = C[np.arange(3), d["index"]]
    for j, v in enumerate(names):
      np.testing.assert_allclose(p["comparison"][v]["aligned"]["mean"], aligned[:, j].mean())
      np.testing.assert_allclose(p["comparison"][v]["original"]["mean"], C[:, 0, j].mean())
    used = p["adjusted"] if p["use"] == "adjusted" else p
    assert [p["comparison"][v]["predicted"] for v in names] == pytest.approx(used["realized"])
  md = (wd / "report.md").read_text()
  assert "| original" in md and "Infeasible" in md and "certifies" in md
  for f in ["radar.png", "hist_all_60.png", "hist_both.png"]:
    assert (wd / f).stat().st_size > 1000

  # a rerun skips every stage; a new palette reruns only solve, decode and report
  assert all(v["skipped"] for s, v in pipeline.run(c, str(wd)).items() if s != "report")
  first = json.loads((wd / "decoded.json").read_text())["palettes"][0]
  c.palettes = "diversity-70%;all-60%"
  t = pipeline.run(c, str(wd))
  assert {s for s, v in t.items() if not v["skipped"]} == {"solve", "decode", "report"}
  assert [p["label"] for p in json.loads((wd / "report.json").read_text())["palettes"]] == ["diversity-70%", "all-60%"]
  assert json.loads((wd / "decoded.json").read_text())["palettes"][1] == first  # its draw did not move
  # the first palette set's report is kept whole under reports/, and no figure of it stays at the top level
  kept_dir = wd / "reports" / pipeline.palette_set(tiny_config(tiny_smollm_dir, prompt_file))
  kept = json.loads((kept_dir / "report.json").read_text())
  assert [p["label"] for p in kept["palettes"]] == ["all-60%", "both"]
  assert (kept_dir / "hist_both.png").exists() and (kept_dir / "report.md").exists()
  assert not (wd / "hist_both.png").exists() and (wd / "hist_diversity_70.png").exists()

  # a MAP-F run (the layout experiments.train_ppo writes) joins the report as one more row
  from map_jax.models.loading import load_model, save_params

  tiny = load_model(tiny_smollm_dir)
  mapf = tmp_path / "mapf"
  save_params(str(mapf / "params"), jax.tree.map(lambda x: 1.5 * x, tiny.params))
  (mapf / "run.json").write_text(
    json.dumps(
      {
        "method": "MAP-F",
        "model": tiny_smollm_dir,
        "params": str(mapf / "params"),
        "chat": True,
        "values": ["diversity", "length"],
        "lam": [2.0, 0.0],
      }
    )
  )
  c.map_f = str(mapf)
  t = pipeline.run(c, str(wd))
  assert {s for s, v in t.items() if not v["skipped"]} == {"generate_map_f", "score_map_f", "report"}
  F, _ = load_pilot(str(wd / "map_f.rewards.jsonl"), names)
  row = json.loads((wd / "report.json").read_text())["map_f"]
  np.testing.assert_allclose([row["comparison"][v]["aligned"]["mean"] for v in names], F.mean(0))
  w = np.exp(2.0 * R[:, 1] - (2.0 * R[:, 1]).max())
  np.testing.assert_allclose(row["comparison"]["diversity"]["predicted"], (w / w.sum()) @ R[:, 1], rtol=1e-9)
  assert list(row["checks"]["raised_rise"]) == ["diversity"]
  assert "| MAP-F" in (wd / "report.md").read_text() and (wd / "hist_MAP_F.png").exists()
  responses = [json.loads(l)["response"] for l in (wd / "map_f.jsonl").read_text().splitlines()]
  originals = [json.loads(l)["response"] for l in (wd / "candidates.jsonl").read_text().splitlines()][::4]
  assert responses != originals  # sampled from the changed params


def test_generation_resumes_after_a_kill_to_the_same_samples(tiny_smollm_dir, prompt_file, tmp_path, monkeypatch):
  c = tiny_config(tiny_smollm_dir, prompt_file)
  pipeline.run(c, str(tmp_path / "whole"), until="generate_pilot")

  import map_jax.sampling as gen

  real, calls = gen.generate, []

  def dying(*a, **kw):
    calls.append(1)
    if len(calls) > 1:
      raise KeyboardInterrupt("killed")
    return real(*a, **kw)

  monkeypatch.setattr(gen, "generate", dying)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run(c, str(tmp_path / "killed"), until="generate_pilot")
  parts = tmp_path / "killed" / "pilot.jsonl.parts"
  assert len(parts.read_text().splitlines()) == 1 + 1 and not (tmp_path / "killed" / "pilot.jsonl").exists()
  with parts.open("a") as f:
    f.write('{"chunk": 1, "data": [')  # torn by the kill mid-write
  key = json.loads(parts.read_text().splitlines()[0])["key"]
  assert ChunkStore(str(parts), key).chunks.keys() == {0}
  assert len(parts.read_text().splitlines()) == 1 + 1  # the torn line is cut off, later appends stay readable
  monkeypatch.setattr(gen, "generate", real)
  t = pipeline.run(c, str(tmp_path / "killed"), until="generate_pilot")
  assert not t["generate_pilot"]["skipped"]
  assert (tmp_path / "killed" / "pilot.jsonl").read_text() == (tmp_path / "whole" / "pilot.jsonl").read_text()
  assert not parts.exists()


@pytest.mark.parametrize("change", ["seed", "prompts"])
def test_a_killed_generation_rerun_under_another_config_equals_a_clean_run(
  tiny_smollm_dir, prompt_file, tmp_path, monkeypatch, change
):
  c = tiny_config(tiny_smollm_dir, prompt_file)
  import map_jax.sampling as gen

  real, calls = gen.generate, []

  def dying(*a, **kw):
    calls.append(1)
    if len(calls) > 1:
      raise KeyboardInterrupt("killed")
    return real(*a, **kw)

  monkeypatch.setattr(gen, "generate", dying)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run(c, str(tmp_path / "killed"), until="generate_pilot")
  monkeypatch.setattr(gen, "generate", real)
  if change == "seed":
    c.seed = c.seed + 1
  else:  # the same number of prompts, other texts: responses must not land under the wrong prompt
    path = tmp_path / "other.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p + " Why?"}) for p in PROMPTS))
    c.prompts.source = str(path)
  pipeline.run(c, str(tmp_path / "killed"), until="generate_pilot")
  pipeline.run(c, str(tmp_path / "clean"), until="generate_pilot")
  assert (tmp_path / "killed" / "pilot.jsonl").read_text() == (tmp_path / "clean" / "pilot.jsonl").read_text()


def test_real_smollm2_run(tmp_path):
  """The embedded default's parts for real: SmolLM2-135M-Instruct, chitchat prompts, three offline values."""
  c = default_config()
  # one compiled sampler shape for pilot and test: 4 prompts x 5 samples per call, short openers
  c.prompts.num_pilot, c.prompts.num_test, c.prompts.max_chars = 8, 4, 40
  c.pilot.samples_per_prompt = 5
  c.generation.max_new_tokens, c.generation.batch_size, c.generation.min_bucket = 12, 4, 64
  c.targeted, c.kept = "positiveness,harmlessness", "diversity"
  c.value_options = {}
  c.palettes = "HHH-70%"
  c.decode.num_candidates = 4
  pipeline.run(c, str(tmp_path))
  rep = json.loads((tmp_path / "report.json").read_text())
  texts = [json.loads(l)["response"] for l in (tmp_path / "candidates.jsonl").read_text().splitlines()]
  assert len(texts) == 4 * 5 and sum(len(t.split()) >= 3 for t in texts) >= 15  # real text, not noise
  words = set(" ".join(texts).lower().split())
  assert len(words & {"the", "a", "i", "you", "to", "and", "is"}) >= 4
  p = rep["palettes"][0]
  assert p["feasible"] and p["lambda"][0] > 0 and set(p["comparison"]) == {"positiveness", "harmlessness", "diversity"}
  assert rep["original"]["levels"]["positiveness"]["low"] <= rep["original"]["levels"]["positiveness"]["mean"]


def test_paper_configs_build_and_validate():
  opt, llama = configs.load("paper_opt1.3b"), configs.load("paper_llama2_7b")
  for c in (opt, llama):
    pipeline.validate(c)
    assert spec.value_names(c) == (
      ["humor", "gpt2-helpful", "gpt2-harmless"],
      ["diversity", "coherence", "perplexity"],
    )
    assert (c.prompts.source, c.prompts.num_pilot, c.decode.num_candidates) == ("hh-rlhf", 2000, 16)
    assert (c.generation.top_k, c.generation.max_new_tokens, c.generation.temperature) == (50, 50, 1.0)
    assert [lab for lab, _ in spec.parse_palettes(c.palettes, *spec.value_names(c))] == [
      "HHH-50%",
      "HHH-60%",
      "HHH-70%",
      "HHH-80%",
    ]
  assert (opt.model, opt.chat, llama.model, llama.chat) == (
    "facebook/opt-1.3b",
    False,
    "meta-llama/Llama-2-7b-chat-hf",
    True,
  )


def mesh_config(model, prompt_file):
  """The tiny run with a model-backed value (perplexity under the tiny model) beside model-free ones."""
  c = tiny_config(model, prompt_file)
  c.kept = "length,perplexity"
  c.value_options = {"perplexity": {"model": model, "batch_size": 4}}
  c.palettes = "all-60%"
  return c


@pytest.fixture(scope="module")
def one_device_run(tiny_smollm_dir, tmp_path_factory):
  """The workdir of `mesh_config`'s run on one device, to the report: what every mesh must reproduce."""
  root = tmp_path_factory.mktemp("one-device")
  prompts = root / "prompts.jsonl"
  prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS))
  pipeline.run(mesh_config(tiny_smollm_dir, str(prompts)), str(root / "run"))
  return root / "run"


def assert_same_tables(wd, one):
  """`wd`'s samples equal the one-device run's `one` and its scores (perplexity under the tiny model among
  them) agree to float32 rounding."""
  names = ["positiveness", "diversity", "length", "perplexity"]
  for table in ("pilot", "candidates"):
    assert (wd / f"{table}.jsonl").read_text() == (one / f"{table}.jsonl").read_text()
    got, _ = load_pilot(str(wd / f"{table}.rewards.jsonl"), names)
    want, _ = load_pilot(str(one / f"{table}.rewards.jsonl"), names)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.ptp(want[:, 3]) > 0.1  # perplexity really scored (rows differ)


def test_the_readme_mesh_run_killed_and_resumed_on_8_devices_gives_the_one_device_tables(
  tiny_smollm_dir, prompt_file, tmp_path, one_device_run
):
  """The README's mesh command as printed, on 8 simulated devices, with the tiny run's config file: SIGKILLed
  after its first pilot batch, rerun to the end; its pilot samples equal one device's and its scores (a
  decoder-backed value among them) agree to float32 rounding."""
  import shlex

  from tests.test_faults import _kill_when, _start
  from tests.test_parallel import xla_flags
  from tests.test_readme import ROOT, section_blocks

  blocks = section_blocks("### Over several devices", "bash")
  (line,) = [x.split("#")[0] for b in blocks for x in b.splitlines() if "--config.mesh.data=-1   #" in x]
  argv = shlex.split(line)
  assert argv[:3] == ["python", "-m", "experiments.run_map"] and "--config.mesh.data=-1" in argv
  tiny = tmp_path / "tiny_config.py"
  tiny.write_text(
    "from tests.test_pipeline import mesh_config\n\n\n"
    f"def get_config():\n  return mesh_config({tiny_smollm_dir!r}, {prompt_file!r})\n"
  )
  env = {"XLA_FLAGS": xla_flags(8), "PYTHONPATH": str(ROOT)}
  flags = [f"--config={tiny}", *argv[3:]]  # a --config file comes before the --config.FIELD flags
  flags = [f"--workdir={tmp_path / 'mesh'}" if a.startswith("--workdir=") else a for a in flags]
  wd = tmp_path / "mesh"
  _kill_when(_start("experiments.run_map", *flags, env=env), wd / "pilot.jsonl.parts", 1 + 1)
  assert not (wd / "pilot.jsonl").exists()
  kept = len((wd / "pilot.jsonl.parts").read_text().splitlines()) - 1
  proc = _start("experiments.run_map", *flags, env=env)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "stage generate_pilot: running" in out and (wd / "report.md").exists() and kept >= 1

  assert_same_tables(wd, one_device_run)


def run_two_hosts(config_file, wd, *extra):
  """The README's multi-host command as printed, run by two processes on this machine (one CPU device each,
  HOST0 = localhost, the workdir `wd`, the config file first); [(returncode, stdout, stderr)] per process."""
  import shlex
  import socket

  from tests.test_faults import _start
  from tests.test_parallel import xla_flags
  from tests.test_readme import section_blocks

  blocks = section_blocks("### Over several devices", "bash")
  (line,) = [x for b in blocks for x in b.splitlines() if "--coordinator_address" in x]
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = []
  for i in range(2):
    argv = shlex.split(line.replace("HOST0:8476", f"localhost:{port}").replace("$i", str(i)))
    assert argv[:3] == ["python", "-m", "experiments.run_map"]
    flags = [f"--workdir={wd}" if a.startswith("--workdir=") else a for a in argv[3:]]
    procs.append(
      _start("experiments.run_map", f"--config={config_file}", *flags, *extra, env={"XLA_FLAGS": xla_flags(1)})
    )
  outs = [p.communicate(timeout=300) for p in procs]
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def test_the_readme_multi_host_run_on_two_processes_gives_the_one_device_tables(
  tiny_smollm_dir, prompt_file, tmp_path, one_device_run
):
  """Process 0 writes a workdir whose tables equal one device's and prints the stages; the other writes
  nothing and prints nothing."""
  tiny = tmp_path / "tiny_config.py"
  tiny.write_text(
    "from tests.test_pipeline import mesh_config\n\n\n"
    f"def get_config():\n  return mesh_config({tiny_smollm_dir!r}, {prompt_file!r})\n"
  )
  wd = tmp_path / "hosts"
  outs = run_two_hosts(tiny, wd)
  for _, out, err in outs:
    assert "error" not in err, err[-3000:]
  assert [rc for rc, _, _ in outs] == [0, 0]
  assert "stage score_candidates: running" in outs[0][1] and "report:" in outs[0][1]
  assert "stage" not in outs[1][1] and "report" not in outs[1][1]
  assert (wd / "report.md").exists() and not list(wd.glob("*.parts"))
  assert_same_tables(wd, one_device_run)
  lam = [p["lambda"] for p in json.loads((wd / "palettes.json").read_text())["palettes"]]
  want = [p["lambda"] for p in json.loads((one_device_run / "palettes.json").read_text())["palettes"]]
  np.testing.assert_allclose(lam, want, rtol=1e-4, atol=1e-6)


def test_a_stage_failing_on_process_0_stops_both_processes_each_naming_it(tmp_path):
  """The prompts stage runs on process 0 alone; its error stops process 0 with the error and process 1 with
  the stage and process that failed, promptly (not at a timeout), and nothing is marked done."""
  from tests.test_readme import ROOT

  wd = tmp_path / "hosts"
  missing = tmp_path / "no_prompts.jsonl"
  outs = run_two_hosts(ROOT / "configs" / "default.py", wd, f"--config.prompts.source={missing}")
  assert [rc for rc, _, _ in outs] == [1, 1], [err[-2000:] for _, _, err in outs]
  assert f"error: prompt file not found: {missing}" in outs[0][2]
  assert "error: stage prompts failed on process 0" in outs[1][2]
  assert not (wd / "stages" / "prompts.json").exists()
