"""A synthetic visual task: the arithmetic questions of `data.synthetic`, drawn into an image.

The question text only says "Compute what the image shows."; the expression ("12+7") is drawn
in a 5x7 pixel font, one character to a 16x16 cell (one vision token of the tiny VLM's
8-pixel patches merged 2x2). Solving it takes reading the image, then the arithmetic the
tiny student already does: a worked solution first writes what it read. An image is named by
a key, `glyphs:<text>`, that `images.open_image` draws on demand: the buffer and checkpoints
hold the key, no files are written, and any host draws the same pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from zppo_jax.data import synthetic

SCHEME = "glyphs:"
CELL, SCALE = 16, 2          # pixels per character cell; font pixels per glyph pixel
QUESTION = "Compute what the image shows."
READ = "Write what the image shows."
# 5x7 glyphs, '#' = ink
FONT = {
    "0": (" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "),
    "1": ("  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "),
    "2": (" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"),
    "3": ("#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "),
    "4": ("   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "),
    "5": ("#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "),
    "6": ("  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "),
    "7": ("#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "),
    "8": (" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "),
    "9": (" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "),
    "+": ("     ", "  #  ", "  #  ", "#####", "  #  ", "  #  ", "     "),
    "-": ("     ", "     ", "     ", "#####", "     ", "     ", "     "),
    "*": ("     ", "# # #", " ### ", "#####", " ### ", "# # #", "     "),
}


def render(text: str) -> Image.Image:
  """`text` drawn black on white, one CELL x CELL cell per character; a character the font
  lacks is an error naming it."""
  unknown = sorted(set(text) - set(FONT))
  if not text or unknown:
    raise ValueError(f"{SCHEME}{text}: cannot draw {unknown or 'an empty text'} (the font has "
                     f"{''.join(FONT)})")
  pixels = np.full((CELL, CELL * len(text)), 255, np.uint8)
  top, left = (CELL - 7 * SCALE) // 2, (CELL - 5 * SCALE) // 2
  for i, char in enumerate(text):
    glyph = np.asarray([[c == "#" for c in row] for row in FONT[char]])
    ink = np.kron(glyph, np.ones((SCALE, SCALE), bool))
    cell = pixels[top:top + 7 * SCALE, i * CELL + left:i * CELL + left + 5 * SCALE]
    cell[ink] = 0
  return Image.fromarray(pixels).convert("RGB")


def open_key(reference: str) -> Image.Image | None:
  """The image a `glyphs:` key names, or None for a reference of another kind."""
  return render(reference[len(SCHEME):]) if reference.startswith(SCHEME) else None


def _expression(row: dict) -> str:
  return row["question"].removeprefix("Compute ").removesuffix(".")


def _seen(expression: str, solution: str) -> str:
  """`solution` that first says what the image shows."""
  return solution.replace("<think>\n", f"<think>\nThe image shows {expression}.\n", 1)


def _drawn(row: dict) -> dict:
  """An arithmetic row as its visual question: the expression moves into the image, and
  each solution first says what the image shows."""
  expression = _expression(row)
  return {**row, "id": "visual-" + row["id"], "question": QUESTION,
          "images": [SCHEME + expression.replace(" ", "")],
          "teacher_responses": [_seen(expression, r) for r in row.get("teacher_responses", [])]}


def _reviewed(row: dict, rng: np.random.Generator) -> dict:
  """A drawn row whose prompt also shows one to three candidate solutions in text (right or
  wrong, each saying what it read, in one of synthetic.REVIEW_FORMATS) and asks for the
  worked solution: how the VLM's SFT teaches it to read candidates beside an image, as
  ZPPO's BCQ/NCQ prompts will show them, without ever showing those prompts."""
  expression = _expression(row)
  a, op, b = expression.split()
  candidates = [_seen(expression, synthetic.ArithmeticSource.candidate(int(a), op, int(b), rng))
                for _ in range(1 + rng.integers(3))]
  question = synthetic.review_question(QUESTION, candidates,
                                       int(rng.integers(len(synthetic.REVIEW_FORMATS))))
  return {**_drawn(row), "id": "visual-" + row["id"] + "-review", "question": question,
          "teacher_responses": [_seen(expression, synthetic.worked(int(a), op, int(b)))]}


def _read(row: dict) -> dict:
  """A drawn row that asks only to read the image: the answer is the expression as drawn."""
  drawn = _drawn(row)
  expression = drawn["images"][0][len(SCHEME):]
  spaced = expression[0] + "".join(f" {c} " if c in "+-*" else c for c in expression[1:])
  return {**drawn, "id": drawn["id"] + "-read", "question": READ, "answer": expression,
          "teacher_responses": [f"<think>\nThe image shows {spaced}.\n</think>\nThe image "
                                f"shows $\\boxed{{{expression}}}$."]}


class VisualArithmeticSource(synthetic.ArithmeticSource):
  """`synthetic.ArithmeticSource`'s rows (the same levels, splits and solution styles), each
  drawn into an image (`_drawn`). With `read_fraction`, that share of rows asks only what the
  image shows (`_read`: how a model's SFT teaches it to read them); with `review_fraction`,
  that share of the other rows shows candidate solutions beside the image (`_reviewed`)."""
  kind = "visual arithmetic"

  def __init__(self, size: int, seed: int = 0, level_weights=(0.5, 0.35, 0.15),
               split: str = "train", styles: tuple[str, ...] = ("worked",),
               read_fraction: float = 0.0, review_fraction: float = 0.0):
    super().__init__(size, seed, level_weights, split, styles)
    for name, value in (("read_fraction", read_fraction), ("review_fraction", review_fraction)):
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"synthetic:visual {name} must be in [0, 1], got {value}")
    self.read_fraction, self.visual_review_fraction = float(read_fraction), float(review_fraction)

  def row(self, index: int) -> dict:
    row = super().row(index)
    if np.random.default_rng([self.seed, index, 3]).random() < self.read_fraction:
      return _read(row)
    review = np.random.default_rng([self.seed, index, 4])
    return _reviewed(row, review) if review.random() < self.visual_review_fraction else _drawn(row)
