r"""The `\boxed{...}` notation: where a worked solution states its final answer, in dataset
solutions (MATH's gold) and in responses alike."""

from __future__ import annotations

import re

_BOXED_TOKENS = re.compile(r"\\(?:boxed|fbox)\s*\{|\\boxed (?P<bare>[^\s$]+)|\\[{}]|[{}]")


def boxes(text: str) -> list[tuple[int, int, str]]:
  r"""(start, end, content) of each complete `\boxed{...}` (or `\fbox{}`, or `\boxed 5`) in
  `text` holding no other box, in order; nested and escaped braces are allowed. One pass,
  linear time, whatever the nesting."""
  found = []
  open_boxes: list[list] = []  # [box start, content start, depth inside, holds a box]
  depth = 0
  for m in _BOXED_TOKENS.finditer(text):
    token = m.group(0)
    if m.group("bare") is not None:
      found.append((m.start(), m.end(), m.group("bare")))
      if open_boxes:
        open_boxes[-1][3] = True
    elif token.endswith("{") and token.startswith("\\") and len(token) > 2:
      depth += 1
      open_boxes.append([m.start(), m.end(), depth, False])
    elif token == "{":
      depth += 1
    elif token == "}":
      if open_boxes and open_boxes[-1][2] == depth:
        start, content_start, _, holds_box = open_boxes.pop()
        if not holds_box:
          found.append((start, m.end(), text[content_start:m.start()].strip()))
        if open_boxes:
          open_boxes[-1][3] = True
      depth -= 1
      if depth < 0:  # an unmatched close brace: forget everything open before it
        depth, open_boxes = 0, []
  return sorted(found)


def extract_boxed(text: str) -> str | None:
  r"""Content of the last complete `\boxed{...}` in `text`, or None."""
  found = boxes(text)
  return found[-1][2] if found else None
