"""Vision-language rows: images stored in Parquet (HF Image structs) and TFDS (Image features)
become references a question holds and reads back; the MathVista, ChartQA and MMMU row
formats; the drawn arithmetic task."""

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from zppo_jax.data import benchmarks, image_fields, images, sources, visual
from zppo_jax.data.records import DataError


def _png(seed: int, size=(20, 30)) -> tuple[bytes, np.ndarray]:
  pixels = np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="PNG")
  return out.getvalue(), pixels


def _struct(seed):
  return {"bytes": _png(seed)[0], "path": None}


def _load(path, fmt):
  return benchmarks.load(benchmarks.parse_spec(f"set={path};format={fmt}"))


def test_vlm_benchmark_rows_keep_references_and_read_the_pixels_back(tmp_path):
  mathvista = tmp_path / "mathvista.parquet"
  pq.write_table(pa.Table.from_pylist([
      {"pid": "1", "question": "Which is larger?", "choices": ["the cat", "the dog"],
       "answer": "the dog", "question_type": "multi_choice", "decoded_image": _struct(0),
       "image": "images/1.jpg"},
      {"pid": "2", "question": "How many bars?", "choices": None, "answer": "4",
       "question_type": "free_form", "decoded_image": _struct(1), "image": "images/2.jpg"}]),
      mathvista)
  choice, free = _load(mathvista, "mathvista")
  assert choice.answer == "B" and choice.choices == ("the cat", "the dog")
  assert "B. the dog" in choice.question and free.answer == "4" and not free.choices
  key, = free.images
  assert key.startswith("parquet:") and key.endswith("#1/decoded_image")
  np.testing.assert_array_equal(np.asarray(images.open_image(key)), _png(1)[1])

  chartqa = tmp_path / "chartqa.parquet"
  pq.write_table(pa.Table.from_pylist([{"query": "Peak year?", "label": ["2019"],
                                        "image": _struct(2)}]), chartqa)
  q, = _load(chartqa, "chartqa")
  assert q.answer == "2019" and q.question.startswith("Peak year?\n")
  np.testing.assert_array_equal(np.asarray(images.open_image(q.images[0])), _png(2)[1])

  mmmu = tmp_path / "mmmu.parquet"
  pq.write_table(pa.Table.from_pylist([
      {"id": "val_Art_1", "question": "Compare <image 1> and <image 2>.",
       "options": "['same', 'different']", "answer": "B", "question_type": "multiple-choice",
       "image_1": _struct(3), "image_2": _struct(4), "image_3": None}]), mmmu)
  q, = _load(mmmu, "mmmu")
  assert q.answer == "B" and len(q.images) == 2 and q.choices == ("same", "different")
  np.testing.assert_array_equal(np.asarray(images.open_image(q.images[1])), _png(4)[1])


def test_training_rows_with_stored_images_and_bad_keys(tmp_path):
  path = tmp_path / "train.parquet"
  pq.write_table(pa.Table.from_pylist([
      {"id": "a", "question": "What digit?", "answer": "7", "images": [_struct(5), _struct(6)]},
      {"id": "b", "question": "What digit?", "answer": "1",
       "images": [{"bytes": None, "path": "digits/1.png"}]}]), path)
  source = sources.ParquetSource(str(path))
  first, second = (sources.parse_row(*source[i]) for i in range(2))
  assert [r.rsplit("#", 1)[1] for r in first.images] == ["0/images/0", "0/images/1"]
  np.testing.assert_array_equal(np.asarray(images.open_image(first.images[1])), _png(6)[1])
  assert second.images == ("digits/1.png",)        # a stored path stays a path
  with pytest.raises(FileNotFoundError, match=r"image 'parquet:.*#9/images/0'"):
    images.open_image(first.images[0].replace("#0/", "#9/"))
  with pytest.raises(DataError, match="image field 'image' has neither bytes nor a path"):
    image_fields.to_references({"image": {"bytes": None, "path": None}}, lambda f, k: "", "row 3")


