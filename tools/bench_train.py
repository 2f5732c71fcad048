"""Train-step speed of vqax against PyTorch implementations of the same models, side by side.

  python -m tools.bench_train                        # every case, table + docs/bench_train.json
  python -m tools.bench_train --cases vqvae_16x16 --rounds 5 --steps 10
  python -m tools.bench_train --no_compile           # skip torch.compile (its first compile takes minutes)
  python -m tools.bench_train --cases redimnet_b2 --runners "vqax,torch eager" --append   # fewer workers

Needs the torch extra (`pip install -e '.[torch]'`, the CPU build). For each case the runners are worker
processes of this one (so each one's peak RSS is its own), started from one set of weights:
  vqax             the trainer's own jitted step (`make_trainer` + `compile_train_step`), compiled first;
  vqax plain       VQ-VAE and DreaMS: the same step with XLA's own layers (strided conv, nn.ConvTranspose-style
                   lhs-dilated conv, XLA's gradients; Dense over [B, N, C]): what the XLA:CPU forms buy;
  torch eager      `tools/torch_models.py`: the same architecture, loss, AdamW and clipping; for DreaMS
                   `tools/torch_dreams.py`, the official model's computation (materialized m/z bias, one
                   forward per spectrum of a pair, Adam), its weights carried into vqax by the converter;
  torch.compile    the same model through torch.compile (inductor), after its compile;
  ... bf16         bfloat16 compute, float32 weights and optimizer: vqax's compute_dtype="bfloat16", PyTorch's
                   autocast to bfloat16 (quantizer, mel front-end and losses in float32 in both); compared with
                   torch eager bf16, not with float32. Not in the default runners;
  ... +huge pages  again with GLIBC_TUNABLES=glibc.malloc.hugetlb=1, what the `vqax` executable sets for
                   itself (`vqax.ops.host_allocator`): glibc maps and unmaps every large buffer each step
                   and both frameworks page-fault it in again, 4 KiB at a time without it, 2 MiB with it;
  ... +kept memory again with the opt-in settings of VQAX_KEEP_FREED_MEMORY=1: the process keeps its freed
                   memory (no faults, more RSS).
                   Both frameworks get these rows, so that one ratio column compares steps under the same
                   allocator and the other compares each framework as it runs by default.
Before timing, the first step's loss of every runner must agree (same weights, same batch; for DreaMS,
whose step draws its masks and dropout from its own key while the official data set masks on the host, the
loss of one fixed mask draw without dropout, before the first step); then the
runners take turns, `--rounds` times `--steps` steps each after warm-up, so that machine noise falls on all
of them alike. Each turn starts with `--rewarm` untimed steps (recorded as rewarm_s_all): while the other
runners work, a runner sits idle for seconds, and on this project's virtual machines the kernel reports the
memory a process freed to the hypervisor within about two seconds (free page reporting, virtio_balloon);
the first step after such a pause faults all its buffers in afresh through the host. A vqax VQ-VAE step
frees and reallocates its 1.25 GiB temporary buffer every step: after 2 s idle it took 2.4 s, after 5 s
3.9 s (4.3 s of it in the kernel), against 1.2 s back to back, as a training loop runs. Reported: median step time, steps/s, samples/s (patches, or seconds of audio), the speed
ratio to torch eager (the median over rounds of the ratio within each round: the machine's speed drifts
between rounds), and peak memory: the compiled peak (argument + output + temp - alias) for vqax and the
process's peak RSS for every runner.
"""
import argparse
import json
import multiprocessing as mp
import os
import pathlib
import platform
import resource
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
MiB = 2**20
# VoxCeleb2 dev's speaker count: the class-weight matrix has its real size.
SPEAKER_CLASSES = 5994

