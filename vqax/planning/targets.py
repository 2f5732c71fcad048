"""What `vqax plan --target` compiles for: this machine's CPU, or a GPU that is not here.

A GPU target is a description of the device (a `GpuTargetConfigProto` text file: the named ones ship in
`gpu_targets/`, see SOURCE.md there) and a topology `<partitions>x<hosts>x<devices per host>`. JAX's CUDA
plugin builds compile-only devices from them (`jax.experimental.topologies`), which need neither a GPU nor a
driver, only the plugin and a ptxas: the `[plan-gpu]` extra. The step is then lowered and compiled for those
devices exactly as training lowers it, so XLA's GPU compiler reports the memory of the program the GPU would
run (its own layers, its fusions, its buffer assignment), not XLA:CPU's.

  cpu                the local CPU devices (XLA:CPU; memory: the host's RAM)
  h100, h200, a100-80g   one such GPU;  h100x8: eight on one host;  h100:1x2x4: two hosts of four
  FILE.txtpb[x8]     a GPU described by a file (as XLA writes it on that GPU; see SOURCE.md)
"""
import dataclasses
import importlib.util
import math
import os
import pathlib
import re

import psutil

from vqax.errors import ConfigError

TARGET_DIR = pathlib.Path(__file__).with_name("gpu_targets")
GPU_TARGETS = {"h100": "h100_sxm.txtpb", "h200": "h200.txtpb", "a100-80g": "a100_sxm_80.txtpb"}
NAMES = ("cpu",) + tuple(GPU_TARGETS)
PLAN_GPU_EXTRA = "pip install 'vqax[plan-gpu]'"
# The modules the extra installs that planning for a GPU imports: the compile-only PJRT client, and the
# plugin whose kernels (PRNG, sorting, linear algebra) decide how some operations lower on a GPU.
PLAN_GPU_MODULES = (("jax_plugins.xla_cuda12", "jax-cuda12-pjrt"), ("jax_cuda12_plugin", "jax-cuda12-plugin"))
# JAX's GPU allocator takes this share of device memory unless XLA_CLIENT_MEM_FRACTION says otherwise.
DEFAULT_ALLOCATOR_FRACTION = 0.75
GPU_CAVEATS = (
    "Compiled for the target without the device: no autotuning ran, so cuDNN convolutions got no workspace "
    "and a GPU may need somewhat more temporary memory than shown. Not included either: the CUDA context, "
    "cuDNN/cuBLAS handles, the input pipeline's prefetched batches and allocator fragmentation.")

_SPEC = re.compile(r"^(?P<base>.+?)(?:x(?P<count>\d+))?(?::(?P<topology>\d+x\d+x\d+))?$")


@dataclasses.dataclass(frozen=True)
class Target:
  """A compile target: its devices' platform and kind, how many, and one device's memory."""
  name: str  # as the user wrote it
  platform: str  # "cpu" or "gpu": what the step is compiled for (layer forms follow it)
  device_kind: str  # e.g. "NVIDIA H100 80GB HBM3"
  n_devices: int
  memory_bytes: int  # one device's memory (the host's RAM for the CPU)
  topology: str = ""  # "<partitions>x<hosts>x<devices per host>" for a GPU target
  config_text: str = dataclasses.field(default="", repr=False)  # GpuTargetConfigProto text for a GPU target
  source: str = ""  # the description file

  @property
  def allocator_fraction(self) -> float:
    """Share of one device's memory JAX's allocator may use: 1 on the CPU, XLA_CLIENT_MEM_FRACTION (default
    0.75) on a GPU."""
    if self.platform == "cpu":
      return 1.0
    return allocator_fraction(os.environ)

  @property
  def usable_bytes(self) -> int:
    """What a step may peak at on one device: the default budget of `vqax plan --target ... --fit`."""
    return int(self.memory_bytes * self.allocator_fraction)

  def describe(self) -> str:
    where = f", topology {self.topology}" if self.topology else ""
    return f"{self.name}: {self.n_devices} x {self.device_kind}{where}"

  def devices(self) -> list:
    """The devices to build the mesh from: compile-only ones for a GPU target (needs the plan-gpu extra)."""
    import jax
    if self.platform == "cpu":
      return jax.devices("cpu")[:self.n_devices]
    missing = missing_plan_gpu_package()
    if missing:
      raise ConfigError(f"--target {self.name}: planning for a GPU on this machine needs the plan-gpu extra "
                        f"({PLAN_GPU_EXTRA}; {missing} is not installed)")
    from jax.experimental import topologies
    try:
      topology = topologies.get_topology_desc(platform="cuda", target_config=self.config_text,
                                              topology=self.topology)
    except NotImplementedError as e:  # the PJRT plugin was found but did not register the CUDA topology
      raise ConfigError(f"--target {self.name}: the CUDA plugin cannot compile without a GPU here ({e}); "
                        f"reinstall the plan-gpu extra ({PLAN_GPU_EXTRA})") from None
    except Exception as e:  # a description this jaxlib cannot parse
      first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      raise ConfigError(f"--target {self.name}: {self.source} is not a GPU description this jaxlib reads "
                        f"({first})") from None
    return list(topology.devices)


