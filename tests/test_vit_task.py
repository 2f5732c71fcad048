"""The ViT classifier task: unfreezing stages as trainer phases (frozen layers get no gradient, layers never
unfrozen no optimizer state, a newly unfrozen group starts with a fresh optimizer state), and the ten
LibriSpeech speakers through the task."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import REPO, shared_path

from vqax import config_loading
from vqax.errors import ConfigError
from vqax.tasks.vit_classifier import evaluation
from vqax.tasks.vit_classifier.task import ViTClassifierTask
from vqax.train import trainer as trainer_lib
from vqax.train.task import DataInfo


def smoke(**fields):
  config = config_loading.load_config(f"{REPO}/configs/vit_classifier.py:smoke")
  config.update(fields)
  return config


def leaves_equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def size(tree) -> int:
  return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def staged():
  """The smoke schedule {0: head, final_norm, layer.-1; 1: all} on 3 layers, 2 steps per epoch."""
  config = smoke()
  trainer = trainer_lib.make_trainer(config, ViTClassifierTask(config), DataInfo(2, num_classes=3))
  return config, trainer


def test_stages_are_phases_and_each_group_has_its_own_optimizer_state(staged):
  _, trainer = staged
  assert [(p.name, p.start_step, p.end_step) for p in trainer.phases] == [("stage0", 0, 2), ("stage1", 2, 4)]
  state = jax.device_get(trainer.init_state())
  assert set(state.opt_state) == {"stage0", "stage1"}
  params = state.params
  stage0_units = size(params["head"]) + size(params["final_norm"]) + size(params["encoder"]) // 3
  stage1_units = size(params["embeddings"]) + 2 * size(params["encoder"]) // 3
  counts = 2  # adamw: its count, the schedule's count
  assert size(state.opt_state["stage0"]) == 2 * stage0_units + counts  # mu, nu of the new units only
  assert size(state.opt_state["stage1"]) == 2 * stage1_units + counts


def test_stage_boundary_unfreezes_the_named_layers(staged):
  _, trainer = staged
  rng = np.random.default_rng(0)
  batch = {"spectrogram": jnp.asarray(rng.standard_normal((4, 16, 32)), jnp.float32),
           "label": jnp.asarray([0, 1, 2, 1], jnp.int32)}
  state = trainer.init_state()
  initial = jax.device_get(state)
  stage0, stage1 = (trainer.compile_train_step(p) for p in trainer.phases)
  for _ in range(2):
    state, metrics = stage0(state, batch)
    assert bool(metrics["finite"])
  after0 = jax.device_get(state)
  layers0, layers_init = after0.params["encoder"]["layers"], initial.params["encoder"]["layers"]
  for name in ("head", "final_norm"):
    assert not leaves_equal(after0.params[name], initial.params[name]), name
  assert leaves_equal(after0.params["embeddings"], initial.params["embeddings"])
  for leaf0, leaf_init in zip(jax.tree.leaves(layers0), jax.tree.leaves(layers_init)):
    np.testing.assert_array_equal(leaf0[:2], leaf_init[:2])  # layers 0 and 1: frozen in stage 0
  assert not leaves_equal(jax.tree.map(lambda a: a[2], layers0), jax.tree.map(lambda a: a[2], layers_init))
  # The next group's optimizer state has not been touched: fresh moments, count 0, when its stage starts.
  assert leaves_equal(after0.opt_state["stage1"], initial.opt_state["stage1"])

  state, metrics = stage1(state, batch)
  after1 = jax.device_get(state)
  assert not leaves_equal(after1.params["embeddings"], after0.params["embeddings"])
  for leaf1, leaf0 in zip(jax.tree.leaves(after1.params["encoder"]["layers"]), jax.tree.leaves(layers0)):
    assert not np.array_equal(leaf1[0], leaf0[0])
  count = lambda tree: {int(x) for x in jax.tree.leaves(tree) if np.ndim(x) == 0}
  assert count(after1.opt_state["stage1"]) == {1} and count(after1.opt_state["stage0"]) == {3}


def test_layers_never_unfrozen_have_no_optimizer_state_and_no_gradient():
  config = smoke(unfreeze_schedule=ml_collections.ConfigDict({"0": ("head",)}), epochs=1)
  trainer = trainer_lib.make_trainer(config, ViTClassifierTask(config), DataInfo(2, num_classes=3))
  state = trainer.init_state()
  assert size(state.opt_state) == 2 * size(state.params["head"]) + 2
  batch = {"spectrogram": jnp.ones((4, 16, 32), jnp.float32), "label": jnp.asarray([0, 1, 2, 1], jnp.int32)}
  compiled = trainer.compile_train_step(trainer.phases[0]).lower(state, batch).compile()
  full = smoke(unfreeze_schedule=ml_collections.ConfigDict({"0": ("all",)}), epochs=1)
  full_trainer = trainer_lib.make_trainer(full, ViTClassifierTask(full), DataInfo(2, num_classes=3))
  full_state = full_trainer.init_state()
  full_compiled = full_trainer.compile_train_step(full_trainer.phases[0]).lower(full_state, batch).compile()
  # Head only: no activations kept for the encoder's backward pass.
  assert compiled.memory_analysis().temp_size_in_bytes * 2 < full_compiled.memory_analysis().temp_size_in_bytes


def test_a_schedule_naming_a_missing_layer_is_a_config_error():
  with pytest.raises(ConfigError, match="names layer 'layer.7', which does not exist"):
    ViTClassifierTask(smoke(unfreeze_schedule=ml_collections.ConfigDict({"0": ("head", "layer.7")})))


def test_ten_librispeech_speakers_through_the_task(tmp_path):
  """A tiny native ViT trained by `vqax.train.trainer` on 8 of each speaker's 10 files tells the held-out
  files' speakers apart (chance 0.1)."""
  root = shared_path("data", "librispeech_test_other")
  config = config_loading.load_config(f"{REPO}/configs/vit_classifier.py:demo")
  config.update(dict(data_root=str(root), clip_seconds=2.0, clip_hop_seconds=1.0, batch_size=32, epochs=10,
                     learning_rate=1e-3, warmup_steps=10, log_every_steps=50, checkpoint_every_steps=1000))
  config.features.update(dict(sample_rate=16000, n_fft=512, hop_length=320, n_mels=32))
  config.model.overrides = ml_collections.ConfigDict(dict(patch_size=8, hidden_size=64, mlp_dim=128, num_heads=4))
  summary = trainer_lib.train(config, tmp_path / "run", ViTClassifierTask(config), progress=False)
  assert summary["data"]["classes"] and len(summary["data"]["classes"]) == 10
  classifier = evaluation.load_classifier(tmp_path / "run")
  x_test, y_test = evaluation.test_arrays(config, classifier.normalization)
  accuracy = evaluation.accuracy(classifier, x_test, y_test)
  print(f"held-out accuracy {accuracy:.3f} on {len(y_test)} clips after {summary['final_step']} steps")
  assert accuracy > 0.5, accuracy


