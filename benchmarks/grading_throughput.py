"""Grading throughput: `rewards.Grader` against math-verify (`parse` + `verify`, the
field's common grader), side by side on the same (response, gold answer) pairs.

Two sets:
- *tiny*: the tiny default's own rollouts: the tiny student samples `--group` responses to
  each of `--questions` synthetic training questions (configs/tiny.py's rollout settings),
  graded against their gold answers. Groups repeat answers, as real rollouts do.
- *math*: long MATH-style responses built here, every pair distinct: ~`--chars` characters
  of reasoning in a thinking block, then a boxed answer against a gold answer of MATH's
  kinds (integers, fractions, decimals, surds, polynomials, intervals, tuples, sets,
  matrices, equations, words, choice letters); half in an equal other spelling, half wrong.

Reports answers/s for each grader and their ratio, the share of pairs that needed the
symbolic check, and how often the two graders agree (with examples of disagreement).
Symbolic verdicts are forgotten before every timed repeat, so each repeat grades as if it
saw the answers for the first time.

    python benchmarks/grading_throughput.py --out benchmarks/grading_cpu.json
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
from common import arguments, write_result

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from zppo_jax import run_config, sharding  # noqa: E402
from zppo_jax.rl import answers, rewards, rollouts
from zppo_jax.data import synthetic  # noqa: E402
from zppo_jax.data.tokenizer import Tokenizer  # noqa: E402
from zppo_jax.models import qwen3_5  # noqa: E402
from zppo_jax.sampler import Sampler  # noqa: E402


def tiny_pairs(questions: int, group: int) -> list[tuple[str, str]]:
  """The tiny student's rollouts on synthetic training questions, with their gold answers."""
  config = run_config.config_module("tiny.py").get_config()
  mesh = sharding.make_mesh(tuple(config.mesh.shape))
  model_config, params = qwen3_5.load_hf_checkpoint(config.student.path, mesh=mesh)
  tok = Tokenizer.load(config.student.path)
  source = synthetic.ArithmeticSource(questions, seed=0,
                                      level_weights=tuple(config.data.level_weights))
  rows = [source.row(i) for i in range(questions)]
  _, texts = rollouts.sample(
      Sampler(model_config, mesh=mesh), params, tok,
      rollouts.prompt_ids(tok, config.rollout, [r["question"] for r in rows]),
      enable_thinking=config.rollout.enable_thinking, num_samples=group, seed=0, max_new_tokens=config.rollout.max_new_tokens,
      temperature=config.rollout.temperature, top_p=config.rollout.top_p)
  return list(zip(texts, [r["answer"] for r in rows for _ in range(group)]))


def _math_answer(rng) -> tuple[str, str, str]:
  """(gold, an equal other spelling, a wrong answer) of one of MATH's answer kinds."""
  a, b, c = (int(x) for x in rng.integers(2, 60, 3))
  kind = rng.integers(12)
  if kind == 0:
    n = int(rng.integers(10, 10**6))
    return f"{n:,}" if n >= 1000 else str(n), str(n), str(n + int(rng.integers(1, 9)))
  if kind == 1:
    return (f"\\frac{{{a}}}{{{a + b}}}", f"\\dfrac{{{2 * a}}}{{{2 * (a + b)}}}",
            f"\\frac{{{a + b}}}{{{a}}}")
  if kind == 2:
    return f"{a / 4:g}", f"\\frac{{{a}}}{{4}}", f"{a / 4 + 0.5:g}"
  if kind == 3:
    return f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}", f"{a + 1}\\sqrt{{{b}}}"
  if kind == 4:
    return f"x^2 + {a + b}x + {a * b}", f"(x+{a})(x+{b})", f"(x+{a})(x+{b + 1})"
  if kind == 5:
    return f"[{a}, {a + b})", f"\\left[ {a}, {a + b} \\right)", f"({a}, {a + b})"
  if kind == 6:
    return (f"({a}, {b})", f"\\left( {a}, {b} \\right)",
            f"({b}, {a})" if a != b else f"({a}, {a + 1})")
  if kind == 7:
    return f"\\{{{a}, {b}, {c}\\}}", f"{c}, {b}, {a}", f"\\{{{a}, {b}\\}}"
  if kind == 8:
    return (f"\\begin{{pmatrix}} {a} \\\\ {-b} \\end{{pmatrix}}",
            f"\\begin{{bmatrix}}{a}\\\\{-b}\\end{{bmatrix}}",
            f"\\begin{{pmatrix}} {a} \\\\ {b} \\end{{pmatrix}}")
  if kind == 9:
    return f"y = {a}x + {b}", f"{a}x+{b}", f"y = {b}x + {a}" if a != b else f"y = {a}x"
  if kind == 10:
    return (f"\\frac{{\\sqrt{{{b}}}}}{{{a}}}", f"\\frac{{{a}\\sqrt{{{b}}}}}{{{a * a}}}",
            f"\\frac{{\\sqrt{{{b + 1}}}}}{{{a}}}")
  letter = "ABCDE"[a % 5]
  return letter, f"\\text{{({letter})}}", "ABCDE"[(a + 1) % 5]


