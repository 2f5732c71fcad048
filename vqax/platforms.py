"""Which JAX platform a command runs on (`--device`), chosen before JAX first touches a device."""
from vqax.errors import ConfigError

DEVICES = ("auto", "cpu", "gpu", "tpu", "cuda", "rocm")


def select_platform(config) -> None:
  """--device: cpu/gpu/tpu pins the JAX platform (before first use); auto leaves JAX's choice."""
  device = str(config.get("device", "auto"))
  if device not in DEVICES:
    raise ConfigError(f"device={device!r}: expected auto, cpu, gpu or tpu")
  if device != "auto":
    import jax
    jax.config.update("jax_platforms", {"gpu": "cuda,rocm"}.get(device, device))