CASES = {
    # name: (task, config overrides, samples per step, sample unit)
    "vqvae_16x16": ("vqvae", {"batch_size": 16, "n_patches": 16}, 256, "patches"),
    "vqvae_1x8": ("vqvae", {"batch_size": 1, "n_patches": 8}, 8, "patches"),
    "redimnet_b0": ("redimnet_mrl", {"model.size": "b0", "batch_size": 32, "segment_seconds": 2.0}, 64.0,
                    "s audio"),
    "redimnet_b2": ("redimnet_mrl", {"model.size": "b2", "batch_size": 32, "segment_seconds": 2.0}, 64.0,
                    "s audio"),
    # The full DreaMS (116 M parameters) at the seed's size, 2 pairs x 101 tokens.
    "dreams_2x101": ("dreams", {"batch_size": 2, "max_peaks_n": 100}, 2, "pairs"),
}
CONFIG_FILES = {"vqvae": "vqvae_dcase.py", "redimnet_mrl": "redimnet_mrl.py", "dreams": "dreams.py"}
KEPT = " +kept memory"
HUGE = " +huge pages"
BF16 = " bf16"
# A bfloat16 step's first loss differs from float32's by its rounding, not by more.
BF16_LOSS_RTOL = 2e-2
# "vqax plain" (about 20x slower than vqax) is left out of the default: its steps would fill most of every round.
DEFAULT_RUNNERS = ("vqax", "vqax" + HUGE, "torch eager", "torch.compile", "torch eager" + HUGE, "vqax" + KEPT,
                   "torch eager" + KEPT)
PLAIN_LAYERS = {"model.layer_forms": "xla"}  # XLA's own layers: the same function and parameters


def bench_config(task: str, overrides: dict):
  """The case's config, with every schedule that would differ from the PyTorch step switched off."""
  from vqax import config_loading
  config = config_loading.load_config(str(REPO / "configs" / CONFIG_FILES[task]))
  if task == "vqvae":
    config.phase1_epochs = 0  # the "full" phase: every parameter trains
    config.commitment_warmup_epochs = 0  # PyTorch uses commitment_cost from the start
  elif task == "redimnet_mrl":  # (dreams has one phase; masking and dropout draw from the step's own key)
    config.freeze_backbone_epochs = 0
    config.margin_ramp_end_epoch = 0  # the full margin from the start, as the PyTorch loss
    config.model.num_classes = SPEAKER_CLASSES
  # The CLI's own override path: an unknown or mistyped field fails as it would on the command line.
  return config_loading.apply_overrides(config, [f"--config.{key}={value}" for key, value in overrides.items()])


def make_batch(task: str, config, seed: int = 0):
  import numpy as np
  rng = np.random.default_rng(seed)
  if task == "vqvae":
    shape = (int(config.batch_size), int(config.n_patches), 64, 64, 1)
    return {"patches": rng.standard_normal(shape).astype(np.float32)}
  if task == "dreams":  # pairs of synthetic spectra from one run, preprocessed as the loader does
    from vqax.data.spectra import preprocess_many
    from vqax.data.synth_spectra import make_runs
    run, = make_runs(n_runs=1, n_molecules=40, molecules_per_run=40, seed=seed)
    b = int(config.batch_size)
    spectra = [run[i % len(run)] for i in range(2 * b)]
    spec = preprocess_many(spectra, int(config.max_peaks_n)).reshape(b, 2, int(config.max_peaks_n) + 1, 2)
    labels = np.asarray([spectra[2 * i].rt < spectra[2 * i + 1].rt for i in range(b)], np.float32)
    return {"spec": spec, "ro_label": labels}
  samples = int(round(float(config.segment_seconds) * 16000))
  return {"wave": (0.1 * rng.standard_normal((int(config.batch_size), samples))).astype(np.float32),
          "label": rng.integers(0, SPEAKER_CLASSES, int(config.batch_size)).astype(np.int32)}


def dreams_masked_batch(config, seed: int = 0) -> dict:
  """The dreams batch with one fixed mask draw (vqax's masking, from key `seed`), as both frameworks read it:
  'spec' (masked) [B, 2, N, 2], 'spec_real', 'mask' [B, 2, N], 'mz_positions' / 'mz_targets' / 'mz_valid'
  [B, 2, K], 'ro_label' [B]."""
  import jax
  from vqax.models import dreams_objectives as objectives
  batch = make_batch("dreams", config, seed)
  masked = objectives.mask_spectra(jax.random.key(seed), batch["spec"], frac_masks=float(config.frac_masks),
                                   min_n_masks=int(config.min_n_masks), max_mz=float(config.model.max_mz),
                                   bin_size=float(config.model.hot_mz_bin_size))
  return {**jax.device_get(masked), "spec_real": batch["spec"], "ro_label": batch["ro_label"]}


