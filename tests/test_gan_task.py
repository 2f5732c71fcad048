"""The GAN task under the generic trainer: n_critic D steps + one G step per jitted step, both finite, the
non-finite guard, and a toy 2-class distribution learned through `vqax.train.trainer.train`."""
import jax
import jax.numpy as jnp
import numpy as np
from conftest import REPO

from vqax import config_loading
from vqax.data import pipeline
from vqax.tasks.spectrogram_gan import step as step_lib
from vqax.tasks.spectrogram_gan.task import SpectrogramGanTask
from vqax.train import trainer as trainer_lib
from vqax.train.checkpointing import restore_trained
from vqax.train.task import DataInfo, TrainData

MEANS = np.array([-1.0, 1.0])


def toy_config(**fields):
  """8 mels x 16 frames (0.24 s at hop 256), 2 classes, n_critic 2."""
  config = config_loading.load_config(f"{REPO}/configs/spectrogram_gan.py:smoke")
  config.features.update(dict(n_fft=256, hop_length=256, n_mels=8))
  config.clip_seconds = 15 * 256 / 16000
  config.model.num_classes = 2
  config.model.latent_dim = 16
  config.update(dict(batch_size=16, n_critic=2, learning_rate=2e-3, d_learning_rate=2e-3, adam_b2=0.9,
                     ema_decay=0.9, warmup_steps=0, log_every_steps=25, checkpoint_every_steps=1000, epochs=2))
  config.update(fields)
  return config


class ToyGanTask(SpectrogramGanTask):
  """Real class 0 has mean log-mel -1, class 1 +1 (noise 0.3): data made in memory, the rest is the task's."""

  def prepare_data(self, workdir, batch):
    rng = np.random.default_rng(0)
    n_critic = int(self.config.n_critic)
    records = []
    for _ in range(125 * batch.global_batch):
      y = rng.integers(0, 2, n_critic)
      x = MEANS[y][:, None, None] + 0.3 * rng.standard_normal((n_critic, 8, 16))
      records.append({"spectrogram": x.astype(np.float32), "label": y.astype(np.int32)})
    loader = pipeline.make_loader(records, [], batch_size=batch.per_process, seed=0)
    return TrainData(loader, DataInfo(len(records) // batch.global_batch, num_classes=2),
                     samples_per_step=batch.global_batch)


def class_means(generator, params):
  labels = jnp.array([0] * 32 + [1] * 32)
  spec = jax.jit(lambda p: step_lib.generate(generator, p, labels, jax.random.key(2)))(params)
  return float(spec[:32].mean()), float(spec[32:].mean())


def test_tiny_gan_learns_class_conditional_energy_through_the_trainer(tmp_path):
  """250 steps (hinge, n_critic 2) through the trainer: every D and G update finite, and the EMA
  generator's per-class means move from together (~untrained) to the real -1 / +1."""
  config = toy_config()
  task = ToyGanTask(config)
  program = task.build(DataInfo(1, 2), "cpu")
  untrained = program.init_variables(jax.random.key(int(config.seed)), None)  # what init_state starts from
  before = class_means(program.generator, untrained["generator_ema"])
  summary = trainer_lib.train(config, tmp_path / "run", task, progress=False)
  assert summary["final_step"] == 250 and summary["nonfinite_steps"] == 0
  for row in summary["history"]:
    assert np.isfinite([row["d_loss"], row["g_loss"], row["d_grad_norm"], row["g_grad_norm"]]).all(), row
  _, state, _ = restore_trained(tmp_path / "run", "spectrogram_gan", "test")
  after = class_means(program.generator, state["model_state"]["generator_ema"])
  assert abs(before[0] - before[1]) < 0.3  # the untrained generator ignores the class
  assert abs(after[0] + 1.0) < 0.3 and abs(after[1] - 1.0) < 0.3, (before, after)


def test_one_step_updates_both_networks_and_a_non_finite_batch_leaves_no_trace():
  config = toy_config()
  task = ToyGanTask(config)
  trainer = trainer_lib.make_trainer(config, task, DataInfo(10, 2))
  state = trainer.init_state()
  assert set(state.opt_state) == {"generator", "discriminator"}
  assert set(state.model_state) == {"spectral_norm", "generator_ema"}
  step = trainer.compile_train_step(trainer.phases[0])
  rng = np.random.default_rng(1)
  batch = {"spectrogram": jnp.asarray(rng.standard_normal((16, 2, 8, 16)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 2, (16, 2)), jnp.int32)}
  before = jax.device_get(state)
  state, metrics = step(state, batch)
  after = jax.device_get(state)
  assert bool(metrics["finite"]) and int(after.step) == 1
  for name in ("generator", "discriminator"):
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before.params[name]),
                                                      jax.tree.leaves(after.params[name]))]
    assert any(moved), name
  # D moved by two Adam steps (n_critic), G by one: their counts say so.
  for name, updates in (("generator", 1), ("discriminator", 2)):
    counts = {int(leaf) for leaf in jax.tree.leaves(after.opt_state[name]) if np.ndim(leaf) == 0}
    assert counts == {updates}, (name, counts)

  bad = dict(batch, spectrogram=batch["spectrogram"].at[3, 1, 0, 0].set(jnp.nan))
  state, metrics = step(state, bad)
  nan_after = jax.device_get(state)
  assert not bool(metrics["finite"]) and int(nan_after.nonfinite_steps) == 1 and int(nan_after.step) == 2
  for key in ("params", "model_state", "opt_state"):
    for a, b in zip(jax.tree.leaves(getattr(after, key)), jax.tree.leaves(getattr(nan_after, key))):
      np.testing.assert_array_equal(a, b)
