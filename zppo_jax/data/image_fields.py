"""Images stored inside dataset rows, as references: a question holds a key naming where its
image lives, never the pixels (the replay buffer and checkpoints hold strings), and the key
is read again when a prompt needs the image.

Rows carry images as Hugging Face `Image` structs in Parquet ({"bytes": ..., "path": ...},
how `datasets` writes MathVista, ChartQA, MMMU) or as TFDS `Image` features (uint8 arrays).
`to_references` turns each into a key: `parquet:<file>#<row>/<column>[/<k>]` or
`tfds:<name>@<split>@<data_dir>#<record>/<feature>[/<k>]` (a struct with a path and no bytes
becomes that path). `open_key` reads a key back, the source opened once per process.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image

from zppo_jax.data.records import DataError

SCHEMES = ("parquet:", "tfds:")


def is_image(value) -> bool:
  """An image value of a row: a HF Image struct, or an [H, W, C] uint8 array (TFDS)."""
  if isinstance(value, dict):
    return "bytes" in value and set(value) <= {"bytes", "path"}
  return isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3


def to_references(row: dict, key, where: str) -> dict:
  """`row` with each image field (or list of images) replaced by references; `key(field,
  k)` makes the key of the k-th image of a field (k None: a single image)."""
  out = dict(row)
  for field, value in row.items():
    if is_image(value):
      out[field] = _reference(value, key(field, None), where, field)
    elif isinstance(value, (list, tuple)) and value and all(is_image(v) for v in value):
      out[field] = [_reference(v, key(field, k), where, f"{field}[{k}]")
                    for k, v in enumerate(value)]
  return out


def _reference(value, key: str, where: str, field: str) -> str:
  if isinstance(value, dict) and not value.get("bytes"):
    if not value.get("path"):
      raise DataError(f"{where}: image field {field!r} has neither bytes nor a path")
    return str(value["path"])
  return key


def parquet_key(path: str, row: int, field: str, k: int | None) -> str:
  return f"parquet:{path}#{row}/{field}" + ("" if k is None else f"/{k}")


def tfds_key(name: str, split: str, data_dir: str | None, record: int, field: str,
             k: int | None) -> str:
  return f"tfds:{name}@{split}@{data_dir or ''}#{record}/{field}" + ("" if k is None else f"/{k}")


@functools.lru_cache(maxsize=8)
def _parquet(path: str):
  import pyarrow.parquet as pq
  return pq.read_table(path)


@functools.lru_cache(maxsize=8)
def _tfds(name: str, split: str, data_dir: str):
  import tensorflow_datasets as tfds
  return tfds.data_source(name, split=split, data_dir=data_dir or None)


def open_key(reference: str) -> Image.Image | None:
  """The image a `parquet:` / `tfds:` key names, or None for a reference of another kind;
  a key that names nothing readable is an error naming it."""
  if not reference.startswith(SCHEMES):
    return None
  source, _, place = reference.rpartition("#")
  parts = place.split("/")
  try:
    index, field, k = int(parts[0]), parts[1], int(parts[2]) if len(parts) > 2 else None
    if source.startswith("parquet:"):
      value = _parquet(source[len("parquet:"):]).slice(index, 1).column(field).to_pylist()[0]
    else:
      name, split, data_dir = source[len("tfds:"):].split("@")
      value = _tfds(name, split, data_dir)[index][field]
    value = value if k is None else value[k]
    if isinstance(value, dict):
      with Image.open(io.BytesIO(value["bytes"])) as image:
        image.load()
        return image
    return Image.fromarray(np.asarray(value, np.uint8))
  except Exception as e:  # a bad key: the file, the row, the field or the bytes
    raise FileNotFoundError(f"image {reference!r}: {type(e).__name__}: {e}") from None
