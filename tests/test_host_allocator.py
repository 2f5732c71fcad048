"""Host allocator settings: a jitted step with a large temporary buffer stops page-faulting it 4 KiB at a time."""
import json
import os
import pathlib
import platform
import subprocess
import sys

import pytest

from vqax.ops import host_allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
THP_MODE = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")

# Runs in a fresh interpreter: the allocator settings only fully apply before JAX starts its threads.
_PROBE = r"""
import json, resource, sys
from vqax.ops import host_allocator
applied = host_allocator.keep_memory_requested() and host_allocator.keep_freed_host_memory()
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


def _probe(keep: bool = False, huge_pages: bool = False) -> dict:
  env = dict(os.environ, VQAX_KEEP_FREED_MEMORY="1" if keep else "0", JAX_PLATFORMS="cpu")
  env.pop("GLIBC_TUNABLES", None)
  if huge_pages:
    env = host_allocator.environ_with_huge_pages(env)
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the malloc settings are glibc's")
def test_kept_memory_is_not_faulted_in_again():
  plain, kept = _probe(keep=False), _probe(keep=True)
  assert plain["applied"] is False and kept["applied"] is True
  # 64 MiB of 4 KiB pages is 16,384 faults per call when the buffer is unmapped and mapped again. Medians:
  # under load (CI runs two test workers) the kept heap may still grow once in a while, faulting one call.
  assert plain["faults_per_call"] > 8000, plain
  assert kept["faults_per_call"] < plain["faults_per_call"] / 20, (plain, kept)


def _transparent_huge_pages_off() -> bool:
  return not THP_MODE.exists() or "[never]" in THP_MODE.read_text()


@pytest.mark.skipif(not GLIBC, reason="glibc.malloc.hugetlb is a glibc tunable")
@pytest.mark.skipif(_transparent_huge_pages_off(), reason="this kernel has transparent huge pages switched off")
def test_huge_pages_fault_the_buffer_in_2mib_at_a_time():
  plain, huge = _probe(), _probe(huge_pages=True)
  assert plain["faults_per_call"] > 8000, plain
  # 64 MiB is 32 huge pages; allow for the edges of the mapping that stay in 4 KiB pages.
  assert huge["faults_per_call"] < plain["faults_per_call"] / 20, (plain, huge)


def test_environ_with_huge_pages_keeps_other_tunables_and_a_users_choice():
  assert host_allocator.environ_with_huge_pages({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  assert host_allocator.environ_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {
      "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
  assert host_allocator.environ_with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None


_RESTART = r"""
import os, sys
print("start", os.environ.get("GLIBC_TUNABLES"), flush=True)
from vqax.ops import host_allocator
host_allocator.restart_with_huge_pages()
print("running", os.environ.get("GLIBC_TUNABLES"))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc.malloc.hugetlb is a glibc tunable")
@pytest.mark.parametrize("switch, starts", [("1", 2), ("0", 1)])
def test_entry_restarts_once_with_the_tunable_unless_switched_off(switch, starts):
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env[host_allocator.HUGE_PAGES_SWITCH] = switch
  out = subprocess.run([sys.executable, "-c", _RESTART], env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert sum(line.startswith("start") for line in lines) == starts, lines
  expected = "glibc.malloc.hugetlb=1" if switch == "1" else "None"
  assert lines[-1] == f"running {expected}", lines
