"""The tiny vision-language default: the whole ZPPO loop with images on a 2-core CPU.

    python -m zppo_jax.train --config configs/tiny_vlm.py --workdir /tmp/zppo_vlm
    python -m zppo_jax.train --config configs/tiny_vlm.py:method=grpo_buffer --workdir /tmp/g

The student and teacher are the tiny VLMs shipped in zppo_jax/assets (configs/tiny_vlm_sft.py:
the tiny text models grown a vision tower, then taught to read the drawn arithmetic of
`data.visual`). Every prompt made of a question carries its image: the question's own, its
BCQ and NCQ prompts (candidates stay text) and the teacher's; the buffer holds the image
keys. Held-out sets: unseen drawn questions, and the same arithmetic asked in text (a
format the VLMs were not trained on here). Options as configs/tiny.py.
"""

import os

from zppo_jax import run_config


def get_config(arg=None):
  c = run_config.config_module("tiny.py").get_config(arg)
  c.name = c.name.replace("-tiny", "-tiny-vlm")
  c.student.path = os.path.join(run_config.TINY_DIR, "tiny_vlm_student")
  c.teacher.path = os.path.join(run_config.TINY_DIR, "tiny_vlm_teacher")
  # the tower frozen (vision.train_tower=True trains it); a drawn question (at most 7
  # characters) is at most 9 vision tokens with its start and end markers
  c.vision.update(enabled=True, max_tokens=16)
  c.data.source = "synthetic:visual"
  c.eval.update(benchmarks=("visual=synthetic:visual_heldout;limit=128",
                            "text=synthetic:heldout;limit=64"))
  return c
