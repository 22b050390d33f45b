"""The tiny vision-language models of configs/tiny_vlm.py, grown from the tiny text ones.

A Qwen3.5 repository is a vision-language model: `Qwen3_5ForConditionalGeneration`, a vision
tower beside the text decoder, a tokenizer with the vision tokens and a processor config.
`grow` makes one of those from a tiny text checkpoint: the tokenizer gains
<|vision_start|>, <|image_pad|>, <|video_pad|> and <|vision_end|> (after the text tokens, so
every text id keeps its meaning), the embeddings gain rows for them, and a small random tower
(8-pixel patches: a 16x16 cell of `data.visual`'s drawings is one vision token) is attached.
configs/tiny_vlm_sft.py then teaches the pair to read the drawn questions.

    python -m zppo_jax.tiny_vlm --out /tmp/tiny_vlm_grown   # <out>/student, <out>/teacher
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import tokenizers

from zppo_jax.data import tokenizer as tokenizer_lib
from zppo_jax.models import qwen3_5

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
VISION_TOKENS = (tokenizer_lib.VISION_START, tokenizer_lib.IMAGE_PAD, tokenizer_lib.VIDEO_PAD,
                 tokenizer_lib.VISION_END)
VOCAB_MULTIPLE = 8
# HF vision_config fields (out_hidden_size: the text model's width, set by `grow`)
TOWER = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
             num_position_embeddings=64, patch_size=8, temporal_patch_size=2,
             spatial_merge_size=2, in_channels=3, hidden_act="gelu_pytorch_tanh")
# preprocessor_config.json: pixel bounds that keep a drawn question at its own size
PROCESSOR = dict(image_processor_type="Qwen2VLImageProcessor", patch_size=8,
                 temporal_patch_size=2, merge_size=2, min_pixels=16 * 16,
                 max_pixels=16 * 16 * 64, image_mean=[0.48145466, 0.4578275, 0.40821073],
                 image_std=[0.26862954, 0.26130258, 0.27577711])
# video_preprocessor_config.json: clips of 2-8 frames of a drawn question's size
VIDEO_PROCESSOR = dict(video_processor_type="Qwen3VLVideoProcessor", patch_size=8,
                       temporal_patch_size=2, merge_size=2, fps=2.0, min_frames=2,
                       max_frames=8, size=dict(shortest_edge=2 * 16 * 16,
                                               longest_edge=8 * 16 * 64),
                       image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def vision_tokenizer(text_dir: str) -> tokenizers.Tokenizer:
  """The text checkpoint's tokenizer with the vision tokens appended as special tokens."""
  tok = tokenizers.Tokenizer.from_file(os.path.join(text_dir, "tokenizer.json"))
  tok.add_special_tokens(list(VISION_TOKENS))
  return tok


def grow(text_dir: str, out_dir: str, seed: int = 0) -> str:
  """A vision-language checkpoint in `out_dir` from the text checkpoint `text_dir`: its
  weights, embeddings extended for the vision tokens, a random tower; returns `out_dir`."""
  text_config, params = qwen3_5.load_hf_checkpoint(text_dir)
  tok = vision_tokenizer(text_dir)
  ids = {t: tok.token_to_id(t) for t in VISION_TOKENS}
  vocab = -(-tok.get_vocab_size(with_added_tokens=True) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
  text = json.loads(text_config.hf_json)
  text.update(vocab_size=vocab)
  hf = {"model_type": "qwen3_5", "architectures": ["Qwen3_5ForConditionalGeneration"],
        "text_config": text, "tie_word_embeddings": text_config.tie_word_embeddings,
        "vision_config": {**TOWER, "model_type": "qwen3_5", "out_hidden_size":
                          text_config.hidden_size},
        "image_token_id": ids[tokenizer_lib.IMAGE_PAD],
        "video_token_id": ids[tokenizer_lib.VIDEO_PAD],
        "vision_start_token_id": ids[tokenizer_lib.VISION_START],
        "vision_end_token_id": ids[tokenizer_lib.VISION_END]}
  config = qwen3_5.from_hf_dict(hf, source=f"{out_dir} (grown from {text_dir})")
  key_embed, key_head, key_tower = jax.random.split(jax.random.key(seed), 3)
  extra = vocab - text_config.vocab_size

  def extend(table, key):  # new rows drawn like the initialisation's
    return jnp.concatenate([table, 0.02 * jax.random.normal(key, (extra, table.shape[1]),
                                                             table.dtype)])

  params = dict(params, embed=extend(params["embed"], key_embed),
                visual=qwen3_5.vision_init(config, key_tower))
  if "lm_head" in params:
    params["lm_head"] = extend(params["lm_head"].T, key_head).T
  qwen3_5.save_hf_checkpoint(out_dir, config, params)
  tok.save(os.path.join(out_dir, "tokenizer.json"), pretty=False)
  for name, doc in (("preprocessor_config.json", PROCESSOR),
                    ("video_preprocessor_config.json", VIDEO_PROCESSOR)):
    with open(os.path.join(out_dir, name), "w") as f:
      json.dump(doc, f, indent=2)
  return out_dir


def main(argv):
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="/tmp/tiny_vlm_grown")
  args = parser.parse_args(argv)
  for role in ("student", "teacher"):
    print(grow(os.path.join(ASSETS, f"tiny_{role}"), os.path.join(args.out, role)))


if __name__ == "__main__":
  main(sys.argv[1:])
