"""Evaluation sets: specs, the row formats of GSM8K, MATH-500, AIME, MMLU, MMLU-Pro and ARC
(JSONL, Parquet and TFDS), and the held-out synthetic sets."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zppo_jax.rl import rewards
from zppo_jax.data import benchmarks, synthetic
from zppo_jax.data.records import DataError

ROWS = {
    "gsm8k": ({"question": "Tom has 3 apples and buys 4.", "answer": "3 + 4 = 7\n#### 7"},
              "7", "0"),
    "math500": ({"problem": "Find $x$ if $2x=1$.", "solution": "So $x=\\boxed{\\frac12}$.",
                 "answer": "\\frac{1}{2}", "unique_id": "test/algebra/1.json"},
                "\\frac{1}{2}", "test/algebra/1.json"),
    "aime": ({"ID": "2024-I-1", "Problem": "Find the remainder.", "Answer": 204},
             "204", "2024-I-1"),
    "mmlu": ({"question": "2 + 2 =", "subject": "math", "choices": ["3", "4", "5", "6"],
              "answer": 1}, "B", "math/0"),
    "mmlu_pro": ({"question_id": 70, "question": "Pick one.", "options": list("abcdefghij"),
                  "answer": "J", "answer_index": 9}, "J", "70"),
    "math_dataset": ({"question": "Solve 2*x = 4 for x.", "answer": "2"}, "2", "0"),
    "zppo": ({"id": "q", "question": "Compute 1 + 1.", "answer": "2"}, "2", "q"),
}


@pytest.mark.parametrize("fmt", sorted(ROWS))
@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_each_format_maps_its_fields(tmp_path, fmt, kind):
  row, gold, qid = ROWS[fmt]
  if kind == "jsonl":
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps(row) + "\n")
  else:
    path = tmp_path / "set.parquet"
    pq.write_table(pa.table({k: [v] for k, v in row.items()}), str(path))
  [q] = benchmarks.load(benchmarks.parse_spec(f"s={path};format={fmt}"))
  assert q.answer == gold and q.id == qid
  if fmt in ("mmlu", "mmlu_pro"):
    assert len(q.choices) == len(row.get("choices", row.get("options")))
    assert f"{gold}. " in q.question and "\\boxed{}" in q.question
    # the letter, boxed, is what the reward accepts
    assert rewards.is_correct(f"</think>The answer is \\boxed{{{gold}}}.", q.answer)
    assert not rewards.is_correct("</think>\\boxed{A}", q.answer)
  elif fmt != "zppo":
    assert q.question.endswith(benchmarks.MATH_INSTRUCTION)


def test_aime_other_layout_and_mmlu_pro_index():
  source = [({"id": 3, "problem": "P", "answer": "033"}, "r0")]
  formatted = benchmarks.FormattedSource(source, "aime")
  assert formatted.parse(*formatted[0]).answer == "033"
  pro = benchmarks.FormattedSource([({"question": "Q", "options": ["x", "y", "z"],
                                      "answer_index": 2}, "r0")], "mmlu_pro")
  assert pro.parse(*pro[0]).answer == "C"


def test_bad_rows_and_specs_name_what_is_wrong(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps({"question": "no answer here"}) + "\n"
                  + json.dumps({"question": "Q", "choices": ["a", "b"], "answer": 7}) + "\n")
  gsm = benchmarks.FormattedSource(benchmarks.sources.open_source(str(path)), "gsm8k")
  with pytest.raises(DataError, match=r"bad\.jsonl line 1: missing field 'answer'"):
    gsm.parse(*gsm[0])
  mmlu = benchmarks.FormattedSource(benchmarks.sources.open_source(str(path)), "mmlu")
  with pytest.raises(DataError, match=r"bad\.jsonl line 2: answer 7 is outside the 2 options"):
    mmlu.parse(*mmlu[1])
  with pytest.raises(ValueError, match="must start with name=source"):
    benchmarks.parse_spec("tfds:gsm8k")
  with pytest.raises(ValueError, match=r"option 'limt=3' is not one of"):
    benchmarks.parse_spec("g=tfds:gsm8k;limt=3")
  with pytest.raises(ValueError, match="unknown format 'gsm'"):
    benchmarks.parse_spec("g=x.jsonl;format=gsm")
  with pytest.raises(ValueError, match=r"say which row format TFDS 'huggingface:x/y' is in"):
    benchmarks.load(benchmarks.parse_spec("h=tfds:huggingface:x/y"))


def test_tfds_arc_with_nested_choices(tmp_path):
  """An ARC-shaped TFDS dataset (choices = {text, label} sequences), written locally."""
  import tensorflow_datasets as tfds

  class ZppoToyArc(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "id": tfds.features.Text(), "question": tfds.features.Text(),
          "choices": tfds.features.Sequence({"text": tfds.features.Text(),
                                             "label": tfds.features.Text()}),
          "answerKey": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"test": self._generate_examples()}

    def _generate_examples(self):
      yield 0, {"id": "arc-0", "question": "Which is a gas?",
                "choices": {"text": ["rock", "steam", "ice"], "label": ["1", "2", "3"]},
                "answerKey": "2"}
      yield 1, {"id": "arc-1", "question": "Which is hot?",
                "choices": {"text": ["sun", "snow"], "label": ["A", "B"]}, "answerKey": "A"}

  ZppoToyArc(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  questions = benchmarks.load(benchmarks.parse_spec(
      f"arc=tfds:zppo_toy_arc;format=arc;data_dir={tmp_path}"))
  assert {q.id: q.answer for q in questions} == {"arc-0": "B", "arc-1": "A"}
  steam = next(q for q in questions if q.id == "arc-0")
  assert "B. steam" in steam.question and steam.choices == ("rock", "steam", "ice")


def test_synthetic_heldout_sets_are_unseen_and_fixed():
  heldout = benchmarks.load(benchmarks.parse_spec("h=synthetic:heldout;limit=40"),
                            level_weights=(0.5, 0.35, 0.15))
  assert len(heldout) == 40 and len({q.question for q in heldout}) == 40
  assert all(synthetic.is_heldout(q.question) for q in heldout)
  train = synthetic.ArithmeticSource(3000, seed=0, level_weights=(0.5, 0.35, 0.15))
  seen = {train.row(i)["question"] for i in range(len(train))}
  assert not seen & {q.question for q in heldout}
  # the same set for every run seed (the spec's own seed defaults to 0)
  assert heldout == benchmarks.load(benchmarks.parse_spec("h=synthetic:heldout;limit=40"),
                                    level_weights=(0.5, 0.35, 0.15))
  transfer = benchmarks.load(benchmarks.parse_spec("t=synthetic:transfer;limit=20"))
  assert {q.id.split("-")[1] for q in transfer} == set(synthetic.TRANSFER_FAMILIES)
  for q in transfer:  # never phrased like a training question, answers correct
    assert not q.question.startswith("Compute ") or q.question.count(" ") == 5
    expression = (q.question.removeprefix("Compute ").removeprefix("What is ").rstrip(".?")
                  .replace("plus", "+").replace("minus", "-").replace("times", "*"))
    assert str(eval(expression)) == q.answer  # noqa: S307 - our own generated arithmetic
