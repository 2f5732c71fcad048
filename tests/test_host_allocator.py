"""keep_freed_host_memory (opt-in): a jitted step with a large temporary buffer stops page-faulting it every call."""
import json
import os
import platform
import subprocess
import sys

import pytest

# Runs in a fresh interpreter: the allocator settings only fully apply before JAX starts its threads.
_PROBE = r"""
import json, resource, sys
from vqax.memory import host_allocator
applied = host_allocator.requested() and host_allocator.keep_freed_host_memory()
import jax, jax.numpy as jnp

@jax.jit
def step(x, w):
  # A [4096, 4096] float32 intermediate (64 MiB) that two matmuls read: XLA:CPU allocates it every call.
  h = jnp.tanh(x @ w)
  return h.T @ x

x = jnp.ones((4096, 256), jnp.float32)
w = jnp.ones((256, 4096), jnp.float32) * 1e-3
for _ in range(15):  # the heap grows to its working size over the first few calls
  step(x, w).block_until_ready()
faults = []
for _ in range(9):  # per call, so that one call that grows the heap once more does not count as every call
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  step(x, w).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults_per_call": sorted(faults)[len(faults) // 2], "faults": faults}))
"""


def _probe(keep: bool) -> dict:
  env = dict(os.environ, VQAX_KEEP_FREED_MEMORY="1" if keep else "0", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the malloc settings are glibc's")
def test_kept_memory_is_not_faulted_in_again():
  plain, kept = _probe(keep=False), _probe(keep=True)
  assert plain["applied"] is False and kept["applied"] is True
  # 64 MiB of 4 KiB pages is 16,384 faults per call when the buffer is unmapped and mapped again. Medians:
  # under load (CI runs two test workers) the kept heap may still grow once in a while, faulting one call.
  assert plain["faults_per_call"] > 8000, plain
  assert kept["faults_per_call"] < plain["faults_per_call"] / 20, (plain, kept)
