r"""The training entry point: flags, setup, the loop, checkpoints and export, for ZPPO and every
baseline of the paper (`config.method`, an entry of `zppo_jax/rl/methods.py`).

    python -m zppo_jax.train --config configs/tiny.py --workdir /tmp/zppo \
        [--config.total_steps=20] [--export_only]

Each step is `rl.step.rl_step` (questions, roll out, teacher, buffer, reformulate, update; see
`../shared/ZPPO.md`), then metrics, samples, checkpoint; held-out sets every `eval.every`
steps. Rerunning the same command resumes from the newest readable checkpoint in the workdir.

On several hosts (`--distributed`, or automatic on Cloud TPU VMs and SLURM) each process runs
this same loop over a global mesh: it reads its share of the questions and grades its share
of the rollouts, and every host holds the whole step (`multihost`). SIGTERM on any host ends
the run after the current step with a checkpoint, exit status 0.
"""

from __future__ import annotations

import glob
import os
import shutil

import jax
from absl import app, flags, logging

from zppo_jax import (checkpointing, compilation, evaluation, learner, models, multihost,
                      policies, run_config, sharding)
from zppo_jax import workdir as run_dir
from zppo_jax.data import pipeline
from zppo_jax.metric_writer import MetricWriter
from zppo_jax.rl import metrics as metrics_lib
from zppo_jax.rl import methods, replay_buffer, rewards, rollouts, stages
from zppo_jax.rl.step import rl_step


