"""Hostile question files: every bad row is named (raise) or skipped and counted (skip), and a
file that cannot train (empty, nothing usable, colliding ids) fails when the dataset is made."""

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zppo_jax import data
from zppo_jax.data import benchmarks

GOOD = [{"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)}
        for i in range(6)]


def _write(path, lines: list[bytes]) -> str:
  path.write_bytes(b"".join(line + b"\n" for line in lines))
  return str(path)


def _rows(rows) -> list[bytes]:
  return [json.dumps(row).encode() for row in rows]


def _ids(batches):
  return [[q.id for q in batch] for batch in batches]


def _take(dataset, n):
  iterator = iter(dataset)
  return _ids(next(iterator) for _ in range(n))


def test_skipped_rows_are_counted_and_named_when_the_dataset_is_made(tmp_path, caplog):
  path = _write(tmp_path / "mixed.jsonl", _rows(GOOD[:3]) + [b"{not json"] + _rows(GOOD[3:])
                + [b'{"id": "x", "question": "no answer"}'])
  errors = data.ErrorCounter()
  with caplog.at_level(logging.WARNING):
    dataset = data.make_dataset(data.JsonlSource(path), batch_size=2, seed=4,
                                on_error="skip", errors=errors)
  assert errors.skipped == 2 and "mixed.jsonl line 8: missing field(s) ['answer']" in errors.last
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("mixed.jsonl line 4: not valid JSON" in w for w in warnings)
  assert any("mixed.jsonl line 8: missing field(s)" in w for w in warnings)
  assert any("skipped 2 malformed row(s) of 8" in w for w in warnings)
  batches = _take(dataset, 9)
  assert all(len(b) == 2 for b in batches)  # batches are made of good rows only: never short
  assert sorted(sum(batches[:3], [])) == [f"q{i}" for i in range(6)]  # epoch 1: each once


def test_many_skipped_rows_log_the_first_few_and_a_summary(tmp_path, caplog):
  path = _write(tmp_path / "noisy.jsonl", _rows(GOOD) + [b"[]"] * 50)
  errors = data.ErrorCounter()
  with caplog.at_level(logging.WARNING):
    data.make_dataset(data.JsonlSource(path), batch_size=2, on_error="skip", errors=errors)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert errors.skipped == 50 and len(warnings) == data.pipeline.LOGGED_ROWS + 1
  assert "noisy.jsonl line 7: expected an object" in warnings[0]
  assert "skipped 50 malformed row(s) of 56" in warnings[-1]


def test_skipping_hosts_still_split_the_one_host_batches(tmp_path):
  path = _write(tmp_path / "d.jsonl", [b"\xff"] + _rows(GOOD) + [b"7"] + _rows(
      [{**r, "id": f"r{i}"} for i, r in enumerate(GOOD)]))
  source = data.JsonlSource(path)
  one = _take(data.make_dataset(source, batch_size=4, seed=2, on_error="skip"), 6)
  hosts = [_take(data.make_dataset(source, batch_size=4, seed=2, on_error="skip", shard_index=i,
                                   shard_count=2), 6) for i in range(2)]
  assert [hosts[0][b] + hosts[1][b] for b in range(6)] == one
  assert all(len(b) == 4 for b in one)


def test_a_file_with_no_usable_question_is_an_error_naming_it(tmp_path):
  path = _write(tmp_path / "allbad.jsonl", [b"{oops"] * 8)
  errors = data.ErrorCounter()
  with pytest.raises(data.DataError, match=r"dataset file .*allbad\.jsonl: no usable question: "
                     r"all 8 rows are malformed \(first: .*allbad\.jsonl line 1: not valid JSON"):
    data.make_dataset(data.JsonlSource(path), batch_size=2, on_error="skip", errors=errors)
  assert errors.skipped == 8
  wrong = str(tmp_path / "wrong.parquet")
  pq.write_table(pa.table({"problem": ["1 + 1?", "2 + 2?"], "solution": ["2", "4"]}), wrong)
  with pytest.raises(data.DataError, match=r"dataset file .*wrong\.parquet: no usable question: "
                     r"all 2 rows are malformed \(first: .*wrong\.parquet row 0: missing "
                     r"field\(s\) \['id', 'question', 'answer'\] \(fields present: "
                     r"\['problem', 'solution'\]\)"):
    data.make_dataset(data.open_source(wrong), batch_size=2, on_error="skip")


@pytest.mark.parametrize("lines", [[], [b"", b"   ", b"\t"]], ids=["empty", "blank"])
def test_an_empty_file_is_an_error_naming_it(tmp_path, lines):
  path = _write(tmp_path / "empty.jsonl", lines)
  for on_error in data.pipeline.ON_ERROR:
    with pytest.raises(data.DataError, match=r"dataset file .*empty\.jsonl has no rows"):
      data.make_dataset(data.open_source(path), batch_size=2, on_error=on_error)
  parquet = str(tmp_path / "empty.parquet")
  pq.write_table(pa.table({"id": pa.array([], pa.string())}), parquet)
  with pytest.raises(data.DataError, match=r"dataset file .*empty\.parquet has no rows"):
    data.make_dataset(data.open_source(parquet), batch_size=2)


def test_a_line_that_is_not_utf8_is_named_or_skipped(tmp_path):
  path = _write(tmp_path / "latin1.jsonl", _rows(GOOD[:2]) + [
      '{"id": "café", "question": "1 + 1?", "answer": "2"}'.encode("latin-1")])
  with pytest.raises(data.DataError, match=r"latin1\.jsonl line 3: not valid UTF-8 \(byte 0xe9 "
                                           r"at offset 11\)"):
    data.make_dataset(data.JsonlSource(path), batch_size=2)
  errors = data.ErrorCounter()
  dataset = data.make_dataset(data.JsonlSource(path), batch_size=2, num_epochs=1,
                              on_error="skip", errors=errors)
  assert sorted(sum(_ids(dataset), [])) == ["q0", "q1"] and errors.skipped == 1
  # a byte-order mark (as some editors write) is still accepted
  bom = _write(tmp_path / "bom.jsonl", [b"\xef\xbb\xbf" + _rows(GOOD[:1])[0]])
  assert _ids(data.make_dataset(data.JsonlSource(bom), batch_size=1, num_epochs=1)) == [["q0"]]


def test_a_line_nested_too_deeply_is_named_or_skipped(tmp_path):
  path = _write(tmp_path / "deep.jsonl", _rows(GOOD[:2]) + [b"[" * 100_000])
  with pytest.raises(data.DataError, match=r"deep\.jsonl line 3: not valid JSON \(nested too "
                                           r"deeply\)"):
    data.make_dataset(data.JsonlSource(path), batch_size=2)
  errors = data.ErrorCounter()
  data.make_dataset(data.JsonlSource(path), batch_size=2, on_error="skip", errors=errors)
  assert errors.skipped == 1


def test_the_synthetic_source_is_not_scanned():
  """Its rows are valid and its ids unique by construction, and it may be huge."""
  batch = next(iter(data.make_dataset(data.ArithmeticSource(10**12), batch_size=4)))
  assert len({q.id for q in batch}) == 4


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_colliding_ids_are_an_error_naming_the_id_and_both_rows(tmp_path, on_error):
  same = _write(tmp_path / "same.jsonl", _rows(
      [{"id": "same", "question": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(8)]))
  with pytest.raises(data.DataError, match=r"same\.jsonl line 2: id 'same' is also the id of "
                                           r".*same\.jsonl line 1; question ids must be unique"):
    data.make_dataset(data.JsonlSource(same), batch_size=2, on_error=on_error)
  # a number and a string of the same digits are one id (ids are strings)
  mixed = _write(tmp_path / "mixed.jsonl", _rows(GOOD[:3]) + [b"oops"] + _rows(
      [{"id": 1, "question": "a", "answer": "1"}, {"id": "1", "question": "b", "answer": "2"}]))
  with pytest.raises(data.DataError, match=r"mixed\.jsonl line 6: id '1' is also the id of "
                                           r".*mixed\.jsonl line 5"):
    data.make_dataset(data.JsonlSource(mixed), batch_size=2, on_error="skip")
  parquet = str(tmp_path / "same.parquet")
  pq.write_table(pa.table({"id": ["a", "b", "a"], "question": ["x", "y", "z"],
                           "answer": ["1", "2", "3"]}), parquet)
  with pytest.raises(data.DataError, match=r"same\.parquet row 2: id 'a' is also the id of "
                                           r".*same\.parquet row 0"):
    data.make_dataset(data.open_source(parquet), batch_size=2, on_error=on_error)


def test_formatted_sources_scan_with_their_own_parser(tmp_path):
  """A training set in a benchmark format (`data.format`): rows are parsed by the format, and
  ids that the format derives (here `unique_id`) are checked too."""
  rows = [{"problem": f"p{i}", "answer": str(i), "unique_id": f"u{i % 3}"} for i in range(4)]
  path = _write(tmp_path / "m.jsonl", _rows(rows[:3]) + [b'{"problem": "no answer"}'])
  errors = data.ErrorCounter()
  source = benchmarks.FormattedSource(data.open_source(path), "math500")
  dataset = data.make_dataset(source, batch_size=3, num_epochs=1, on_error="skip", errors=errors)
  assert errors.skipped == 1 and sorted(sum(_ids(dataset), [])) == ["u0", "u1", "u2"]
  mmlu = _write(tmp_path / "mmlu.jsonl", _rows([
      {"question": "2 + 2?", "choices": ["3", "4"], "answer": 1},
      {"question": "1 + 1?", "choices": 2, "answer": 0}]))
  with pytest.raises(data.DataError, match=r"mmlu\.jsonl line 2: field 'choices' must be a list "
                                           r"of options, got int"):
    data.make_dataset(benchmarks.FormattedSource(data.open_source(mmlu), "mmlu"), batch_size=1)
  _write(tmp_path / "m.jsonl", _rows(rows))
  with pytest.raises(data.DataError, match=r"m\.jsonl line 4: id 'u0' is also the id of "
                                           r".*m\.jsonl line 1"):
    data.make_dataset(benchmarks.FormattedSource(data.open_source(path), "math500"),
                      batch_size=3)


def test_benchmark_sets_reject_colliding_ids(tmp_path):
  path = _write(tmp_path / "eval.jsonl", _rows(
      [{"id": 7, "question": "a", "answer": "1"}, {"id": "7", "question": "b", "answer": "2"}]))
  with pytest.raises(data.DataError, match=r"eval\.jsonl line 2: id '7' is also the id of "
                                           r".*eval\.jsonl line 1"):
    benchmarks.load(benchmarks.parse_spec(f"e={path}"))
  # only the rows within the limit count
  assert [q.id for q in benchmarks.load(benchmarks.parse_spec(f"e={path};limit=1"))] == ["7"]


def test_tfds_text_that_is_not_utf8_is_named_or_skipped(tmp_path):
  """TFDS Text features hold any bytes: a record that is not UTF-8 is a named bad row, read
  as questions or in a benchmark format."""
  import tensorflow_datasets as tfds

  class ZppoToyLatin1(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"question": tfds.features.Text(), "answer": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(4):
        yield i, {"question": "caf\xe9?".encode("latin-1") if i == 2 else f"{i} + {i}?",
                  "answer": f"#### {2 * i}"}

  ZppoToyLatin1(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  source = data.TfdsSource("zppo_toy_latin1", data_dir=str(tmp_path))
  with pytest.raises(data.DataError, match=r"TFDS zppo_toy_latin1/train record \d: field "
                                           r"'question': not valid UTF-8 \(byte 0xe9 at "
                                           r"offset 3\)"):
    data.make_dataset(source, batch_size=1)
  errors = data.ErrorCounter()
  data.make_dataset(source, batch_size=1, on_error="skip", errors=errors)
  assert errors.skipped == 1
  raw = data.TfdsSource("zppo_toy_latin1", data_dir=str(tmp_path), raw=True)
  with pytest.raises(data.DataError, match=r"record \d: field 'question': not valid UTF-8"):
    benchmarks.load(benchmarks.parse_spec(f"t=tfds:zppo_toy_latin1;split=train;format=gsm8k;"
                                          f"data_dir={tmp_path}"))
  formatted = benchmarks.FormattedSource(raw, "gsm8k")
  data.make_dataset(formatted, batch_size=1, on_error="skip", errors=errors)
  assert errors.skipped == 2