def allocator_fraction(environ) -> float:
  """XLA_CLIENT_MEM_FRACTION (or its older name XLA_PYTHON_CLIENT_MEM_FRACTION), else 0.75."""
  text = environ.get("XLA_CLIENT_MEM_FRACTION") or environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
  try:
    return float(text) if text else DEFAULT_ALLOCATOR_FRACTION
  except ValueError:
    return DEFAULT_ALLOCATOR_FRACTION


def missing_plan_gpu_package() -> str | None:
  """The first package of the plan-gpu extra whose module cannot be found (None: all there). Imports nothing."""
  for module, package in PLAN_GPU_MODULES:
    try:
      found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module hidden in sys.modules
      found = False
    if not found:
      return package
  return None


def parse(spec: str) -> Target:
  """`--target` text -> Target; ConfigError naming the option and what it takes."""
  match = _SPEC.match(str(spec).strip())
  expected = (f"--target {spec}: expected one of {', '.join(NAMES)}, optionally with a device count (h100x8) or "
              f"a topology <partitions>x<hosts>x<devices per host> (h100:1x2x4), or a .txtpb GPU description")
  if not match:
    raise ConfigError(expected)
  base, count, topology = match["base"], match["count"], match["topology"]
  if count is not None and int(count) < 1:
    raise ConfigError(f"--target {spec}: the device count must be at least 1")
  if base == "cpu":
    if topology:
      raise ConfigError(f"--target {spec}: a topology is for GPU targets; use cpu or cpuxN")
    return _cpu_target(spec, int(count) if count else None)
  if base in GPU_TARGETS:
    path = TARGET_DIR / GPU_TARGETS[base]
  elif base.endswith(".txtpb") or base.endswith(".pbtxt"):
    path = pathlib.Path(base)
    if not path.is_file():
      raise ConfigError(f"--target {spec}: {path} not found")
  else:
    raise ConfigError(expected)
  if topology:
    n = math.prod(int(x) for x in topology.split("x"))
    if n < 1 or (count and int(count) != n):
      raise ConfigError(f"--target {spec}: topology {topology} has {n} devices")
  else:
    n = int(count) if count else 1
    topology = f"1x1x{n}"
  return gpu_target(spec, path, n, topology)


def gpu_target(name: str, path: pathlib.Path, n_devices: int, topology: str) -> Target:
  """A GPU target from its description file (the memory and kind read from it, without jax)."""
  text = pathlib.Path(path).read_text()
  memory = re.search(r"\bdevice_memory_size:\s*(\d+)", text)
  kind = (re.search(r'\bdevice_description_str:\s*"([^"]*)"', text)
          or re.search(r'\bname:\s*"([^"]*)"', text))
  if not memory or "gpu_device_info" not in text:
    raise ConfigError(f"--target {name}: {path} is not a GPU description (a GpuTargetConfigProto text with "
                      f"gpu_device_info and device_memory_size)")
  return Target(name=name, platform="gpu", device_kind=kind[1] if kind else pathlib.Path(path).stem,
                n_devices=n_devices, memory_bytes=int(memory[1]), topology=topology, config_text=text,
                source=str(path))


def _cpu_target(name: str, count: int | None) -> Target:
  import jax
  available = len(jax.devices("cpu"))
  if count and count > available:
    raise ConfigError(f"--target {name}: this process has {available} CPU device(s); more need "
                      f"XLA_FLAGS=--xla_force_host_platform_device_count={count} before JAX starts")
  return Target(name=name, platform="cpu", device_kind="cpu", n_devices=count or available,
                memory_bytes=int(psutil.virtual_memory().total))


def use_cpu_backend_on_cpu_hosts() -> None:
  """On a host without a GPU or TPU, JAX's own backend is its CPU: say so before JAX starts one.

  With the CUDA plugin installed for planning, JAX would otherwise try to start a GPU backend, fail for want
  of a driver and print a traceback before falling back to the CPU; worse, the failed start leaves the plugin
  unregistered, so no GPU target can be compiled for in that process. Call it before JAX first touches a
  device. A JAX_PLATFORMS or --device choice stands, and so does a WSL host's GPU (/dev/dxg).
  """
  import jax
  from vqax.ops import host_allocator
  if not jax.config.jax_platforms and not host_allocator.accelerator_host() and not os.path.exists("/dev/dxg"):
    jax.config.update("jax_platforms", "cpu")
