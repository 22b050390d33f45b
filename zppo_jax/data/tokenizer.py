"""`tokenizer.json` and the Qwen3.5 chat format.

Prompts are rendered by the checkpoint's own chat template (`chat_template.jinja`, or the
`chat_template` field of `tokenizer_config.json`) when its directory has one, so official
weights see exactly the official prompts; otherwise by `render_chat`, the text-only part of
the Qwen3.5 template written out in Python (the project's tiny tokenizer has no template).
Special-token ids are looked up by name, never assumed, so one code path serves the
248k-token official vocabulary and the tiny one.

Text that comes from a dataset or a model (questions, quoted candidates, responses) is encoded
as plain text: a special-token string inside it, such as `<|im_end|>\n<|im_start|>assistant`,
gets the ids of its characters, never the control token, so it cannot end or open a turn. The
ids of `<|im_start|>`, `<|im_end|>` and the generation prompt come only from the template
(`encode_chat`); a response keeps its think tags, which the model emits itself (`encode`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence

import tokenizers

TIMESTAMP = re.compile(r"<\d+\.\d seconds>")   # a video frame's time in a prompt (video.py)


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# a vision-language tokenizer's: an image is <|vision_start|> <|image_pad|>... <|vision_end|>
VISION_START, IMAGE_PAD, VIDEO_PAD, VISION_END = ("<|vision_start|>", "<|image_pad|>",
                                                  "<|video_pad|>", "<|vision_end|>")
REQUIRED_TOKENS = (ENDOFTEXT, IM_START, IM_END, THINK_OPEN, THINK_CLOSE)
ROLES = ("system", "user", "assistant")
# What the generation prompt opens the assistant turn with, by thinking mode. With thinking,
# the student's sampled tokens continue inside `<think>`.
GENERATION_PREFIX = {True: f"{THINK_OPEN}\n", False: f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"}


def _check_messages(messages: Sequence[Mapping]) -> int:
  """Index of the last user message, after checking roles and order like the official
  template (which refuses a conversation without a user query)."""
  last_user = -1
  for i, message in enumerate(messages):
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
      raise ValueError(f"chat message {i}: role must be one of {ROLES}, got {role!r}")
    if not isinstance(content, str):
      raise ValueError(f"chat message {i} ({role}): content must be a string, got "
                       f"{type(content).__name__}")
    if role == "system" and i:
      raise ValueError(f"chat message {i}: a system message must come first")
    if role == "user":
      last_user = i
  if last_user < 0:
    raise ValueError("chat messages: no user query found")
  return last_user


def _split_reasoning(message: Mapping) -> tuple[str, str]:
  """(reasoning, answer) of an assistant message: its `reasoning_content`, or the text
  before `</think>` in its content."""
  content = message["content"]
  reasoning = message.get("reasoning_content")
  if isinstance(reasoning, str):
    return reasoning.strip(), content.strip()
  if THINK_CLOSE in content:
    before, after = content.split(THINK_CLOSE, 1)[0], content.rsplit(THINK_CLOSE, 1)[1]
    return before.rsplit(THINK_OPEN, 1)[-1].strip(), after.strip()
  return "", content.strip()


def render_chat(messages: Sequence[Mapping], add_generation_prompt: bool = True,
                enable_thinking: bool = True) -> str:
  """Qwen3.5 chat text of `messages` (dicts with `role` in system/user/assistant, `content`,
  optional `reasoning_content`). Assistant turns after the last user query keep their
  reasoning in `<think>` blocks; earlier ones keep only their answer, as in the official
  template. The generation prompt opens the assistant turn (and, without thinking, an
  empty `<think>` block)."""
  last_user = _check_messages(messages)
  parts = []
  for i, message in enumerate(messages):
    role = message["role"]
    if role != "assistant":
      parts.append(f"{IM_START}{role}\n{message['content'].strip()}{IM_END}\n")
      continue
    reasoning, answer = _split_reasoning(message)
    if i > last_user:
      answer = f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{answer}"
    parts.append(f"{IM_START}assistant\n{answer}{IM_END}\n")
  if add_generation_prompt:
    parts.append(f"{IM_START}assistant\n{GENERATION_PREFIX[bool(enable_thinking)]}")
  return "".join(parts)


def _read_chat_template(directory: str) -> str | None:
  """The checkpoint's chat template: chat_template.jinja, else tokenizer_config.json's."""
  jinja_path = os.path.join(directory, "chat_template.jinja")
  if os.path.isfile(jinja_path):
    with open(jinja_path, encoding="utf-8") as f:
      return f.read()
  config_path = os.path.join(directory, "tokenizer_config.json")
  if not os.path.isfile(config_path):
    return None
  with open(config_path, encoding="utf-8") as f:
    try:
      template = json.load(f).get("chat_template")
    except json.JSONDecodeError as e:
      raise ValueError(f"{config_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
  if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
    template = {t.get("name"): t.get("template") for t in template}.get("default")
  if template is not None and not isinstance(template, str):
    raise ValueError(f"{config_path}: chat_template must be a string or a list of named "
                     f"templates with a 'default'")
  return template


def _compile_template(source: str):
  """A sandboxed jinja2 template, with the globals Hugging Face chat templates rely on."""
  import jinja2.sandbox

  def raise_exception(message):
    raise ValueError(f"chat template: {message}")

  env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
  env.filters["tojson"] = lambda value, indent=None, **_: json.dumps(
      value, ensure_ascii=False, indent=indent)
  env.globals["raise_exception"] = raise_exception
  return env.from_string(source)


def _splitter(tokens) -> re.Pattern:
  """Splits text at `tokens` (longest first), keeping them: text at even indices, tokens at
  odd ones."""
  return re.compile("(" + "|".join(map(re.escape, sorted(tokens, key=len, reverse=True))) + ")")


class Tokenizer:
  """A Hugging Face `tokenizers` tokenizer with the ids and chat format the trainer needs."""

  def __init__(self, backend: tokenizers.Tokenizer, chat_template: str | None = None,
               name: str = "tokenizer"):
    self.backend, self.name = backend, name
    self.chat_template = chat_template
    self._template = None if chat_template is None else _compile_template(chat_template)
    ids = {token: backend.token_to_id(token) for token in REQUIRED_TOKENS}
    missing = [token for token, i in ids.items() if i is None]
    if missing:
      raise ValueError(f"{name}: special token(s) {missing} missing; a Qwen3.5 tokenizer.json "
                       f"defines all of {list(REQUIRED_TOKENS)}")
    self.endoftext_id, self.im_start_id, self.im_end_id = (
        ids[ENDOFTEXT], ids[IM_START], ids[IM_END])
    self.think_id, self.think_end_id = ids[THINK_OPEN], ids[THINK_CLOSE]
    # The same pipeline without the added tokens: whatever text it gets, it yields no special
    # token (`encode_special_tokens` would still match the tokens not flagged special).
    self._plain = tokenizers.Tokenizer(backend.model)
    self._plain.normalizer = backend.normalizer
    self._plain.pre_tokenizer = backend.pre_tokenizer
    self._specials = _splitter({*REQUIRED_TOKENS,
                                *(t.content for t in backend.get_added_tokens_decoder().values())})
    self._think_tags = _splitter((THINK_OPEN, THINK_CLOSE))

  @classmethod
  def load(cls, path: str, use_checkpoint_template: bool = True) -> Tokenizer:
    """From a checkpoint directory (or a tokenizer.json path)."""
    directory, file = (path, os.path.join(path, "tokenizer.json")) if os.path.isdir(path) else (
        os.path.dirname(path), path)
    if not os.path.isfile(file):
      raise FileNotFoundError(f"tokenizer file {file} does not exist")
    try:
      backend = tokenizers.Tokenizer.from_file(file)
    except Exception as e:  # the Rust loader raises a bare Exception
      raise ValueError(f"{file}: not a valid tokenizer.json ({e})") from None
    template = _read_chat_template(directory) if use_checkpoint_template else None
    return cls(backend, template, name=file)

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  @property
  def stop_token_ids(self) -> tuple[int, ...]:
    """Tokens that end an assistant turn."""
    return (self.im_end_id, self.endoftext_id)

  def _encode_split(self, rows: Sequence[Sequence[str]]) -> list[list[int]]:
    """Ids of texts split by a `_splitter`: the odd pieces are special tokens, the even ones
    plain text (encoded alone, as the backend encodes the text between added tokens)."""
    plain = iter(self._plain.encode_batch([p for row in rows for p in row[::2]],
                                          add_special_tokens=False))
    out = []
    for row in rows:
      ids = []
      for j, piece in enumerate(row):
        ids += next(plain).ids if j % 2 == 0 else [self.backend.token_to_id(piece)]
      out.append(ids)
    return out

  def encode(self, text: str) -> list[int]:
    """Ids of a response as a sampler emits them after the generation prompt: its think tags
    are tokens; any other special-token string (`<|im_end|>`, `<|im_start|>`, ...) is plain
    text, so a quoted or imitated response cannot end its turn or open another."""
    return self.encode_batch([text])[0]

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._encode_split([self._think_tags.split(t) for t in texts])

  def count_tokens(self, text: str) -> int:
    """Tokens `text` takes inside a chat message, where every special-token string is plain
    text: the counter of BCQ/NCQ budgets."""
    return len(self._plain.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

  def decode_batch(self, rows: Sequence[Sequence[int]],
                   skip_special_tokens: bool = False) -> list[str]:
    return self.backend.decode_batch([list(r) for r in rows],
                                     skip_special_tokens=skip_special_tokens)

  def apply_chat_template(self, messages: Sequence[Mapping], add_generation_prompt: bool = True,
                          enable_thinking: bool = True) -> str:
    """Chat text: the checkpoint's template if it has one, else `render_chat`."""
    if self._template is None:
      return render_chat(messages, add_generation_prompt, enable_thinking)
    _check_messages(messages)
    return self._template.render(messages=[dict(m) for m in messages],
                                 add_generation_prompt=add_generation_prompt,
                                 enable_thinking=enable_thinking, tools=None)

  def _defuse(self, message: Mapping, mark: str) -> dict:
    """`message` with `mark` inside each special-token string of its text, so that none of
    them reads as a token; an assistant's content keeps the think tags that the template
    splits its reasoning at."""
    assistant, out = message.get("role") == "assistant", dict(message)
    for key in ("content", "reasoning_content"):
      keep = (THINK_OPEN, THINK_CLOSE) if assistant and key == "content" else ()
      if isinstance(out.get(key), str):
        out[key] = self._specials.sub(
            lambda m: m[0] if m[0] in keep else m[0][0] + mark + m[0][1:], out[key])
    return out

  def encode_chat(self, messages: Sequence[Mapping], add_generation_prompt: bool = True,
                  enable_thinking: bool = True, splice: Mapping[str, str] | None = None
                  ) -> list[int]:
    """Ids of the `apply_chat_template` text in which only the template's own special tokens
    are tokens: a special-token string inside a message (a question, a quoted candidate, a
    system prompt) is plain text, so it cannot end the turn or open another.

    The template is rendered a second time with the messages' special-token strings broken
    by a mark no text holds; the whole tokens left are the template's. `splice` maps a
    string of a message (a sentinel no text holds) to trusted text put in its place after
    that, whose special tokens stay tokens: the vision placeholders of a prompt's images."""
    text = self.apply_chat_template(messages, add_generation_prompt, enable_thinking)
    mark = "\ue000"
    while mark in text:
      mark += "\ue000"
    marked = self.apply_chat_template([self._defuse(m, mark) for m in messages],
                                      add_generation_prompt, enable_thinking)
    if marked.replace(mark, "") != text:
      raise ValueError(f"{self.name}: the chat template alters message text around special-token "
                       "strings, so its own tokens cannot be told from the messages'")
    for sentinel, trusted in (splice or {}).items():
      if marked.count(sentinel) != 1:
        raise ValueError(f"{self.name}: the chat template repeats or drops message text, so "
                         "the vision placeholders have no one place")
      marked = marked.replace(sentinel, trusted)
    pieces = self._specials.split(marked)
    return self._encode_split([[p if j % 2 else p.replace(mark, "")
                                for j, p in enumerate(pieces)]])[0]

  def encode_prompt(self, user: str, system: str | None = None,
                    enable_thinking: bool = True, vision: str = "") -> list[int]:
    """Ids of a one-question chat, ending with the generation prompt: what the sampler gets.
    Special-token strings in `user` and `system` are plain text (see `encode_chat`).
    `vision`: the placeholder text of the question's images and videos
    (`images.placeholder`, `video.placeholder`: vision tokens, and a video's frames' timestamps),
    put before the question as the Qwen processor does; its vision tokens are tokens."""
    if vision:
      missing = [t for t in set(self._specials.split(vision)[1::2]) | {VISION_START, VISION_END}
                 if self.backend.token_to_id(t) is None]
      if missing or TIMESTAMP.sub("", self._specials.sub("", vision)):
        raise ValueError(f"{self.name}: no token for {sorted(missing) or vision[:40]!r}; a "
                         "vision-language tokenizer defines the vision tokens")
      sentinel = "\ue001"
      while sentinel in user or sentinel in (system or ""):
        sentinel += "\ue001"
      user = sentinel + user
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}]
    return self.encode_chat(messages, True, enable_thinking,
                            {sentinel: vision} if vision else None)
