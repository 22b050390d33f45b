"""The starting-point survey: its pure tallies by hand, and small surveys of the shipped
tiny students (text, and the VLM on image questions with an image held-out set) whose
figures agree with each other."""

import pytest

from zppo_jax import run_config, testbed


def test_levels_and_spread_by_hand():
  assert testbed.level_of("arith-0-17-L2") == "L2"
  assert testbed.level_of("arith-0-17-L3-review") == "L3"
  assert testbed.level_of("gsm8k-12") == "all"
  assert testbed.spread([0.0, 0.25, 1.0, 0.25], 4) == [1, 2, 0, 0, 1]
  levels = testbed.by_level(["a-L1", "b-L1", "c-L2"], [1.0, 0.5, 0.0])
  assert levels == {"L1": {"questions": 2, "accuracy": 0.75},
                    "L2": {"questions": 1, "accuracy": 0.0}}


@pytest.mark.parametrize("config_file", ["tiny.py", "tiny_vlm.py"])
def test_survey_of_the_tiny_student_is_consistent(config_file):
  config = run_config.config_module(config_file).get_config("")
  config.rollout.group_size = 4
  config.teacher.num_rollouts = 2
  vision = config.vision.enabled
  # the VLM's held-out set is of images too: the evaluator gets the run's images
  config.eval.update(benchmarks=("visual=synthetic:visual_heldout;limit=2",) if vision else (),
                     k=1)
  s = testbed.survey(config, num_questions=6)
  assert s["questions"] == 6 and sum(s["spread"]) == 6
  assert s["accuracy"] == pytest.approx(sum(i * n for i, n in enumerate(s["spread"])) / 24)
  assert sum(v["questions"] for v in s["by_level"].values()) == 6
  assert s["hard"] == sum(q["accuracy"] < config.buffer.threshold for q in s["per_question"])
  assert s["teacher_solved_hard"] <= s["hard"] and s["hard_at_zero"] <= s["hard"]
  assert s["entropy"] > 0 and 1 <= s["distinct_responses"] <= 4
  # a BCQ prompt per hard question the teacher solved (with a wrong rollout), an NCQ per other
  assert s["bcq"]["prompts"] == s["teacher_solved_hard"]
  assert s["ncq"]["prompts"] == s["hard"] - s["teacher_solved_hard"]
  markdown = testbed.markdown(s, "t")
  assert "| all | 6 |" in markdown and "BCQ:" in markdown
  if vision:
    assert 0 <= s["eval"]["eval/visual/avg@1"] <= 1
