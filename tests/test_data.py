"""Question sources and the grain pipeline: parsing, errors, shuffling, sharding, resuming."""

import json
import os
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zppo_jax import data

from zppo_jax.rl import prompts, rewards

ROWS = [{"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)}
        for i in range(23)]
ROWS[3]["choices"] = ["1", "6", "9"]
ROWS[4]["teacher_responses"] = ["</think>\\boxed{8}"]


def _jsonl(path, rows, extra_lines=()):
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
    for line in extra_lines:
      f.write(line + "\n")
  return str(path)


def _ids(batches):
  return [[q.id for q in batch] for batch in batches]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_local_files_parse_into_questions(tmp_path, kind):
  if kind == "jsonl":
    path = _jsonl(tmp_path / "d.jsonl", ROWS)
  else:
    path = str(tmp_path / "d.parquet")
    columns = ("id", "question", "answer", "choices", "teacher_responses")
    pq.write_table(pa.table({k: [r.get(k) for r in ROWS] for k in columns}), path)
  source = data.open_source(path)
  assert len(source) == len(ROWS)
  batches = _take(iter(data.make_dataset(source, batch_size=23, shuffle=False)), 1)
  questions = {q.id: q for q in batches[0]}
  assert questions["q5"] == data.Question("q5", "What is 5 + 5?", "10")
  assert questions["q3"].choices == ("1", "6", "9")
  assert questions["q4"].teacher_responses == ("</think>\\boxed{8}",)


def test_malformed_rows_are_named_or_skipped_and_counted(tmp_path):
  path = _jsonl(tmp_path / "bad.jsonl", ROWS[:5], extra_lines=[
      '{"id": "x", "question": "no answer"}', "{not json", '{"id": "y", "question": "q", '
      '"answer": "1", "choices": "abc"}'])
  source = data.JsonlSource(path)
  with pytest.raises(data.DataError,  # the first malformed row in file order
                     match=r"bad\.jsonl line 6: missing field\(s\) \['answer'\]"):
    list(data.make_dataset(source, batch_size=2, num_epochs=1, seed=3))
  errors = data.ErrorCounter()
  batches = list(data.make_dataset(source, batch_size=1, num_epochs=1, on_error="skip",
                                   errors=errors))
  assert sorted(q.id for b in batches for q in b) == ["q0", "q1", "q2", "q3", "q4"]
  assert [len(b) for b in batches] == [1] * 5  # batches are drawn from the usable rows only
  assert errors.skipped == 3 and "bad.jsonl line 8" in errors.last  # counted in file order
  with pytest.raises(data.DataError, match="unknown format"):
    data.open_source(str(tmp_path / "d.csv"))
  with pytest.raises(ValueError, match="on_error must be one of"):
    data.make_dataset(source, batch_size=1, on_error="ignore")


def test_epochs_are_reshuffled_and_seeds_reproduce(tmp_path):
  source = data.JsonlSource(_jsonl(tmp_path / "d.jsonl", ROWS))
  a = _ids(_take(iter(data.make_dataset(source, batch_size=23, seed=5)), 3))
  b = _ids(_take(iter(data.make_dataset(source, batch_size=23, seed=5)), 3))
  c = _ids(_take(iter(data.make_dataset(source, batch_size=23, seed=6)), 1))
  assert a == b and a[0] != c[0]
  assert all(sorted(epoch) == sorted(r["id"] for r in ROWS) for epoch in a)  # each is a permutation
  assert a[0] != a[1] != a[2]  # a new order every epoch


def test_hosts_read_disjoint_shares_of_the_one_host_batches(tmp_path):
  """Host p's batch b is its contiguous share of the one-host batch b, so P hosts together
  see the questions of one host, in the same order."""
  source = data.JsonlSource(_jsonl(tmp_path / "d.jsonl", ROWS))
  one = _ids(_take(iter(data.make_dataset(source, batch_size=6, seed=1)), 7))
  hosts = [_ids(_take(iter(data.make_dataset(source, batch_size=6, seed=1, shard_index=i,
                                             shard_count=3)), 7)) for i in range(3)]
  assert all(len(b) == 2 for h in hosts for b in h)
  assert [sum((h[b] for h in hosts), []) for b in range(7)] == one
  epoch = [sum(_ids(data.make_dataset(source, batch_size=3, num_epochs=1, seed=1,
                                      shard_index=i, shard_count=3)), []) for i in range(3)]
  assert len(set(sum(epoch, []))) == 21 and all(len(e) == 7 for e in epoch)  # 23 rows: 2 dropped
  with pytest.raises(ValueError, match="6 questions does not split over 4 processes"):
    data.make_dataset(source, batch_size=6, shard_index=0, shard_count=4)


RESUME = """
import json, sys
from zppo_jax import data
source = data.open_source(sys.argv[1])
iterator = iter(data.make_dataset(source, batch_size=4, seed=9))
iterator.set_state(json.loads(sys.argv[2]))
print(json.dumps([[q.id for q in next(iterator)] for _ in range(5)]))
"""


def test_iterator_resumes_exactly_in_a_new_process(tmp_path):
  """k batches, checkpoint the state as JSON, restore it in a fresh process: same next
  batches, across an epoch boundary."""
  path = _jsonl(tmp_path / "d.jsonl", ROWS)
  iterator = iter(data.make_dataset(data.open_source(path), batch_size=4, seed=9))
  _take(iterator, 4)
  state = json.dumps(iterator.get_state())
  expected = _ids(_take(iterator, 5))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", RESUME, path, state], capture_output=True,
                       text=True, check=True, cwd=root,
                       env={**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"})
  assert json.loads(out.stdout.strip().splitlines()[-1]) == expected


def test_synthetic_arithmetic_is_deterministic_correct_and_spread():
  source = data.ArithmeticSource(400, seed=3)
  again = data.ArithmeticSource(400, seed=3)
  levels = []
  for i in range(len(source)):
    row, where = source[i]
    assert row == again[i][0] and "row" in where
    a, op, b = re.fullmatch(r"Compute (\d+) ([-+*]) (\d+)\.", row["question"]).groups()
    value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    assert row["answer"] == str(value)
    # The worked solution is a correct response in the thinking format.
    assert rewards.is_correct(row["teacher_responses"][0], row["answer"])
    levels.append(int(row["id"].rsplit("L", 1)[1]))
    if op == "*":  # by one digit, so that a level is as many columns as + and -
      assert 2 <= int(b) <= 9
  assert set(levels) == {1, 2, 3, 4, 5, 6}
  assert data.ArithmeticSource(400, seed=4)[0][0] != source[0][0]
  with pytest.raises(ValueError, match="level_weights"):
    data.ArithmeticSource(10, level_weights=(0.0, 0.0))
  with pytest.raises(ValueError, match="styles"):
    data.ArithmeticSource(10, styles=("worked", "guess"))
  with pytest.raises(ValueError, match="review_fraction"):
    data.ArithmeticSource(10, review_fraction=1.5)


def test_synthetic_solution_styles_and_review_rows():
  """The tiny student's SFT rows: both styles of every question are correct; a review row
  shows one to three candidates, in formats that are not ZPPO's BCQ/NCQ template, whose
  wrong ones (a slipped step or a wrong direct answer) grade wrong, and asks for the worked
  solution. The plain rows' questions are those of the default source."""
  plain = data.ArithmeticSource(300, seed=1, level_weights=(0.5, 0.35, 0.15))
  mixed = data.ArithmeticSource(300, seed=1, level_weights=(0.5, 0.35, 0.15),
                                styles=("worked", "direct"), review_fraction=0.3)
  reviews, right, wrong = 0, 0, 0
  for i in range(len(mixed)):
    row, base = mixed[i][0], plain[i][0]
    if not row["id"].endswith("-review"):
      assert row["question"] == base["question"]
      worked, direct = row["teacher_responses"]
      assert worked == base["teacher_responses"][0]
      assert direct.count("\n") == 3  # <think>, one line, </think>, the answer
      assert all(rewards.is_correct(r, row["answer"]) for r in (worked, direct))
      continue
    reviews += 1
    assert row["question"].count(base["question"].removesuffix(".")) == 1
    assert "### Response" not in row["question"] and prompts.BCQ_INSTRUCTION not in row["question"]
    assert row["teacher_responses"] == base["teacher_responses"]
    shown = re.findall(r"<think>.*?\$\.", row["question"], flags=re.S)
    assert 1 <= len(shown) <= 3
    for candidate in shown:
      correct = rewards.is_correct(candidate, row["answer"])
      right, wrong = right + correct, wrong + (not correct)
      if not correct and "column" in candidate:  # a slip: a step off (and maybe a carry more)
        assert candidate.count("\n") - base["teacher_responses"][0].count("\n") in (0, 1)
  assert 60 <= reviews <= 120 and right > 30 and wrong > 30


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A GSM8K-shaped TFDS dataset ("####" before the final answer), written locally as
  ArrayRecord, with one record that has no final answer."""
  import tensorflow_datasets as tfds

  class ZppoToyGsm(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"question": tfds.features.Text(), "answer": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(), "test": self._generate_examples(3)}

    def _generate_examples(self, n=12):
      for i in range(n):
        answer = "no final answer" if i == 5 else f"{i} + {i} = {2 * i}\n#### {2 * i:,}"
        yield i, {"question": f"Ünï {i} + {i}?", "answer": answer}

  data_dir = tmp_path_factory.mktemp("tfds")
  ZppoToyGsm(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return data_dir


def test_tfds_source_reads_locally_written_array_records(tfds_dir):
  name, tmp_path = "zppo_toy_gsm", tfds_dir
  source = data.TfdsSource(name, split="train", data_dir=str(tmp_path),
                           answer_format="after_hashes")
  assert len(source) == 12
  errors = data.ErrorCounter()
  batches = list(data.make_dataset(source, batch_size=4, seed=1, num_epochs=1,
                                   on_error="skip", errors=errors, drop_remainder=False))
  questions = [q for batch in batches for q in batch]
  assert len(questions) == 11 and errors.skipped == 1
  assert re.fullmatch(rf"TFDS {name}/train record \d+: field 'answer': no '####' before the "
                      r"final answer", errors.last)
  for q in questions:
    i = int(q.question.split()[1])
    assert q.id == f"{name}/train/{q.id.rsplit('/', 1)[1]}"
    assert rewards.is_correct(f"</think>\\boxed{{{2 * i}}}", q.answer), (q, i)
  # with on_error="raise" the bad record stops the epoch, named
  with pytest.raises(data.DataError, match=rf"TFDS {name}/train record \d+: field 'answer'"):
    list(data.make_dataset(source, batch_size=4, num_epochs=1))
  # a second split, and the same shuffled order from the same seed
  assert len(data.TfdsSource(name, split="test", data_dir=str(tmp_path),
                             answer_format="after_hashes")) == 3
  again = data.make_dataset(source, batch_size=4, seed=1, num_epochs=1, on_error="skip",
                            drop_remainder=False)
  assert _ids(again) == _ids(batches)


def test_tfds_source_errors_name_the_dataset_and_fields(tfds_dir, tmp_path):
  name = "zppo_toy_gsm"
  with pytest.raises(ValueError, match=r"field\(s\) \['problem'\] not among its features "
                                       r"\['answer', 'question'\]"):
    data.TfdsSource(name, data_dir=str(tfds_dir), question_field="problem")
  with pytest.raises(ValueError, match="answer_format must be one of"):
    data.TfdsSource(name, data_dir=str(tfds_dir), answer_format="last_line")
  with pytest.raises(FileNotFoundError,
                     match=r"TFDS dataset 'gsm8k' split 'train' could not be opened from "
                           r"data_dir .*empty: Dataset gsm8k not found\. .*`tfds build gsm8k"):
    data.TfdsSource("gsm8k", data_dir=str(tmp_path / "empty"))
