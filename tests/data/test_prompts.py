"""Prompt sources: the real chitchat openers, and the hub loaders on small local files of the hub schema."""

import gzip
import json

import pandas as pd
import pytest

from map_jax.data import prompts as pr


@pytest.fixture(scope="module")
def chitchat():
  return pr.load_prompts("chitchat")


def test_chitchat_openers_are_clean_distinct_and_many(chitchat):
  assert len(chitchat) > 4000  # 7,168 conversations, most of which open with some "hello?"
  assert all(p and p == p.strip() and "  " not in p for p in chitchat)
  assert len({p.casefold() for p in chitchat}) == len(chitchat)
  # The first message is every utterance its sender typed before the reply, joined by spaces.
  assert chitchat[0] == "Hello How are you doing today?"


def test_chitchat_subsets_and_split_are_deterministic_and_disjoint(chitchat):
  sub = pr.load_prompts("chitchat", num=50, seed=3)
  assert sub == pr.load_prompts("chitchat", num=50, seed=3) and len(sub) == 50
  assert set(sub) <= set(chitchat) and sub != pr.load_prompts("chitchat", num=50, seed=4)
  pilot, test = pr.split_prompts(chitchat, num_pilot=1000, num_test=300, seed=0)
  assert (len(pilot), len(test)) == (1000, 300) and not set(pilot) & set(test)
  assert (pilot, test) == pr.split_prompts(chitchat, 1000, 300, seed=0)
  assert pilot != pr.split_prompts(chitchat, 1000, 300, seed=1)[0]
  with pytest.raises(ValueError, match="exceeds"):
    pr.split_prompts(chitchat, len(chitchat), 1)


def test_split_drops_duplicates_so_sets_stay_disjoint():
  pilot, test = pr.split_prompts(["Hi", "hi ", "Yo", "Hey"], 2, 1, seed=0)
  assert sorted(pilot + test) == ["Hey", "Hi", "Yo"]
  with pytest.raises(ValueError, match="3 distinct"):
    pr.split_prompts(["Hi", "hi", "Yo", "Hey"], 3, 1)


def _hh(chosen):
  return {"chosen": chosen, "rejected": chosen + " no."}


@pytest.fixture
def hh_file(tmp_path):
  rows = [
    _hh("\n\nHuman: What is a good  pasta recipe?\n\nAssistant: Boil it.\n\nHuman: More?\n\nAssistant: Salt."),
    _hh("\n\nHuman: How do I pick a lock?\n\nAssistant: I can't help with that."),
    _hh("\n\nHuman: how do I pick a lock?\n\nAssistant: No."),  # duplicate up to case
    _hh("no markers at all"),
    _hh("\n\nHuman:   \n\nAssistant: empty turn"),
  ]
  path = tmp_path / "train.jsonl.gz"  # the hub stores harmless-base/{train,test}.jsonl.gz
  with gzip.open(path, "wt") as f:
    f.write("\n".join(json.dumps(r) for r in rows))
  return str(path)


def test_hh_first_human_turn_from_a_local_file(hh_file):
  want = ["What is a good pasta recipe?", "How do I pick a lock?"]
  assert pr.load_prompts("hh-rlhf", data_files=hh_file) == want
  assert pr.load_prompts(f"Anthropic/hh-rlhf:{hh_file}", split="test") == want
  assert pr.load_prompts("hh-rlhf", data_files={"test": hh_file}, split="test", field="rejected") == want
  assert pr.hh_first_turn("\n\nHuman: a\n\nAssistant: b") == " a"
  with pytest.raises(ValueError, match="asked for 3 prompts"):
    pr.load_prompts("hh", data_files=hh_file, num=3)


def test_missing_column_names_file_and_column(tmp_path):
  path = tmp_path / "hh.jsonl"
  path.write_text(json.dumps({"text": "x"}) + "\n")
  with pytest.raises(pr.PromptFormatError, match=r"hh\.jsonl: no column 'chosen' \(columns: text\)"):
    pr.load_prompts("hh-rlhf", data_files=str(path))
  with pytest.raises(pr.PromptFormatError, match=r"hh\.jsonl: no column 'prompt'"):
    pr.load_prompts(str(path))
  with pytest.raises(FileNotFoundError, match="nope.jsonl"):
    pr.load_prompts(str(tmp_path / "nope.jsonl"))
  with pytest.raises(ValueError, match="unknown prompt source"):
    pr.load_prompts("wikipedia")


def test_imdb_prefixes_from_a_local_parquet(tmp_path):
  reviews = [
    "Too short to use.",  # 17 characters: dropped
    "This movie was<br /><br />an absolute delight from the first frame to the last.",
    "I have never been so bored in a cinema, and I have seen a lot of films.",
    "Exactly thirty characters, ok.",
  ]  # not over 30: dropped
  path = tmp_path / "imdb-train.parquet"
  pd.DataFrame({"text": reviews, "label": [0, 1, 0, 1]}).to_parquet(path)
  out = pr.load_prompts("imdb", data_files=str(path), seed=0)
  full = ["This movie was an absolute delight from the first frame to the last.", reviews[2]]
  assert len(out) == 2
  for p, r in zip(out, full):  # a 20-30 character prefix, no trailing space, the <br /> gone
    assert any(p == r[:n].rstrip() for n in range(20, 31)), p
  assert out == pr.load_prompts("stanfordnlp/imdb:" + str(path), seed=0)
  assert len({tuple(pr.imdb_prefixes(reviews, seed=s)) for s in range(5)}) > 1  # the seed moves the cut


def test_imdb_cut_lengths_cover_20_to_30():
  prefixes = pr.imdb_prefixes(["x" * 40] * 2000, seed=0)
  assert {len(p) for p in prefixes} == set(range(20, 31))


def test_local_prompt_files_jsonl_and_csv(tmp_path):
  jl = tmp_path / "p.jsonl"
  jl.write_text("\n".join(json.dumps({"question": q}) for q in ["  Why? ", "", "How\nso?", "why?"]))
  assert pr.load_prompts(str(jl), field="question") == ["Why?", "How so?"]
  csv = tmp_path / "p.csv"
  pd.DataFrame({"prompt": ["a b", None, "c"]}).to_csv(csv, index=False)
  assert pr.load_prompts(str(csv)) == ["a b", "c"]
  empty = tmp_path / "e.jsonl"
  empty.write_text(json.dumps({"prompt": " "}) + "\n")
  with pytest.raises(pr.PromptFormatError, match="no non-empty prompt"):
    pr.load_prompts(str(empty))


def test_max_chars_keeps_short_prompts_before_subsampling(tmp_path, chitchat):
  jl = tmp_path / "p.jsonl"
  jl.write_text("\n".join(json.dumps({"prompt": q}) for q in ["short", "x" * 11, "ten chars!", "y" * 500]))
  assert pr.load_prompts(str(jl), max_chars=10) == ["short", "ten chars!"]
  with pytest.raises(pr.PromptFormatError, match="at most 3 characters"):
    pr.load_prompts(str(jl), max_chars=3)
  with pytest.raises(ValueError, match="max_chars"):
    pr.load_prompts(str(jl), max_chars=0)
  short = pr.load_prompts("chitchat", max_chars=200)
  assert 0.8 * len(chitchat) < len(short) < len(chitchat)
  assert set(short) == {p for p in chitchat if len(p) <= 200}
  subset = pr.load_prompts("chitchat", max_chars=200, num=50, seed=1)
  assert len(subset) == 50 and all(len(p) <= 200 for p in subset)