def initial_state(config, task_name: str):
  """The vqax trainer's initial state for this config: what the vqax runner starts from."""
  import dataclasses

  import jax
  from vqax import tasks
  from vqax.train import trainer
  task = tasks.create(config)
  info = dataclasses.replace(task.planning_info(), num_classes=SPEAKER_CLASSES)
  t = trainer.make_trainer(config, task, info)
  spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), make_batch(task_name, config))
  return t, spec, t.init_state()


def prepare_weights(task_name: str, config, workdir: pathlib.Path) -> None:
  """One set of initial weights for every runner, in workdir/torch.pt: vqax's initial state copied into the
  PyTorch model (VQ-VAE), or PyTorch's initialisation converted into vqax (`config.init_from`: ReDimNet's
  backbone, all of DreaMS)."""
  import jax
  import torch
  from tools import torch_models
  if task_name == "vqvae":
    _, _, state = initial_state(config, task_name)
    model = torch_models.VQVAE(tuple(config.model.encoder_channels), int(config.model.latent_dim),
                               int(config.model.num_embeddings))
    torch_models.vqvae_weights_from_flax(model, jax.device_get(state.params))
  elif task_name == "dreams":
    # PyTorch's (the official) initialisation, converted into vqax by `vqax convert dreams`'s own path.
    from tools import torch_dreams
    from vqax.models.dreams import DreaMS
    from vqax.models.dreams_convert import convert_state_dict, save_converted
    from vqax.tasks.dreams.task import model_fields
    torch.manual_seed(int(config.seed))
    architecture = DreaMS(**model_fields(config))
    model = torch_dreams.DreaMS(architecture)
    variables = convert_state_dict(torch_dreams.state_dict_arrays(model), architecture)
    save_converted(variables, architecture, workdir / "converted")
    config.init_from = str(workdir / "converted")
  else:
    # ReDimNet: PyTorch's initialisation of the backbone, converted into vqax (init_from); the head is
    # vqax's initialisation, copied back.
    from vqax.models.redimnet import SIZES
    from vqax.models.redimnet_convert import convert_state_dict, save_converted
    torch.manual_seed(int(config.seed))
    model_config = dict(SIZES[config.model.size])
    model = torch_models.MatryoshkaSpeakerModel(model_config, int(config.model.projection_dim), SPEAKER_CLASSES)
    backbone = {k: v.numpy() for k, v in model.backbone.state_dict().items()}
    save_converted(convert_state_dict(backbone, model_config), model_config, workdir / "converted")
    config.init_from = str(workdir / "converted")
    _, _, state = initial_state(config, task_name)
    torch_models.speaker_head_weights_from_flax(model, jax.device_get(state.params["head"]),
                                                jax.device_get(state.model_state["batch_stats"]["head"]))
  torch.save(model.state_dict(), workdir / "torch.pt")


# ----------------------------------------------------------------------------------------------------------
# Runners (each in its own worker process)
# ----------------------------------------------------------------------------------------------------------


class VqaxRunner:
  def __init__(self, task_name, config):
    from vqax.train import sharding, trainer
    self.task_name, self.config = task_name, config
    t, _, self.state = initial_state(config, task_name)
    self.batch = sharding.global_batch(t.mesh, make_batch(task_name, config))
    start = time.perf_counter()
    self.step = t.compile_train_step(trainer.phase_at(t.phases, 0)).lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    memory = self.step.memory_analysis()
    self.compiled_peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes +
                          memory.temp_size_in_bytes - memory.alias_size_in_bytes) if memory else None

  def __call__(self) -> float:
    self.state, metrics = self.step(self.state, self.batch)
    return float(metrics["loss"])

  def agreement_loss(self) -> float:
    """The loss the runners must agree on (see the docstring), then the first step."""
    if self.task_name != "dreams":
      return self()
    import jax
    from vqax.models import dreams_objectives as objectives
    from vqax.tasks.dreams.task import build_model
    c, model, masked = self.config, build_model(self.config), dreams_masked_batch(self.config)

    def loss(params):
      outputs, _ = model.apply({"params": params}, masked["spec"], masked["mz_positions"], train=False)
      return objectives.pretraining_loss(outputs, masked, masked["ro_label"], gamma=float(c.focal_loss_gamma),
                                         ro_weight=float(c.ret_order_loss_w))[0]
    value = float(jax.jit(loss)(self.state.params))
    self()
    return value


