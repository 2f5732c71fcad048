"""A tiny ViT on native 1-channel log-mels tells the 10 LibriSpeech speakers apart on held-out files."""
import jax
import numpy as np
import optax
from conftest import shared_path

from vqax.audio.features import LogMelConfig
from vqax.data import class_folders as cf
from vqax.models.vit import vit


def test_vit_beats_chance_by_far_on_ten_librispeech_speakers():
  root = shared_path("data", "librispeech_test_other")
  cfg = cf.ClipConfig(LogMelConfig(n_fft=512, hop_length=320, n_mels=32), clip_seconds=2.0, clip_hop_seconds=1.0)
  records, classes = cf.list_clips(root, cfg)
  train, test = cf.split_by_file(records, 0.2, seed=0)  # 2 of each speaker's 10 files held out
  norm = cf.fit_normalization(train, cfg)
  x_train, y_train = cf.load_arrays(train, cfg, norm)
  x_test, y_test = cf.load_arrays(test, cfg, norm)
  model = vit("micro", num_classes=len(classes), patch_size=8, image_size=cfg.shape, hidden_size=64, mlp_dim=128,
              num_heads=4)
  params = jax.jit(model.init)(jax.random.key(0), x_train[:2])["params"]
  tx = optax.adamw(1e-3, weight_decay=1e-4)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x)[0], y).mean()
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  predict = jax.jit(lambda p, x: model.apply({"params": p}, x)[0].argmax(-1))
  rng = np.random.default_rng(0)
  for _ in range(150):
    rows = rng.integers(0, len(x_train), 32)
    params, opt_state, _ = step(params, opt_state, x_train[rows], y_train[rows])
  predictions = np.concatenate([np.asarray(predict(params, x_test[i:i + 64])) for i in range(0, len(x_test), 64)])
  accuracy = float(np.mean(predictions == y_test))
  assert accuracy > 0.5, accuracy  # chance is 0.1 (observed ~0.9 after 150 steps)