_FILLER = ["We have $x^2 - 5x + 6 = 0$, so $(x-2)(x-3) = 0$.",
           "Substituting $\\frac{a}{b} = \\frac{3}{4}$ into the second equation gives $4a = 3b$.",
           "The area is $\\pi r^2 = 9\\pi$, and the perimeter follows.",
           "Let me double-check: $\\sqrt{50} = 5\\sqrt{2}$, which matches.",
           "Therefore the sum telescopes, leaving $1 - \\frac{1}{n+1}$.",
           "Now consider the case $n \\geq 3$ separately, where $\\{1, 2, n\\}$ is the set."]


def math_pairs(n: int, chars: int, seed: int = 0) -> list[tuple[str, str]]:
  """n long MATH-style (response, gold) pairs, half right in another spelling, half wrong."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    gold, same, wrong = _math_answer(rng)
    reasoning = []
    while sum(map(len, reasoning)) < chars:
      reasoning.append(_FILLER[int(rng.integers(len(_FILLER)))])
    pred = same if i % 2 == 0 else wrong
    out.append((f"<think>\n{' '.join(reasoning)} (pass {i})\n</think>\n"
                f"The final answer is $\\boxed{{{pred}}}$.", gold))
  return out


def grade_ours(pairs, workers, timeout_s):
  rewards._VERDICTS = rewards._Memo(rewards._VERDICTS.capacity)  # noqa: SLF001 - see docstring
  grader = rewards.Grader(workers=workers, timeout_s=timeout_s)
  return grader.correct([r for r, _ in pairs], [g for _, g in pairs])


def grade_math_verify(pairs, timeout_s):
  import math_verify
  timeout_s = max(1, math.ceil(timeout_s))  # its signal.alarm takes whole seconds
  out = []
  for response, gold in pairs:
    try:
      out.append(bool(math_verify.verify(
          math_verify.parse(f"$\\boxed{{{gold}}}$", parsing_timeout=timeout_s),
          math_verify.parse(response, parsing_timeout=timeout_s), timeout_seconds=timeout_s)))
    except Exception:  # noqa: BLE001
      out.append(False)
  return np.asarray(out)


def measure(name, pairs, args):
  symbolic = sum(answers.match(p, g) is None for p, g in
                 {(rewards.final_answer(rewards.answer_region(r) or "") or "", g)
                  for r, g in pairs})
  distinct = len({(rewards.final_answer(rewards.answer_region(r) or "") or "", g)
                  for r, g in pairs})
  result = {"pairs": len(pairs), "distinct_answer_pairs": distinct,
            "needing_symbolic": symbolic,
            "mean_response_chars": float(np.mean([len(r) for r, _ in pairs]))}
  for workers in args.workers:
    grade_ours(pairs, workers, args.timeout_s)  # warm-up: starts the workers
    best, verdict = float("inf"), None
    for _ in range(args.repeats):
      start = time.perf_counter()
      verdict = grade_ours(pairs, workers, args.timeout_s)
      best = min(best, time.perf_counter() - start)
    result[f"ours_workers{workers}_answers_per_s"] = len(pairs) / best
  result["ours_accuracy"] = float(verdict.mean())
  if not args.no_peer:
    grade_math_verify(pairs[:8], args.timeout_s)
    start = time.perf_counter()
    peer = grade_math_verify(pairs, args.timeout_s)
    seconds = time.perf_counter() - start
    result["math_verify_answers_per_s"] = len(pairs) / seconds
    result["math_verify_accuracy"] = float(peer.mean())
    for workers in args.workers:
      result[f"ratio_workers{workers}"] = (result[f"ours_workers{workers}_answers_per_s"] /
                                           result["math_verify_answers_per_s"])
    differ = np.flatnonzero(verdict != peer)
    result["agreement"] = 1 - len(differ) / len(pairs)
    result["disagreements"] = [
        {"answer": rewards.final_answer(rewards.answer_region(pairs[i][0]) or ""),
         "gold": pairs[i][1], "ours": bool(verdict[i]), "math_verify": bool(peer[i])}
        for i in differ[:args.examples]]
  print(name, result, flush=True)
  return result


def main():
  parser = arguments(__doc__, "math-verify", repeats=3)
  parser.add_argument("--questions", type=int, default=64)
  parser.add_argument("--group", type=int, default=8)
  parser.add_argument("--math_pairs", type=int, default=512)
  parser.add_argument("--chars", type=int, default=3000)
  parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--timeout_s", type=float, default=2.0)
  parser.add_argument("--examples", type=int, default=10)
  args = parser.parse_args()
  result = {"cpu_count": os.cpu_count(),
            "tiny": measure("tiny", tiny_pairs(args.questions, args.group), args),
            "math": measure("math", math_pairs(args.math_pairs, args.chars), args)}
  write_result(result, args.out)


if __name__ == "__main__":
  main()
