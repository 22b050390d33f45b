"""The paper's methods as data: one entry each, read by the config builder and the trainer.

An entry says what a method needs and does; the trainer asks it (`get(config.method)`) and
nothing else in the package compares method or loss names. A new method or ablation is one
entry here (and, for a preset, a file under configs/); the ablation switches of an entry
(`zppo.bcq`, `zppo.ncq`, `buffer.enabled`, ...) stay config fields.

No JAX here: `run_config` builds configs from this table without importing it.
"""

from __future__ import annotations

import dataclasses

# What of the teacher a method needs.
NO_TEACHER = ""             # nothing
RESPONSES = "responses"     # correct responses to questions (the dataset's or the model's)
LOGPROBS = "logprobs"       # the teacher model's log-probs of the student's rollouts
# Whose sequences a method trains on.
STUDENT = "student"         # the student's rollouts (and its BCQ/NCQ rollouts)
TEACHER = "teacher"         # the teacher's responses to every question of the step


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  summary: str
  teacher: str = NO_TEACHER     # NO_TEACHER | RESPONSES | LOGPROBS
  buffer: bool = False          # the replay buffer is part of it (else the † option `buffer`)
  reformulates: bool = False    # BCQ/NCQ prompts of the hard questions, rolled out and trained
  teacher_in_group: bool = False  # a correct teacher response replaces a wrong rollout
  trains_on: str = STUDENT      # STUDENT | TEACHER
  advantage: str = "group"      # an estimator of losses.ADVANTAGES
  loss: str = "grpo"            # a loss of losses.POLICY_LOSSES (config.train.loss.name)

  @property
  def teacher_answers_all(self) -> bool:
    """The teacher answers every question of the step, not only the hard ones."""
    return self.trains_on == TEACHER


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("zppo", "GRPO with the replay buffer, plus BCQ/NCQ reformulations of the hard "
           "questions (the teacher in the prompt)", teacher=RESPONSES, buffer=True,
           reformulates=True),
    Method("grpo", "group-relative policy optimisation on the student's rollouts"),
    Method("grpo_buffer", "GRPO with the replay buffer", buffer=True),
    Method("grpo_teacher_response", "GRPO with the buffer; a correct teacher response stands "
           "in a hard question's group, off-policy", teacher=RESPONSES, buffer=True,
           teacher_in_group=True),
    Method("on_policy_distill", "the student's rollouts, scored by the teacher model (reverse "
           "KL per token)", teacher=LOGPROBS, loss="on_policy_distill"),
    Method("off_policy_distill", "next-token NLL on the teacher's correct responses",
           teacher=RESPONSES, trains_on=TEACHER, advantage="none", loss="off_policy_distill"),
)}


def get(name: str) -> Method:
  """The entry of `config.method`; an unknown name is an error listing the table."""
  if name not in METHODS:
    raise ValueError(f"config.method={name!r} is not a method of zppo_jax/rl/methods.py; "
                     f"choose one of {sorted(METHODS)}")
  return METHODS[name]


def check(method: Method, config) -> None:
  """Errors naming the config fields that contradict the method's entry."""
  if config.train.loss.name != method.loss:
    raise ValueError(f"config.train.loss.name={config.train.loss.name!r}, but method "
                     f"{method.name!r} trains with {method.loss!r}: a method with another loss "
                     "is another entry of zppo_jax/rl/methods.py")
  if (config.zppo.bcq or config.zppo.ncq) and not method.reformulates:
    raise ValueError(f"config.zppo.bcq/ncq are on, but method {method.name!r} builds no "
                     "BCQ/NCQ prompts: turn them off (or use method 'zppo')")
  if method.teacher and config.teacher.source == "none":
    raise ValueError(f"method {method.name!r} needs teacher {method.teacher}: set "
                     "config.teacher.source to " +
                     ("'model' and config.teacher.path" if method.teacher == LOGPROBS else
                      "'dataset' or 'model'"))
  if method.teacher == LOGPROBS and config.teacher.source != "model":
    raise ValueError(f"method {method.name!r} scores with the teacher model: set "
                     "config.teacher.source='model' and config.teacher.path")
  if not config.distill.student_rollouts and (method.trains_on != TEACHER
                                              or config.buffer.enabled):
    raise ValueError("config.distill.student_rollouts=False (pure SFT) needs a method that "
                     "trains on teacher responses (off_policy_distill) and "
                     "buffer.enabled=False")