class TorchRunner:
  def __init__(self, task_name, config, workdir, compiled: bool, bf16: bool = False):
    import numpy as np
    import torch
    from tools import torch_models
    self.torch, self.task_name = torch, task_name
    torch.manual_seed(0)
    if task_name == "vqvae":
      model = torch_models.VQVAE(tuple(config.model.encoder_channels), int(config.model.latent_dim),
                                 int(config.model.num_embeddings))
      model.load_state_dict(torch.load(workdir / "torch.pt", weights_only=True))
      forward = torch.compile(model) if compiled else None
      self.step = torch_models.VQVAEStep(model, config, forward, bf16)
      batch = make_batch(task_name, config)["patches"]
      self.args = (torch.from_numpy(batch.reshape((-1,) + batch.shape[2:]).transpose(0, 3, 1, 2).copy()),)
    elif task_name == "dreams":
      from tools import torch_dreams
      from vqax.models.dreams import DreaMS
      from vqax.tasks.dreams.task import model_fields
      model = torch_dreams.DreaMS(DreaMS(**model_fields(config)))
      model.load_state_dict(torch.load(workdir / "torch.pt", weights_only=True))
      model.train()
      forward = torch.compile(model) if compiled else None
      self.step = torch_dreams.DreaMSStep(model, config, forward, bf16)
      masked = dreams_masked_batch(config)  # the official data set masks on the host: not in the step
      self.args = tuple(torch.from_numpy(np.array(masked[k])) for k in ("spec", "spec_real", "mask", "ro_label"))
    else:
      from vqax.models.redimnet import SIZES
      model = torch_models.MatryoshkaSpeakerModel(dict(SIZES[config.model.size]), int(config.model.projection_dim),
                                                  SPEAKER_CLASSES)
      model.load_state_dict(torch.load(workdir / "torch.pt", weights_only=True))
      model.train()
      forward = torch.compile(model) if compiled else None
      self.step = torch_models.SpeakerStep(model, config, forward, bf16)
      batch = make_batch(task_name, config)
      self.args = (torch.from_numpy(batch["wave"]), torch.from_numpy(batch["label"].astype("int64")))
    self.compile_s = None
    self.compiled_peak = None

  def __call__(self) -> float:
    return float(self.step(*self.args))

  def agreement_loss(self) -> float:
    """The loss the runners must agree on (see the docstring), then the first step."""
    if self.task_name != "dreams":
      return self()
    value = self.step.eval_loss(*self.args)
    self()
    return value


def is_bf16(runner: str) -> bool:
  return BF16 + " " in runner + " "


def framework(runner: str) -> str:
  """'vqax', 'vqax plain', 'torch eager' or 'torch.compile': the runner without precision or allocator."""
  name = runner[:len(runner) - len(allocator(runner))]
  return name[:-len(BF16)] if name.endswith(BF16) else name


def _rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def allocator(runner: str) -> str:
  """The runner's host-allocator suffix ('' for glibc's defaults)."""
  return next((suffix for suffix in (HUGE, KEPT) if runner.endswith(suffix)), "")


def _start_worker(ctx, runner: str, args: tuple, baseline=None):
  """A spawned worker; GLIBC_TUNABLES is read at process start, so '+huge pages' goes in its environment."""
  from vqax.ops import host_allocator
  saved = os.environ.pop("GLIBC_TUNABLES", None)
  try:
    if allocator(runner) == HUGE:
      os.environ["GLIBC_TUNABLES"] = host_allocator.HUGE_PAGES_TUNABLE
    process = ctx.Process(target=worker, args=(runner, *args), kwargs={"baseline": baseline}, daemon=True)
    process.start()
  finally:
    os.environ.pop("GLIBC_TUNABLES", None)
    if saved is not None:
      os.environ["GLIBC_TUNABLES"] = saved
  return process


BASELINE = "vqax baseline"


