"""Progress bar, TensorBoard scalars and memory readings for long runs."""
import logging
import os
import sys
import time

import jax
import psutil
from tqdm import tqdm

log = logging.getLogger(__name__)


def memory_reading() -> dict[str, float]:
  """Host RSS always; device bytes in use and peak where the backend reports them (GPU, TPU).

  With several devices in this process, the largest of each: the fullest device is the one that fails.
  """
  out = {"host_rss_gib": psutil.Process(os.getpid()).memory_info().rss / 2**30}
  in_use, peak = [], []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats() or {}
    except Exception:  # some backends raise instead of returning None
      stats = {}
    if "bytes_in_use" in stats:
      in_use.append(stats["bytes_in_use"])
    if "peak_bytes_in_use" in stats:
      peak.append(stats["peak_bytes_in_use"])
  if in_use:
    out["device_in_use_gib"] = max(in_use) / 2**30
  if peak:
    out["device_peak_gib"] = max(peak) / 2**30
  return out


class Monitor:
  """One place for everything printed or written while training (only process 0 writes)."""

  def __init__(self, workdir, *, total_steps: int, start_step: int, sample_unit: str, progress_bar: bool = True,
               tensorboard: bool = True):
    """progress_bar=False (or stderr not a terminal) prints one line per log interval instead of a bar."""
    self.enabled = jax.process_index() == 0
    self.sample_unit = sample_unit
    self.total_steps = total_steps
    self._use_bar = self.enabled and progress_bar and sys.stderr.isatty()
    self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                     disable=not self._use_bar, mininterval=1.0)
    self._writer = None
    if self.enabled and tensorboard:
      from tensorboardX import SummaryWriter

      from vqax.train import tb_events
      log_dir = os.path.join(workdir, "tensorboard")
      # A resumed run: the curves up to the restored step, once each, as metrics.jsonl holds them.
      tb_events.rebuild_from_metrics(log_dir, os.path.join(workdir, "metrics.jsonl"), start_step)
      self._writer = SummaryWriter(log_dir)
    self._last_time = time.perf_counter()
    self._last_step = start_step

  def step(self, n: int = 1):
    self._bar.update(n)

  def log(self, step: int, scalars: dict[str, float], samples_per_step: int):
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    rate = steps / max(now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, step
    scalars = dict(scalars, steps_per_sec=rate, **{f"{self.sample_unit}_per_sec": rate * samples_per_step})
    scalars.update(memory_reading())
    if self.enabled:
      shown = {k: scalars[k] for k in ("loss", "steps_per_sec", f"{self.sample_unit}_per_sec", "device_in_use_gib",
                                       "device_peak_gib", "host_rss_gib") if k in scalars}
      if self._use_bar:
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
      else:
        print(f"[vqax] step {step}/{self.total_steps} " + " ".join(f"{k}={v:.4g}" for k, v in shown.items()),
              flush=True)
      if self._writer is not None:
        for key, value in scalars.items():
          self._writer.add_scalar(key, float(value), step)
    return scalars

  def write(self, message: str):
    if self.enabled:
      if self._use_bar:
        self._bar.write(message)
      else:
        print(message, flush=True)

  def close(self):
    self._bar.close()
    if self._writer is not None:
      try:
        self._writer.close()
      except OSError as e:  # a full or read-only disk: the error that stopped the run has been said already
        log.warning("TensorBoard events could not be flushed (%s); metrics.jsonl rebuilds them on resume",
                    e.strerror)
