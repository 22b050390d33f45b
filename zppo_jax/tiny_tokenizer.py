"""The project's own small tokenizer, for the offline tiny default.

A byte-level BPE with Qwen3.5's pre-tokenizer (one digit a token, so arithmetic stays
learnable), NFC normalisation and the chat special tokens, trained on what the tiny run
shows its model: synthetic arithmetic questions in the chat format, their solutions, the
review rows of the student's SFT and BCQ/NCQ prompts. It is saved as a standard
`tokenizer.json`, so the tiny run loads it through the same `Tokenizer.load` as official
weights. Rebuild it with

    python -m zppo_jax.tiny_tokenizer [--out DIR] [--vocab_size N]
"""

from __future__ import annotations

import os
import sys

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from zppo_jax.rl import prompts
from zppo_jax.data import tokenizer as tokenizer_lib
from zppo_jax.data.synthetic import ArithmeticSource

# Qwen3.5's pre-tokenizer split: contractions, letter runs (with marks), single digits,
# punctuation runs, newlines, spaces.
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                 r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DEFAULT_DIR = os.path.join(os.path.dirname(__file__), "assets",
                           "tiny_tokenizer")
VOCAB_SIZE = 512  # an upper bound: the corpus yields fewer merges


def corpus(num_questions: int = 3000, seed: int = 0):
  """Training text: each synthetic question as a chat with its solutions (worked and direct,
  and a quarter of them as the tiny student's review rows), and BCQ/NCQ prompts that pair
  the worked solution with a wrong one."""
  source = ArithmeticSource(num_questions, seed=seed, split="all",  # one vocabulary for all
                            styles=("worked", "direct"), review_fraction=0.25)
  rng = np.random.default_rng(seed)
  for i in range(num_questions):
    row = source.row(i)
    solution = row["teacher_responses"][0]
    for response in row["teacher_responses"]:
      yield tokenizer_lib.render_chat([{"role": "user", "content": row["question"]},
                                       {"role": "assistant", "content": response}],
                                      add_generation_prompt=False)
    wrong = solution.replace(f"\\boxed{{{row['answer']}}}",
                             f"\\boxed{{{int(row['answer']) + 1}}}")
    if i % 4 == 0:
      yield prompts.bcq(row["question"], solution, wrong, rng)
    elif i % 4 == 1:
      yield prompts.ncq(row["question"], [wrong], rng)


def train(texts, vocab_size: int = VOCAB_SIZE) -> tokenizers.Tokenizer:
  """A byte-level BPE over `texts`, special tokens first (ids 0..4)."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(SPLIT_PATTERN), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(tokenizer_lib.REQUIRED_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  return tok


def build(out_dir: str = DEFAULT_DIR, vocab_size: int = VOCAB_SIZE) -> str:
  """Train and save `out_dir/tokenizer.json`; returns its path."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "tokenizer.json")
  train(corpus(), vocab_size).save(path, pretty=False)
  return path


def main(argv):
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=DEFAULT_DIR)
  parser.add_argument("--vocab_size", type=int, default=VOCAB_SIZE)
  args = parser.parse_args(argv)
  print(build(args.out, args.vocab_size))


if __name__ == "__main__":
  main(sys.argv[1:])
