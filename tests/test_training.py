"""The generic trainer on the VQ-VAE task: phases, warm-up, checkpoints and exact resume."""
import jax
import numpy as np
import pytest

from conftest import batch_sizes, smoke_config
from vqax import run
from vqax.tasks.vqvae.task import VQVAETask, commitment_weight
from vqax.train import trainer
from vqax.train.checkpointing import Checkpointer


def test_commitment_weight_warms_up_linearly():
  config = smoke_config("unused", commitment_warmup_start=0.05, commitment_cost=0.25, commitment_warmup_epochs=2)
  values = [float(commitment_weight(config, step, steps_per_epoch=5)) for step in (0, 5, 10, 20)]
  np.testing.assert_allclose(values, [0.05, 0.15, 0.25, 0.25], rtol=1e-6)
  config.commitment_warmup_epochs = 0
  assert float(commitment_weight(config, 0, 5)) == pytest.approx(0.25)


def _params(workdir):
  state, step = Checkpointer(workdir / "checkpoints").restore(None)
  return state["params"], step


def test_resume_continues_exactly_like_an_uninterrupted_run(noise_tree, tmp_path):
  config = smoke_config(noise_tree)
  full = run.train(config, tmp_path / "full", progress=False)
  run.train(config, tmp_path / "split", max_steps=5, progress=False)
  resumed = run.train(config, tmp_path / "split", progress=False)
  assert full["final_step"] == resumed["final_step"] == full["total_steps"]
  losses_full = {h["step"]: h["loss"] for h in full["history"]}
  losses_resumed = {h["step"]: h["loss"] for h in resumed["history"]}
  assert min(losses_resumed) == 6  # the resumed run starts at the step after the checkpoint
  for step, loss in losses_resumed.items():
    assert loss == losses_full[step], f"step {step}: {loss} != {losses_full[step]}"
  params_full, _ = _params(tmp_path / "full")
  params_split, _ = _params(tmp_path / "split")
  jax.tree.map(np.testing.assert_array_equal, params_full, params_split)


def test_phases_freeze_the_right_parameters_and_compile_once(noise_tree, tmp_path):
  config = smoke_config(noise_tree)
  task = VQVAETask(config)
  data = task.prepare_data(tmp_path, batch_sizes(config))
  t = trainer.make_trainer(config, task, data.info)
  assert [p.name for p in t.phases] == ["vq_only", "full", "frozen_codebook"]
  state = t.init_state()
  iterator = iter(data.loader)
  from vqax.train.sharding import global_batch

  def run(phase, n, state):
    step_fn = t.compile_train_step(phase)
    before = jax.device_get(state.params)
    for _ in range(n):
      state, metrics = step_fn(state, global_batch(t.mesh, next(iterator)))
    assert step_fn._cache_size() == 1  # one compile for the whole phase
    return before, jax.device_get(state.params), state, metrics

  vq_only, full, frozen = t.phases
  before, after, state, metrics = run(vq_only, 2, state)
  # Phase 1 fits the codebook to the encoder: encoder and decoder stay bit-identical.
  jax.tree.map(np.testing.assert_array_equal, before["decoder"], after["decoder"])
  jax.tree.map(np.testing.assert_array_equal, before["encoder"], after["encoder"])
  assert not np.array_equal(before["quantizer"]["codebook"], after["quantizer"]["codebook"])
  before, after, state, metrics = run(full, 1, state)
  assert not np.array_equal(before["encoder"]["to_latent"]["kernel"], after["encoder"]["to_latent"]["kernel"])
  before, after, state, metrics = run(frozen, 2, state)
  np.testing.assert_array_equal(before["quantizer"]["codebook"], after["quantizer"]["codebook"])
  assert not np.array_equal(before["decoder"]["to_output"]["kernel"], after["decoder"]["to_output"]["kernel"])
  assert np.isfinite(float(metrics["loss"])) and float(metrics["perplexity"]) >= 1.0


def test_nonfinite_updates_are_skipped_not_applied(noise_tree, tmp_path):
  config = smoke_config(noise_tree)
  task = VQVAETask(config)
  data = task.prepare_data(tmp_path, batch_sizes(config))
  t = trainer.make_trainer(config, task, data.info)
  state = t.init_state()
  batch = next(iter(data.loader))
  batch["patches"][0, 0, 0, 0, 0] = np.nan
  from vqax.train.sharding import global_batch
  before = jax.device_get(state.params)
  state, metrics = t.compile_train_step(t.phases[1])(state, global_batch(t.mesh, batch))
  assert not bool(metrics["finite"]) and int(state.nonfinite_steps) == 1 and int(state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(state.params))


def test_dead_codes_are_revived_onto_encoder_outputs(noise_tree, tmp_path):
  config = smoke_config(noise_tree)
  task = VQVAETask(config)
  data = task.prepare_data(tmp_path, batch_sizes(config))
  t = trainer.make_trainer(config, task, data.info)
  state = t.init_state()
  from vqax.train.sharding import global_batch
  step_fn = t.compile_train_step(t.phases[1])
  state, _ = step_fn(state, global_batch(t.mesh, next(iter(data.loader))))
  # Usage starts at zero: after step 1 every code unused by the batch sits on one of its encoder outputs
  # and gets a grace share of 1/K; the codes the batch used keep their gradient-updated value.
  codebook = np.asarray(state.params["quantizer"]["codebook"])
  recent = np.asarray(state.model_state["vq"]["recent_latents"])
  revived = np.asarray(state.model_state["vq"]["usage"]) == np.float32(1.0 / codebook.shape[0])
  assert revived.sum() >= codebook.shape[0] // 2
  np.testing.assert_array_equal(codebook[revived], recent[revived])
  assert not np.any(np.all(codebook[~revived] == recent[~revived], axis=1))
  # With revival off, the codebook moves only by its (tiny) gradient step.
  config.dead_code_threshold = 0.0
  task_off = VQVAETask(config)
  task_off.prepare_data(tmp_path / "off", batch_sizes(config))
  t_off = trainer.make_trainer(config, task_off, data.info)
  state_off = t_off.init_state()
  initial = np.asarray(state_off.params["quantizer"]["codebook"])
  state_off, _ = t_off.compile_train_step(t_off.phases[1])(state_off, global_batch(t_off.mesh, next(iter(data.loader))))
  assert np.abs(np.asarray(state_off.params["quantizer"]["codebook"]) - initial).max() < 1e-2
