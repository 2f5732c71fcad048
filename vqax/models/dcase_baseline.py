"""DCASE2020 Task 2 baseline autoencoder (Koizumi et al., the challenge's official baseline).

A dense autoencoder on context vectors of `context_frames` stacked log-mel frames (5 x 64 mels = 320 inputs
here; the official baseline used 5 x 128): four Dense(128)+BatchNorm+ReLU layers, a Dense(8)+BatchNorm+ReLU
bottleneck, four Dense(128)+BatchNorm+ReLU layers and a linear Dense back to the input size. The anomaly
score of a clip is the mean squared reconstruction error over all its context vectors.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from vqax.models.remat import maybe_remat


class DenseBlock(nn.Module):
  """Dense -> BatchNorm -> ReLU, as every hidden layer of the official baseline."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(self.features, dtype=self.dtype)(x)
    # Keras BatchNormalization defaults: momentum 0.99, epsilon 1e-3.
    x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, dtype=self.dtype)(x)
    return nn.relu(x)


class DcaseBaselineAE(nn.Module):
  """x [N, input_dim] -> reconstruction [N, input_dim] (float32).

  `model.apply(variables, x, train=False)` uses the BatchNorm running statistics; with `train=True` pass
  `mutable=["batch_stats"]`. `remat_policy` (vqax.models.remat) recomputes each block in the backward pass.
  """
  input_dim: int = 320
  hidden: Sequence[int] = (128, 128, 128, 128)
  bottleneck: int = 8
  dtype: jnp.dtype = jnp.float32
  remat_policy: str = "none"

  @nn.compact
  def __call__(self, x, train: bool = False):
    block = maybe_remat(DenseBlock, self.remat_policy, static_argnums=(2,))  # (self, x, train)
    x = x.astype(self.dtype)
    for i, features in enumerate(self.hidden):
      x = block(features, self.dtype, name=f"enc{i}")(x, train)
    x = block(self.bottleneck, self.dtype, name="bottleneck")(x, train)
    for i, features in enumerate(self.hidden):
      x = block(features, self.dtype, name=f"dec{i}")(x, train)
    return nn.Dense(self.input_dim, dtype=self.dtype, name="output")(x).astype(jnp.float32)
