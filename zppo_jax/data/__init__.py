"""Question datasets: records, sources (JSONL, Parquet, synthetic tasks) and the grain pipeline."""

from zppo_jax.data.pipeline import ErrorCounter, make_dataset
from zppo_jax.data.records import DataError, Question, parse_row
from zppo_jax.data.sources import JsonlSource, ParquetSource, open_source
from zppo_jax.data.synthetic import ArithmeticSource
