"""Multi-host start-up: `jax.distributed.initialize`, once, before anything touches a device.

Each setting comes from the config (`coordinator_address`, `num_processes`, `process_id`; "" and -1 mean
unset), else from VQAX_COORDINATOR_ADDRESS / VQAX_NUM_PROCESSES / VQAX_PROCESS_ID, else from
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. Nothing set: one process, nothing to do.
With only the address set, JAX fills in the count and id from the cluster (SLURM, Open MPI, Kubernetes).
On CPU the processes exchange collectives over gloo (JAX's default; pinned so a stray setting cannot
leave them without any). `tools/launch_local.py` starts N such processes on one machine.
"""
import dataclasses
import itertools
import os

import jax

from vqax.errors import ConfigError

_ENV_PREFIXES = ("VQAX_", "JAX_")


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None


def _setting(config, name: str, environ) -> str | None:
  value = config.get(name, None) if config is not None else None
  if value not in (None, "", -1):
    return str(value)
  for prefix in _ENV_PREFIXES:
    text = environ.get(prefix + name.upper(), "").strip()
    if text:
      return text
  return None


def _as_int(text: str | None, name: str) -> int | None:
  if text is None:
    return None
  try:
    return int(text)
  except ValueError:
    raise ConfigError(f"{name}={text!r}: expected an integer") from None


def distributed_settings(config=None, environ=None) -> DistributedSettings | None:
  """The multi-process settings in force, or None for a single-process run."""
  environ = os.environ if environ is None else environ
  address = _setting(config, "coordinator_address", environ)
  num_processes = _as_int(_setting(config, "num_processes", environ), "num_processes")
  process_id = _as_int(_setting(config, "process_id", environ), "process_id")
  if address is None and num_processes is None and process_id is None:
    return None
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise ConfigError(f"process_id={process_id}: expected 0 <= process_id < num_processes={num_processes}")
  return DistributedSettings(address, num_processes, process_id)


def maybe_initialize(config=None, environ=None) -> bool:
  """Join the multi-process run the config/environment describes. True if this process is part of one.

  Safe to call twice (a second call only checks). Must run before the first device use: JAX fixes the
  device set when its backend starts.
  """
  settings = distributed_settings(config, environ)
  if settings is None:
    return False
  if jax.distributed.is_initialized():
    return True
  from jax._src import xla_bridge  # no public "has a backend started" query
  if xla_bridge.backends_are_initialized():
    raise ConfigError(f"multi-process settings {settings} came after JAX started its backend; call "
                      "vqax.train.distributed.maybe_initialize before any device use")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(settings.coordinator_address, num_processes=settings.num_processes,
                               process_id=settings.process_id)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"multi-process start-up ({settings}): {e}") from None
  return True


_barrier_count = itertools.count()


def barrier(name: str, timeout_s: float = 1800.0) -> None:
  """Wait until every process arrives, over the coordination service (no device collective, no gloo).

  gloo gives up when the peers of a collective arrive more than 30 s apart (a fixed key-value timeout),
  so processes meet here before collectives that follow uneven work, e.g. compiling on a busy host.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # the client's barrier has no public wrapper
  jax_distributed.global_state.client.wait_at_barrier(f"vqax:{name}:{next(_barrier_count)}",
                                                      int(timeout_s * 1000))