def test_tfds_image_features_become_keys(tmp_path):
  import tensorflow_datasets as tfds

  class ZppoToyCharts(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"query": tfds.features.Text(), "label": tfds.features.Text(),
           # an image as TFDS decodes it (a uint8 array): tfds.features.Image itself needs
           # TensorFlow to encode, which the project does not install
           "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8,
                                         encoding="zlib")}))

    def _split_generators(self, dl_manager):
      return {"test": self._generate_examples()}

    def _generate_examples(self):
      for i in range(3):
        yield i, {"query": f"Value {i}?", "label": str(i), "image": _png(10 + i)[1]}

  ZppoToyCharts(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  questions = benchmarks.load(benchmarks.parse_spec(
      f"charts=tfds:zppo_toy_charts;format=chartqa;data_dir={tmp_path}"))
  assert sorted(q.answer for q in questions) == ["0", "1", "2"]
  for q in questions:  # each record's image, by its key
    assert q.images[0].startswith("tfds:zppo_toy_charts@test@")
    np.testing.assert_array_equal(np.asarray(images.open_image(q.images[0])),
                                  _png(10 + int(q.answer))[1])


def test_drawn_arithmetic_questions_are_read_from_their_keys():
  source = visual.VisualArithmeticSource(16, seed=3, styles=("worked", "direct"))
  for i in range(16):
    row = source.row(i)
    key, = row["images"]
    expression = key[len(visual.SCHEME):]
    assert row["question"] == visual.QUESTION
    assert all(r.startswith("<think>\nThe image shows ") for r in row["teacher_responses"])
    image = np.asarray(images.open_image(key))
    assert image.shape == (visual.CELL, visual.CELL * len(expression), 3)
    # the same key draws the same pixels; another expression other pixels
    np.testing.assert_array_equal(image, np.asarray(images.open_image(key)))
  a, b = (np.asarray(visual.render(t)) for t in ("12+7", "12+8"))
  assert (a[:, :3 * visual.CELL] == b[:, :3 * visual.CELL]).all() and (a != b).any()
  with pytest.raises(ValueError, match=r"glyphs:1/2: cannot draw \['/'\]"):
    images.open_image("glyphs:1/2")
  held = visual.VisualArithmeticSource(8, split="heldout")
  assert all(r["id"].startswith("visual-arith-heldout") for r in map(held.row, range(8)))


def test_the_drawn_held_out_set_has_as_many_questions_as_asked():
  """Every drawn question has the same text: they differ by their image."""
  questions = benchmarks.load(benchmarks.parse_spec("v=synthetic:visual_heldout;limit=32"))
  assert len(questions) == 32 == len({q.images for q in questions})


def test_reading_rows_ask_what_the_image_shows():
  from zppo_jax.rl import rewards
  source = visual.VisualArithmeticSource(64, read_fraction=0.5)
  rows = [source.row(i) for i in range(64)]
  read = [r for r in rows if r["question"] == visual.READ]
  assert 16 < len(read) < 48
  for r in read:   # the gold is the drawing itself, and the solution says it
    assert r["answer"] == r["images"][0][len(visual.SCHEME):] and r["id"].endswith("-read")
  grader = rewards.Grader()
  assert grader.rewards([r["teacher_responses"][0] for r in read],
                        [r["answer"] for r in read]).min() == 1.0
  with pytest.raises(ValueError, match="read_fraction must be in"):
    visual.VisualArithmeticSource(4, read_fraction=2.0)


def test_review_rows_show_candidates_beside_the_image():
  """The VLM student's SFT shows it text candidates beside the image (as BCQ/NCQ prompts
  will), in formats that are not ZPPO's; the question, its image and its gold stay those of
  the drawn row, and the target is the right worked solution."""
  from zppo_jax.rl import prompts, rewards
  plain = visual.VisualArithmeticSource(64, read_fraction=0.25)
  source = visual.VisualArithmeticSource(64, read_fraction=0.25, review_fraction=0.5)
  rows, plain_rows = [source.row(i) for i in range(64)], [plain.row(i) for i in range(64)]
  review = [(r, p) for r, p in zip(rows, plain_rows) if r["id"].endswith("-review")]
  assert 8 < len(review) < 40
  # reading rows stay where they were; review rows replace drawn rows only
  assert [r["question"] == visual.READ for r in rows] == \
      [p["question"] == visual.READ for p in plain_rows]
  grader = rewards.Grader()
  for r, p in review:
    assert r["images"] == p["images"] and r["answer"] == p["answer"]
    assert r["id"] == p["id"] + "-review" and visual.QUESTION in r["question"]
    assert "### Response" not in r["question"]
    assert prompts.BCQ_INSTRUCTION not in r["question"] and prompts.NCQ_INSTRUCTION not in r["question"]
    expression = p["images"][0][len(visual.SCHEME):]
    spaced = expression[0] + "".join(f" {c} " if c in "+-*" else c for c in expression[1:])
    # every candidate says what it read; the target reads it and is right
    assert r["question"].count(f"The image shows {spaced}.") >= 1
    target, = r["teacher_responses"]
    assert target.startswith(f"<think>\nThe image shows {spaced}.\n")
    assert target.count("\n") > 3   # worked, step by step (also for a student's "direct" style)
    assert grader.rewards([target], [r["answer"]])[0] == 1.0
  with pytest.raises(ValueError, match="review_fraction must be in"):
    visual.VisualArithmeticSource(4, review_fraction=-0.1)
