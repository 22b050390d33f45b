"""Vision throughput (issue 22): the tower's encode time per image, zppo_jax (jitted) vs
transformers' Qwen3_5VisionModel (eager, torch) on the same random weights; and the
sampler's decode with image prompts vs text prompts of the same length.

    python benchmarks/vision_throughput.py [--tower 0.8b|tiny] [--side 448] [--images 4] \
        [--out benchmarks/vision_cpu.json]

`--tower 0.8b` is the real Qwen3.5-0.8B tower shape (12 blocks of width 768, patch 16,
merge 2) with random weights; an image of side x side pixels is (side/16)^2 patches.
The decode half uses the benchmark's "small" text model with a tiny tower in front.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np
from common import MODELS, best_time, write_result

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from zppo_jax.models import qwen3_5  # noqa: E402
from zppo_jax.models.qwen3_5 import config as config_lib  # noqa: E402
from zppo_jax.models.qwen3_5 import presets, vision  # noqa: E402
from zppo_jax.sampler import Sampler  # noqa: E402

TINY_TOWER = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                  num_position_embeddings=64, patch_size=16, temporal_patch_size=2,
                  spatial_merge_size=2)


def _tower_fields(name: str, out_hidden: int) -> dict:
  if name == "tiny":
    return dict(TINY_TOWER, out_hidden_size=out_hidden)
  return dict(presets.hf_config(name)["vision_config"], out_hidden_size=out_hidden)


def tower(args) -> dict:
  """Encode time of `--images` images of side x side pixels, ours and transformers'."""
  import torch
  from transformers.models.qwen3_5 import configuration_qwen3_5, modeling_qwen3_5
  torch.manual_seed(0)
  fields = _tower_fields(args.tower, 1024)
  model = modeling_qwen3_5.Qwen3_5VisionModel(
      configuration_qwen3_5.Qwen3_5VisionConfig(**fields)).eval()
  config = config_lib.vision_from_hf_dict(fields)
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params = vision.from_hf(config, lambda name: state[name])
  side = args.side // config.patch_size
  grids = [(1, side, side)] * args.images
  pixels = np.random.default_rng(0).normal(
      size=(args.images * side * side, config.patch_dim)).astype(np.float32)
  ours = best_time(lambda: np.asarray(vision.encode(config, params, pixels, grids)),
                   args.repeats)
  out = {"tower": args.tower, "image_side_px": args.side, "patches_per_image": side * side,
         "images": args.images, "zppo_jax_s_per_image": ours / args.images}
  if not args.no_peer:
    with torch.no_grad():
      theirs = best_time(lambda: model(torch.from_numpy(pixels), grid_thw=torch.tensor(grids)),
                         args.repeats)
    out["transformers_s_per_image"] = theirs / args.images
    out["speedup"] = theirs / ours
  return out


def decode(args) -> dict:
  """Decode tokens/s of the sampler after prompts with one image vs text prompts of the same
  token count (the image's tokens are placeholders in the text run)."""
  import torch
  import transformers
  torch.manual_seed(0)
  text = dict(MODELS["small"], vocab_size=4096)
  hf = transformers.Qwen3_5Config(text_config=text,
                                  vision_config=_tower_fields("tiny", text["hidden_size"]),
                                  image_token_id=4000, video_token_id=4001)
  model = transformers.Qwen3_5ForConditionalGeneration(hf).eval()
  with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)
    config, params = qwen3_5.load_hf_checkpoint(tmp, vision=True)
  side = args.side // 16
  grid = (1, side, side)
  n_vision = side * side // 4
  prompt = [5] * 8 + [4000] * n_vision + [6] * 8
  pixels = np.random.default_rng(1).normal(size=(side * side, 3 * 2 * 16 * 16)).astype(
      np.float32)
  sampler = Sampler(config)
  prompts, new = [prompt] * args.prompts, args.new_tokens
  settings = dict(max_new_tokens=new, temperature=1.0, num_samples=args.samples)

  def run(images):
    start = time.perf_counter()
    out = sampler.generate(params, prompts, images=images, **settings)
    return time.perf_counter() - start, sum(len(t) for t in out.tokens)

  with_images = [(pixels, [grid])] * args.prompts
  run(with_images), run(None)  # compile both
  image_s, image_tokens = min(run(with_images) for _ in range(args.repeats))
  text_s, text_tokens = min(run(None) for _ in range(args.repeats))
  return {"prompt_tokens": len(prompt), "vision_tokens_per_prompt": n_vision,
          "prompts": args.prompts, "samples": args.samples, "new_tokens": new,
          "image_prompts_tokens_per_s": image_tokens / image_s,
          "text_prompts_tokens_per_s": text_tokens / text_s,
          "image_over_text_time": image_s / text_s}


def main():
  from common import arguments
  parser = arguments(__doc__, "transformers' vision tower")
  parser.add_argument("--tower", default="0.8b", help="tiny, or a Qwen3.5 size")
  parser.add_argument("--side", type=int, default=448, help="image side in pixels")
  parser.add_argument("--images", type=int, default=4)
  parser.add_argument("--prompts", type=int, default=4)
  parser.add_argument("--samples", type=int, default=4)
  parser.add_argument("--new_tokens", type=int, default=64)
  args = parser.parse_args()
  write_result({"command": "python benchmarks/vision_throughput.py " + " ".join(sys.argv[1:]),
                "encode": tower(args), "decode": decode(args)}, args.out)


if __name__ == "__main__":
  main()