def baseline_runner(tree: str, task_name: str, case: str, init_from: str = ""):
  """The vqax step as another checkout (`--baseline_tree`, e.g. the previous commit) builds it: that tree's
  own bench_train.VqaxRunner on that tree's config, with that tree's vqax imported in this worker."""
  import importlib.util
  tree = pathlib.Path(tree).resolve()
  sys.path[:0] = [str(tree), str(tree / "tools")]  # older trees import their tools as flat modules
  for name in [m for m in sys.modules if m == "vqax" or m.startswith("vqax.")]:
    del sys.modules[name]
  spec = importlib.util.spec_from_file_location("baseline_bench_train", tree / "tools" / "bench_train.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  import vqax
  if not pathlib.Path(vqax.__file__).resolve().is_relative_to(tree):
    raise RuntimeError(f"--baseline_tree {tree}: imported vqax from {vqax.__file__}")
  config = module.bench_config(task_name, module.CASES[case][1])
  if init_from:
    config.init_from = init_from  # the same converted PyTorch initialisation as the other runners
  return module.VqaxRunner(task_name, config)


def worker(runner: str, task_name: str, config, workdir: str, conn, baseline=None) -> None:
  """Build the runner, report the first step's loss, then time steps on request."""
  workdir = pathlib.Path(workdir)
  if allocator(runner) == KEPT:
    from vqax.ops import host_allocator
    host_allocator.keep_freed_host_memory()  # before jax or torch starts a thread, as `vqax` does when asked
  try:
    start = time.perf_counter()
    if framework(runner) == BASELINE:
      run = baseline_runner(*baseline)
    elif runner.startswith("vqax"):
      run = VqaxRunner(task_name, config)
    else:
      run = TorchRunner(task_name, config, workdir, compiled=runner.startswith("torch.compile"),
                        bf16=is_bf16(runner))
    # includes torch.compile's compile; an older tree's runner (baseline) has no agreement_loss
    first_loss = run.agreement_loss() if hasattr(run, "agreement_loss") else run()
    setup_s = time.perf_counter() - start
    conn.send({"first_loss": first_loss, "setup_s": setup_s, "compile_s": run.compile_s,
               "compiled_peak": run.compiled_peak})
    while True:
      command = conn.recv()
      if command is None:
        conn.send({"peak_rss": _rss_bytes()})
        return
      rewarm, steps = command
      times = []
      for _ in range(rewarm + steps):
        start = time.perf_counter()
        run()  # float(loss) waits for the step
        times.append(time.perf_counter() - start)
      conn.send({"rewarm_times": times[:rewarm], "times": times[rewarm:]})
  except Exception as e:  # reported in the table, e.g. torch.compile failing on this machine
    conn.send({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]})


