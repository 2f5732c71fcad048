"""How the host allocator serves XLA:CPU's large per-step buffers: the page faults that cost CPU steps.

XLA:CPU allocates each execution's temporary buffer (1.25 GiB for the VQ-VAE step at 16 x 16 patches) and
its large matmul scratch with posix_memalign from a worker thread. glibc serves a request that large from a
fresh mmap and unmaps it on free, so every step faults the whole buffer in again, 4 KiB page by page:
measured on a 2-core AMD EPYC, 330,000 minor page faults per VQ-VAE step and 900,000 per ReDimNet-b0 step.
Two remedies, each measured in `tools/bench_train.py`:

* Huge pages (on by default for `vqax` commands; VQAX_HUGE_PAGES=0 turns it off). glibc's
  `glibc.malloc.hugetlb=1` tunable asks the kernel for transparent huge pages on those mappings: the same
  buffer is faulted in 2 MiB at a time (about 1,500 faults per VQ-VAE step instead of 330,000), with no
  more resident memory. glibc reads tunables only at process start, so `entry` (the `vqax` executable)
  starts the process again with GLIBC_TUNABLES extended, before anything heavy is imported.
* Kept memory (opt-in, VQAX_KEEP_FREED_MEMORY=1). One malloc arena, no mmap and no trimming: glibc hands
  the same pages back each step (0 faults). Off by default because one heap that never shrinks fragments:
  the VQ-VAE process grows by one temp buffer per step for its first few steps and then holds 5.5-6.8 GiB
  of host RSS instead of 1.9 GiB. It is applied first thing in `main`, before JAX starts its threads: a
  thread that already holds a malloc arena keeps it.

glibc (Linux) only; elsewhere both are no-ops.
"""
import ctypes
import ctypes.util
import logging
import os
import platform
import sys

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
ENV_SWITCH = "VQAX_KEEP_FREED_MEMORY"
HUGE_PAGES_SWITCH = "VQAX_HUGE_PAGES"
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
_TRUE = ("1", "true", "yes", "on")


def keep_memory_requested() -> bool:
  """Whether VQAX_KEEP_FREED_MEMORY asks for it (1/true/yes/on)."""
  return os.environ.get(ENV_SWITCH, "0").strip().lower() in _TRUE


def huge_pages_requested() -> bool:
  """Whether VQAX_HUGE_PAGES leaves huge pages on (the default) on a glibc system."""
  on = os.environ.get(HUGE_PAGES_SWITCH, "1").strip().lower() in _TRUE
  return on and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def environ_with_huge_pages(environ) -> dict | None:
  """`environ` with the hugetlb tunable added to GLIBC_TUNABLES, or None when it is there already."""
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb=" in tunables:  # ours from the first start, or the user's own choice
    return None
  return {**environ, "GLIBC_TUNABLES": f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else HUGE_PAGES_TUNABLE}


def accelerator_host(environ=None) -> bool:
  """Whether JAX will run on a GPU or TPU here (told without importing JAX, which the restart must precede).

  JAX_PLATFORMS decides when set; otherwise a GPU needs both an NVIDIA/ROCm driver and a JAX plugin for it,
  and a TPU both its device files and libtpu.
  """
  environ = os.environ if environ is None else environ
  platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms.split(",")[0] != "cpu"
  import glob
  import importlib.util
  installed = lambda *names: any(importlib.util.find_spec(n) is not None for n in names)
  nvidia = os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")
  if nvidia and installed("jax_cuda12_plugin", "jax_cuda13_plugin"):
    return True
  if os.path.exists("/dev/kfd") and installed("jax_rocm60_plugin", "jax_rocm7_plugin"):
    return True
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")) and installed("libtpu")


def restart_with_huge_pages() -> None:
  """Replace this process by the same command with the hugetlb tunable set; returns if nothing to do.

  Only on CPU hosts: huge pages help XLA:CPU's host buffers, and a GPU/TPU host keeps its process.
  Call only from a program's entry point (never from library code or a test process): the process image is
  replaced. `sys.orig_argv` repeats the interpreter's own options, `-m`/`-c` included.
  """
  if not huge_pages_requested() or accelerator_host():
    return
  environ = environ_with_huge_pages(os.environ)
  if environ is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, sys.orig_argv, environ)
  except OSError as e:  # a sandbox without exec: run on, only slower
    logging.getLogger(__name__).info("could not restart with huge pages (%s)", e)


def keep_freed_host_memory() -> bool:
  """One malloc arena, no mmap for large blocks, never trim the heap. True if glibc took all three."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  # A trim threshold of -1 reads as SIZE_MAX in glibc: the top of the heap is never given back.
  applied = [mallopt(_M_ARENA_MAX, 1), mallopt(_M_MMAP_MAX, 0), mallopt(_M_TRIM_THRESHOLD, -1)]
  if not all(applied):
    logging.getLogger(__name__).info("mallopt refused some settings (%s): host memory is freed as usual",
                                     applied)
  return all(applied)
