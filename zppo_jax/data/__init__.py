"""Question datasets: records, sources (JSONL, Parquet, TFDS, synthetic tasks), the grain
pipeline, and the tokenizer with the Qwen3.5 chat format."""

from zppo_jax.data.pipeline import ErrorCounter, make_dataset
from zppo_jax.data.records import DataError, Question, parse_row
from zppo_jax.data.sources import JsonlSource, ParquetSource, TfdsSource, open_source
from zppo_jax.data.tokenizer import Tokenizer, render_chat
from zppo_jax.data.synthetic import ArithmeticSource, TransferSource