def bench_case(name: str, runners: list[str], rounds: int, steps: int, warmup: int, setup_timeout: float,
               rewarm: int = 1, baseline_tree: str | None = None) -> dict:
  task_name, overrides, samples, unit = CASES[name]
  with tempfile.TemporaryDirectory(prefix="vqax-bench-") as tmp:
    config = bench_config(task_name, overrides)
    prepare_weights(task_name, config, pathlib.Path(tmp))
    if task_name not in ("vqvae", "dreams"):
      runners = [r for r in runners if framework(r) != "vqax plain"]
    ctx = mp.get_context("spawn")
    workers, rows = {}, {r: {"runner": r} for r in runners}
    for r in runners:
      run_config = bench_config(task_name, {**overrides, **(PLAIN_LAYERS if framework(r) == "vqax plain" else {}),
                                            **({"compute_dtype": "bfloat16"} if is_bf16(r) else {})})
      if task_name in ("redimnet_mrl", "dreams"):
        run_config.init_from = config.init_from  # the converted PyTorch initialisation
      parent, child = ctx.Pipe()
      baseline = ((baseline_tree, task_name, name, run_config.get("init_from", "")) if framework(r) == BASELINE
                  else None)
      process = _start_worker(ctx, r, (task_name, run_config, tmp, child), baseline)
      # One worker sets up at a time: compiles do not compete with each other.
      if not parent.poll(setup_timeout):
        process.kill()
        rows[r]["error"] = f"setup took over {setup_timeout:.0f} s"
        continue
      report = parent.recv()
      rows[r].update(report)
      if "error" in report:
        process.join()
        continue
      parent.send((0, warmup))
      parent.recv()
      workers[r] = (process, parent)
      print(f"  {name} {r}: ready in {report['setup_s']:.1f} s, first loss {report['first_loss']:.6g}",
            flush=True)
    losses = {r: rows[r]["first_loss"] for r in workers}
    for r in list(workers):  # every runner starts from the same weights and batch: same first loss
      reference = losses.get("torch eager", losses.get("vqax"))
      if reference is None:  # bfloat16 runners only: against each other
        reference = losses.get("torch eager" + BF16, losses.get("vqax" + BF16))
      rtol = BF16_LOSS_RTOL if is_bf16(r) else 1e-3
      if reference is not None and abs(losses[r] - reference) > rtol * max(1.0, abs(reference)):
        rows[r]["error"] = f"first loss {losses[r]:.6g} differs from {reference:.6g}: not the same computation"
    times = {r: [] for r in workers}
    rewarm_times = {r: [] for r in workers}
    round_medians = {r: [] for r in workers}
    for i in range(rounds):
      order = list(workers)[i % len(workers):] + list(workers)[:i % len(workers)]
      for r in order:
        try:
          workers[r][1].send((rewarm, steps))
          reply = workers[r][1].recv()
          round_times = reply["times"]
          times[r] += round_times
          rewarm_times[r] += reply["rewarm_times"]
          round_medians[r].append(statistics.median(round_times))
        except (EOFError, OSError):  # the worker died, e.g. killed for memory: report it, keep the others
          rows[r]["error"] = f"worker died in round {i + 1} (exit code {workers[r][0].exitcode})"
          del workers[r]
    for r, (process, conn) in workers.items():
      conn.send(None)
      rows[r]["peak_rss"] = conn.recv()["peak_rss"]
      process.join()
      median = statistics.median(times[r])
      rows[r].update(step_s=median, steps_per_s=1 / median, samples_per_s=samples / median,
                     step_s_all=times[r], step_s_rounds=round_medians[r], rewarm_s_all=rewarm_times[r])
  for row in rows.values():  # against torch eager as it runs by default, and under the row's own allocator
    precision = BF16 if is_bf16(row["runner"]) else ""  # bfloat16 rows against torch eager in bfloat16
    for key, baseline in (("vs_torch_eager", "torch eager" + precision),
                          ("vs_torch_eager_same_allocator", "torch eager" + precision + allocator(row["runner"])),
                          ("vs_baseline_same_allocator", BASELINE + precision + allocator(row["runner"]))):
      ratio = paired_speedup(row.get("step_s_rounds"), rows.get(baseline, {}).get("step_s_rounds"))
      if ratio is not None:
        row[key] = ratio
  return {"case": name, "config": overrides, "samples_per_step": samples, "sample_unit": unit,
          "rows": list(rows.values())}


def paired_speedup(runner_rounds, baseline_rounds) -> float | None:
  """Median over rounds of baseline time / runner time, each pair timed minutes apart in the same round.

  A shared machine's speed drifts by tens of percent from one minute to the next; a ratio of two overall
  medians would mix rounds the drift treated differently, the per-round ratio cancels it.
  """
  if not runner_rounds or not baseline_rounds:
    return None
  return statistics.median(b / r for r, b in zip(runner_rounds, baseline_rounds))