class Trainer:
  """The loop's state (learner, buffer, data position, step) and its setup; `run()` trains
  to `total_steps`."""

  def __init__(self, config, workdir: str, on_config_change: str = "refuse"):
    run_config.validate(config, jax.process_count())
    rewards.Grader.from_config(config.reward)  # the reward fields' errors before any work
    self.method = methods.get(config.method)
    run_dir.claim(workdir, config, on_config_change, write=jax.process_index() == 0)
    compilation.enable_cache(config.compile_cache)
    self.config, self.workdir = config, workdir
    self.mesh, self.rules = sharding.from_config(config.mesh)
    self.model_config, params = policies.load(config.model.family, config.student, self.mesh,
                                              self.rules, seed=config.seed,
                                              vision=config.vision.enabled)
    # a frozen tower is not in the train state (no moments); a trained one is (train_tower)
    tower = None if config.vision.train_tower else params.pop("visual", None)
    reformulates = self.method.reformulates and bool(config.zppo.bcq or config.zppo.ncq)
    self.prompt_limit = stages.prompt_limit(config.rollout, config.zppo, reformulates,
                                            self.model_config.max_position_embeddings)
    self.policies = policies.load_all(config, self.mesh, self.rules, self.model_config, params)
    self.prompt_overhead = len(rollouts.prompt_ids(self.policies.tokenizer, config.rollout,
                                                   [""])[0])
    self.sample_shapes = stages.sample_shapes(
        config.questions_per_step, config.buffer, config.zppo, reformulates,
        config.rollout.max_prompt_tokens, self.prompt_overhead,
        config.vision.max_tokens if config.vision.enabled else 0)
    self.learner = learner.Learner(config, self.method, self.mesh, self.rules, self.policies,
                                   params, tower)
    self.data_errors = pipeline.ErrorCounter()  # complete once the dataset is made
    self.dataset = pipeline.make_dataset(
        pipeline.training_source(config.data, config.seed), batch_size=config.questions_per_step,
        seed=config.seed, shuffle=config.data.shuffle, on_error=config.data.on_error,
        errors=self.data_errors)
    self.data_iter = iter(self.dataset)
    self.buffer = replay_buffer.BufferState()
    self.step = 0
    self.checkpointer = checkpointing.Checkpointer(
        config.checkpoint.dir or os.path.join(workdir, "checkpoints"),
        every=config.checkpoint.every,
        keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    self.evaluator = (evaluation.Evaluator.from_config(config, self.policies.tokenizer,
                                                       self.policies.sampler,
                                                       self.policies.images)
                      if config.eval.every else None)
    self._restore()
    if config.precompile:
      self.precompile()
    # From here on SIGTERM means "checkpoint and stop" (before, nothing would be lost).
    self.sync = multihost.StepSync()

  def precompile(self):
    """Builds the programs of every shape the config fixes, so that no step stops to compile
    one (or, with the persistent cache, loads them all): the sampler's for each call kind
    and row bucket (question prompts only when rollout.max_prompt_tokens fixes their slots),
    the evaluation's, and the learner's for every chunk length up to the longest row."""
    config, held = self.config, self.policies
    params = self.learner.sampling_params()
    questions, reformulated = (self.sample_shapes[k] for k in ("questions", "reformulated"))
    calls = []  # (sampler, params, shape, max_new_tokens, temperature, num_samples)
    if questions["prompt_slots"]:
      if config.distill.student_rollouts:
        calls.append((held.sampler, params, questions, config.rollout.max_new_tokens,
                      config.rollout.temperature, config.rollout.group_size))
      if config.teacher.source == "model":
        calls.append((held.teacher_sampler, held.teacher_params, questions,
                      config.teacher.max_new_tokens,
                      config.teacher.temperature, config.teacher.num_rollouts))
    if self.method.reformulates and (config.zppo.bcq or config.zppo.ncq):
      calls.append((held.sampler, params, reformulated, config.rollout.max_new_tokens,
                    config.rollout.temperature, config.rollout.group_size))
    for sampler, call_params, shape, new, temperature, n in calls:
      for rows in shape["rows"]:
        sampler.precompile(call_params, rows, shape["prompt_slots"], max_new_tokens=new,
                           temperature=temperature, top_p=config.rollout.top_p, num_samples=n,
                           stop_token_ids=held.tokenizer.stop_token_ids, rows=rows,
                           prompt_slots=shape["prompt_slots"])
    if self.evaluator:
      self.evaluator.precompile(params)
    self.learner.precompile(learner.longest_row(config, self.method, self.prompt_overhead))

  # -- checkpoints ---------------------------------------------------------------------------

  def _host_state(self) -> dict:
    return {"step": self.step, "buffer": replay_buffer.to_json(self.buffer),
            "data": self.data_iter.get_state()}

  def _restore(self):
    found = self.checkpointer.restore_latest(
        checkpointing.abstract(self.learner.state, self.learner.shardings))
    if found is None:
      return
    step, self.learner.state, host = found
    self.step = host["step"]
    self.buffer = replay_buffer.from_json(host["buffer"])
    self.data_iter.set_state(host["data"])
    logging.info("resumed from %s at step %d", self.checkpointer.directory, step)

  def save(self, force: bool = False):
    self.checkpointer.save(self.step, self.learner.state, self._host_state(), force=force)

  def export(self, path: str | None = None) -> str:
    """The student as a Hugging Face checkpoint directory (safetensors, config, tokenizer;
    a vision-language student's tower with it)."""
    path = path or self.config.export.dir or os.path.join(self.workdir, "export")
    source = self.config.student.path if self.config.student.init != "random" else None
    params = self.learner.state.params
    if self.learner.tower is not None:
      params = {**params, "visual": self.learner.tower}
    models.of(self.model_config).save_hf_checkpoint(path, self.model_config, params,
                                                    source=source)
    if source is None and jax.process_index() == 0:  # from scratch: the tokenizer comes along
      for name in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.isfile(os.path.join(self.config.tokenizer, name)):
          shutil.copy2(os.path.join(self.config.tokenizer, name), os.path.join(path, name))
    return path

  # -- one step ------------------------------------------------------------------------------

  def rl_step(self) -> tuple[dict, list, list[dict]]:
    """One RL step (`rl_step`) on the loop's state: (metrics, groups, reformulations)."""
    out = rl_step(self.config, self.method, self.policies, self.learner, self.data_iter,
                  self.buffer, self.step, prompt_limit=self.prompt_limit,
                  shapes=self.sample_shapes)
    self.buffer = out.buffer
    out.metrics["data/skipped_rows"] = self.data_errors.skipped
    self.step += 1
    return out.metrics, out.groups, out.reformulations

  def evaluate(self) -> dict:
    """The held-out sets on the current params: `eval/...` metrics, and the per-question
    results in <workdir>/eval/step_<N>.json/.md. Sampling seeds depend on the run's seed
    only, so every step (and `zppo_jax.evaluate` on a checkpoint) draws alike."""
    config, name = self.config, run_config.label(self.config)
    results = self.evaluator.run(self.learner.sampling_params(), config.seed)
    evaluation.write(results, os.path.join(self.workdir, "eval"), config,
                     stem=f"step_{self.step:06d}", title=f"{name} after {self.step} steps",
                     extra={"method": name, "seed": config.seed, "step": self.step})
    return evaluation.metrics(results, config.eval.pass_at)

  def close(self):
    self.sync.close()
    self.checkpointer.close()

  def fingerprint(self) -> str:
    """Of the host-side state every host must hold alike: step, replay buffer, data position."""
    return multihost.fingerprint([self.step, replay_buffer.to_json(self.buffer),
                                  self.data_iter.get_state()])

  def run(self) -> bool:
    """Trains to `total_steps`; False when stopped early by SIGTERM (after a checkpoint)."""
    config = self.config
    writer = MetricWriter(self.workdir, tensorboard=config.log.tensorboard, start_step=self.step)
    bar = None
    console = jax.process_index() == 0
    if console and self.step:
      print(f"resuming at step {self.step} from {self.checkpointer.directory}", flush=True)
    if config.log.progress and console:
      import tqdm
      bar = tqdm.tqdm(total=config.total_steps, initial=self.step,
                      desc=run_config.label(config), unit="step")
    stopped, exported = False, None
    try:
      while self.step < config.total_steps:
        if self.sync.check(self.step, self.fingerprint() if jax.process_count() > 1 else ""):
          stopped = True
          break
        held_out = {}
        if (self.evaluator and self.step % config.eval.every == 0
            and (self.step or config.eval.at_start)):
          held_out = self.evaluate()  # params after `self.step` updates, logged on that line
        metrics, groups, reformulations = self.rl_step()
        metrics.update(held_out)
        step = self.step - 1
        if step % config.log.every == 0 or self.step == config.total_steps or held_out:
          writer.write(step, metrics)
        if config.log.samples_every and step % config.log.samples_every == 0:
          writer.records("samples", step, metrics_lib.samples(
              groups, self.policies.tokenizer.decode, config.log.num_samples))
        writer.records("reformulations", step, reformulations)
        self.save()
        if bar is not None:
          bar.update(1)
          bar.set_postfix(metrics_lib.progress(metrics), refresh=True)
      if self.checkpointer.manager.latest_step() != self.step:
        self.save(force=True)
      self.checkpointer.wait()
      logging.info("process %d: host state fingerprint %s at step %d", jax.process_index(),
                   self.fingerprint(), self.step)
      if not stopped and self.evaluator:
        writer.write(self.step, self.evaluate())  # the final params, on a line of their own
      if stopped:
        logging.warning("stopped by a signal after %d steps, checkpointed: rerun the same "
                        "command to resume", self.step)
      elif config.export.at_end:
        exported = self.export()
    finally:
      if bar is not None:
        bar.close()
      writer.close()
      self.close()
    if console:
      print(self._summary(exported), flush=True)
    return not stopped

  def _summary(self, exported: str | None) -> str:
    """Where a finished (or stopped) run's results are."""
    lines = [f"{run_config.label(self.config)}: {self.step}/{self.config.total_steps} steps in "
             f"{self.workdir}",
             f"  metrics      {os.path.join(self.workdir, 'metrics.jsonl')} (TensorBoard: "
             f"{os.path.join(self.workdir, 'tensorboard')})",
             f"  checkpoints  {self.checkpointer.directory} (newest: step "
             f"{self.checkpointer.manager.latest_step()})"]
    if exported:
      lines.append(f"  export       {exported}")
    evals = sorted(glob.glob(os.path.join(self.workdir, "eval", "step_*.md")))
    if evals:
      lines.append(f"  evaluation   {evals[-1]}")
    return "\n".join(lines)


def main(argv):
  del argv
  multihost.initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                       _PROCESS_ID.value)
  config = _CONFIG.value
  if not flags.FLAGS["verbosity"].present:  # libraries' INFO lines only when asked for
    logging.set_verbosity(logging.WARNING)
  trainer = Trainer(config, _WORKDIR.value, _ON_CONFIG_CHANGE.value)
  if _EXPORT_ONLY.value:
    if trainer.step == 0:
      trainer.close()
      raise SystemExit(f"error: --export_only: no readable checkpoint in {_WORKDIR.value} to "
                       "export")
    print(trainer.export())
    trainer.close()
    return
  trainer.run()


if __name__ == "__main__":  # flags only here: other modules import the Trainer
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file (:arg optional).")
  _WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and exports go here.")
  _EXPORT_ONLY = flags.DEFINE_bool("export_only", False,
                                   "Export the newest checkpoint's student and exit.")
  _ON_CONFIG_CHANGE = flags.DEFINE_enum(
      "on_config_change", "refuse", run_dir.ON_CHANGE,
      "When the workdir holds a run with another config: refuse (naming the differing fields), "
      "continue it with the new settings, or move the old run aside and start a new_run.")
  _DISTRIBUTED = flags.DEFINE_enum(
      "distributed", "auto", multihost.DISTRIBUTED,
      "Start jax.distributed (one process per host): auto = when the flags below are given or "
      "a Cloud TPU VM / SLURM / Open MPI cluster is detected.")
  _COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                     "host:port of process 0 (GPU clusters, CPU tests).")
  _NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
  _PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=run_config.parse_flags)
