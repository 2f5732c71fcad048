"""GAN objectives and generator EMA as pure functions of discriminator logits (no model code here).

Hinge (Lim & Ye 2017; SNGAN, BigGAN):
  L_D = E[relu(1 - D(x))] + E[relu(1 + D(G(z)))],   L_G = -E[D(G(z))]
Non-saturating (Goodfellow et al. 2014, the "-log D" trick), with logits:
  L_D = E[softplus(-D(x))] + E[softplus(D(G(z)))],  L_G = E[softplus(-D(G(z)))]
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vqax.errors import ConfigError


def hinge_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def hinge_g_loss(fake_logits: jax.Array) -> jax.Array:
  return -jnp.mean(fake_logits)


def nonsaturating_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def nonsaturating_g_loss(fake_logits: jax.Array) -> jax.Array:
  return jnp.mean(jax.nn.softplus(-fake_logits))


LOSSES: dict[str, tuple[Callable, Callable]] = {
    "hinge": (hinge_d_loss, hinge_g_loss),
    "nonsaturating": (nonsaturating_d_loss, nonsaturating_g_loss),
}


def gan_losses(kind: str) -> tuple[Callable, Callable]:
  """(d_loss(real_logits, fake_logits), g_loss(fake_logits)) for `kind`; ConfigError naming the choices."""
  if kind not in LOSSES:
    raise ConfigError(f"gan loss {kind!r} is not one of {', '.join(LOSSES)}")
  return LOSSES[kind]


def ema_update(ema_params, params, decay: float):
  """Exponential moving average of generator weights: ema <- decay * ema + (1 - decay) * params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
