"""Vector quantizer (van den Oord et al., 2017) with a straight-through estimator.

The quantizer returns its two loss terms separately in `aux`; the training task weights them (the
commitment weight warms up over training, and phase 1 trains the VQ terms alone).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


def codebook_init(key, shape, dtype=jnp.float32):
  """Uniform(-1/K, 1/K), the common VQ-VAE initialisation (K = num_embeddings)."""
  return jax.random.uniform(key, shape, dtype, -1.0 / shape[0], 1.0 / shape[0])


def code_statistics(codes: jax.Array, num_embeddings: int) -> dict[str, jax.Array]:
  """Perplexity and usage of the codebook over a batch of code indices."""
  counts = jnp.bincount(codes.reshape(-1), length=num_embeddings)
  probs = counts / jnp.maximum(counts.sum(), 1)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
  return {
      "perplexity": jnp.exp(entropy),
      "usage": jnp.mean(counts > 0),
      "code_counts": counts,
  }


class VectorQuantizer(nn.Module):
  """Nearest-code lookup into a `num_embeddings` x `latent_dim` codebook.

  Distances are computed in float32 whatever the compute dtype: in bfloat16 near-ties between codes flip
  and the code assignment becomes noisy.
  """
  num_embeddings: int = 128
  latent_dim: int = 64

  @nn.compact
  def __call__(self, z: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    codebook = self.param("codebook", codebook_init, (self.num_embeddings, self.latent_dim), jnp.float32)
    flat = z.reshape(-1, self.latent_dim).astype(jnp.float32)
    distances = (jnp.sum(flat**2, axis=1, keepdims=True)
                 - 2.0 * jnp.dot(flat, codebook.T, precision=jax.lax.Precision.HIGHEST)
                 + jnp.sum(codebook**2, axis=1)[None, :])
    codes = jnp.argmin(distances, axis=1)
    quantized = codebook[codes]
    # Codebook loss moves codes towards encoder outputs; commitment loss keeps the encoder near its codes.
    codebook_loss = jnp.mean((quantized - jax.lax.stop_gradient(flat))**2)
    commitment_loss = jnp.mean((jax.lax.stop_gradient(quantized) - flat)**2)
    # Straight-through: forward uses the code, backward passes the gradient to the encoder unchanged.
    straight_through = flat + jax.lax.stop_gradient(quantized - flat)
    aux = {
        "codes": codes.reshape(z.shape[:-1]),
        "latents": jax.lax.stop_gradient(flat),  # encoder outputs, for dead-code revival
        "codebook_loss": codebook_loss,
        "commitment_loss": commitment_loss,
        **code_statistics(codes, self.num_embeddings),
    }
    return straight_through.reshape(z.shape).astype(z.dtype), aux