def table(results: list[dict]) -> str:
  lines = ["| case | runner | step (ms) | steps/s | samples/s | vs torch eager | vs torch eager, same allocator | "
           "vs baseline tree, same allocator | compiled peak (MiB) | peak RSS (MiB) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for result in results:
    for row in result["rows"]:
      if "steps_per_s" not in row:
        lines.append(f"| {result['case']} | {row['runner']} | {row.get('error', 'failed')} ||||||")
        continue
      peak = f"{row['compiled_peak'] / MiB:.0f}" if row.get("compiled_peak") else "-"
      ratio, ratio_same, ratio_baseline = (f"{row[key]:.2f}x" if key in row else "-" for key in
                                           ("vs_torch_eager", "vs_torch_eager_same_allocator",
                                            "vs_baseline_same_allocator"))
      lines.append(f"| {result['case']} | {row['runner']} | {1000 * row['step_s']:.0f} | {row['steps_per_s']:.2f} | "
                   f"{row['samples_per_s']:.1f} {result['sample_unit']} | {ratio} | {ratio_same} | "
                   f"{ratio_baseline} | {peak} | {row['peak_rss'] / MiB:.0f} |")
  return "\n".join(lines)


def machine(with_torch: bool | None = None) -> str:
  """The host's CPU, core count and framework versions, as the benchmarks record them (torch's when it is
  installed, unless with_torch says)."""
  if with_torch is None:
    import importlib.util
    with_torch = importlib.util.find_spec("torch") is not None
  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  import jax
  host = f"{cpu}, {os.cpu_count()} cores; jax {jax.__version__} ({jax.default_backend()})"
  if not with_torch:
    return host
  import torch
  return f"{host}, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per runner per round")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
  parser.add_argument("--rewarm", type=int, default=1,
                      help="untimed steps at the start of each runner's turn in every round (see the docstring)")
  parser.add_argument("--no_compile", action="store_true", help="leave out torch.compile")
  parser.add_argument("--setup_timeout", type=float, default=1200, help="seconds allowed for one runner's setup")
  parser.add_argument("--runners", default=None,
                      help=f"comma-separated runners (default: {', '.join(DEFAULT_RUNNERS)}); any of vqax, vqax plain, "
                           f"torch eager, torch.compile, then optionally '{BF16.strip()}', then optionally "
                           f"'{HUGE.strip()}' or '{KEPT.strip()}'")
  parser.add_argument("--baseline_tree", default=None,
                      help="another checkout (e.g. `git worktree add /tmp/prev HEAD~1`): adds the runners "
                           f"'{BASELINE}' and '{BASELINE}{HUGE}', its vqax step, side by side with this one")
  parser.add_argument("--json", default=str(REPO / "docs" / "bench_train.json"))
  parser.add_argument("--append", action="store_true", help="keep the other cases already in --json")
  args = parser.parse_args(argv)
  cases = args.cases.split(",")
  unknown = [c for c in cases if c not in CASES]
  if unknown:
    parser.error(f"--cases: unknown {', '.join(unknown)}; expected some of {', '.join(CASES)}")
  bases = ("vqax", "vqax plain", "torch eager", "torch.compile") + ((BASELINE,) if args.baseline_tree else ())
  known = [base + precision + suffix for base in bases for precision in ("", BF16) for suffix in ("", HUGE, KEPT)]
  runners = list(DEFAULT_RUNNERS) + ([BASELINE, BASELINE + HUGE] if args.baseline_tree else [])
  if args.runners:
    wanted = args.runners.split(",")
    bad = [r for r in wanted if r not in known]
    if bad:
      parser.error(f"--runners: unknown {', '.join(bad)}; expected some of {', '.join(known)}")
    runners = [r for r in known if r in wanted]
  if args.no_compile:
    runners = [r for r in runners if not r.startswith("torch.compile")]
  json_path = pathlib.Path(args.json) if args.json else None
  results = []
  if json_path and args.append and json_path.exists():  # earlier cases of this file, replaced case by case
    results = [r for r in json.loads(json_path.read_text())["results"] if r["case"] not in cases]
  for case in cases:
    print(f"{case}:", flush=True)
    result = bench_case(case, runners, args.rounds, args.steps, args.warmup, args.setup_timeout, args.rewarm,
                        args.baseline_tree)
    # Per case: with --append a file holds cases measured on different days, or machines.
    result.update(machine=machine(), date=time.strftime("%Y-%m-%d"), rounds=args.rounds, steps=args.steps,
                  rewarm=args.rewarm)
    results.append(result)
    results.sort(key=lambda r: list(CASES).index(r["case"]))
    if json_path:  # after every case: a later case failing loses nothing
      json_path.write_text(json.dumps({"machine": machine(), "rounds": args.rounds, "steps": args.steps,
                                       "results": results}, indent=1))
  print("Median of rounds x steps alternating timed steps per runner (after the untimed re-warm steps that "
        "start each turn); measured on:")
  for result in results:
    print(f"  {result['case']}: {result.get('machine', 'machine not recorded')}, {result.get('date', '-')}, "
          f"{result.get('rounds', '?')} x {result.get('steps', '?')}, re-warm {result.get('rewarm', 0)}")
  print(table(results))
  if json_path:
    print(f"wrote {json_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