@pytest.mark.parametrize("adapter", ["resize_rgb", "native"])
def test_init_from_a_converted_checkpoint(capsys, tmp_path, adapter):
  """`vqax convert vit` on the tiny HF fixture, then the task starts from it: every weight as converted
  (patch kernel summed over RGB for the 1-channel native input), the 5-class head replaced by a fresh 3-class one."""
  from vqax import cli
  from vqax.models import vit_convert
  out = tmp_path / "converted"
  assert cli.main(["convert", "vit", str(shared_path("fixtures", "vit_tiny_parity.npz")), "--out", str(out)]) == 0
  variables, _ = vit_convert.load_converted(out)
  if adapter == "native":
    variables = vit_convert.to_single_channel(variables)
  config = smoke(init_from=str(out))
  config.model.variant = "tiny"
  config.model.input_adapter = adapter
  config.model.overrides = ml_collections.ConfigDict()
  trainer = trainer_lib.make_trainer(config, ViTClassifierTask(config), DataInfo(2, num_classes=3))
  params = jax.device_get(trainer.init_state().params)
  assert params["head"]["kernel"].shape == (64, 3)
  expected = {k: v for k, v in jax.device_get(variables["params"]).items() if k != "head"}
  for name, tree in expected.items():
    assert leaves_equal(params[name], tree), name
  assert trainer.program.model.image_size == (32, 32)  # the converted grid; native inputs interpolate to it
