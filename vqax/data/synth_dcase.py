"""Synthetic machine sounds in the DCASE2020 Task 2 development layout.

Lets the anomaly-detection pipeline, its tests and the demo run without the real (multi-GB) data set:
`<out>/<machine_type>/train/normal_id_XX_NNNNNNNN.wav` and `<out>/<machine_type>/test/{normal,anomaly}_id_XX_
NNNNNNNN.wav`, 16 kHz mono PCM 16-bit. Each machine type is a small physical model (rotating harmonics,
coloured noise, resonant impacts), each machine ID has its own geometry, and anomalies are realistic faults
that change the spectrum but not the loudness: every clip is normalised to a level drawn independently of its
label, so a level threshold cannot separate them.

Every clip is seeded from (seed, machine type, ID, split, label, index) alone, so it is bit-identical no
matter which other clips are generated.
"""
import functools
import json
import pathlib
import re
import zlib
from typing import Callable, NamedTuple

import numpy as np
import scipy.fft
import soundfile as sf

from vqax.errors import ConfigError, DataError

MANIFEST = "synth_manifest.json"
FILE_RE = re.compile(r"^(normal|anomaly)_id_(\d{2})_(\d{8})\.wav$")
_GENERATOR = "vqax.data.synth_dcase"
_VERSION = 1
_TAU = 2.0 * np.pi


# ---------------------------------------------------------------------------------------------------------
# Output folder and manifest (shared with synth_speakers).


def prepare_output(out: pathlib.Path, header: dict, overwrite: bool,
                   owned: Callable[[dict | None], list[pathlib.Path]]) -> dict | None:
  """The finished manifest when `out` already holds this exact data set, else None after clearing old output.

  `header` identifies the data set (generator, version, parameters); `owned(old_manifest)` lists the files
  this generator would write or wrote before, the only files ever deleted.
  """
  path = out / MANIFEST
  old = None
  if path.exists():
    try:
      old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
      if not overwrite:
        raise DataError(f"{path} is not a readable manifest ({e}); delete it or pass overwrite=True") from e
  files = owned(old)
  if old is not None and old.get("complete") and not overwrite:
    same = {k: old.get(k) for k in header} == header
    if same and len(files) == old.get("n_files"):
      return old
    if not same:
      if old.get("generator") != header["generator"]:
        what = f"data written by {old.get('generator')}"
      else:
        diff = sorted(k for k in header["params"] if old.get("params", {}).get(k) != header["params"][k])
        what = f"a synthetic set made with other settings ({', '.join(diff) or 'generator version'})"
      raise ConfigError(f"{out} holds {what}; pass overwrite=True or choose another output folder")
  if old is None and files and not overwrite:
    raise ConfigError(f"{out} already has wav files not written by this generator (no {MANIFEST}); "
                      "pass overwrite=True or choose an empty output folder")
  if path.exists():
    path.unlink()
  for f in files:
    f.unlink()
  out.mkdir(parents=True, exist_ok=True)
  write_manifest(out, {**header, "complete": False})
  return None


def write_manifest(out: pathlib.Path, manifest: dict) -> None:
  tmp = out / (MANIFEST + ".tmp")
  tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
  tmp.replace(out / MANIFEST)


def write_wav(path: pathlib.Path, audio: np.ndarray, sample_rate: int) -> None:
  """16-bit PCM, rounded here (not by libsndfile) so the bytes depend only on `audio`."""
  pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)
  sf.write(str(path), pcm, sample_rate, subtype="PCM_16", format="WAV")


def clip_rng(seed: int, *keys) -> np.random.Generator:
  """A generator seeded from `seed` and string/int keys only, so a clip never depends on its neighbours."""
  words = [seed & 0xFFFFFFFF, seed >> 32]
  words += [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
  return np.random.default_rng(np.random.SeedSequence(words))


def check_seed(seed) -> int:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
    raise ConfigError(f"seed={seed!r}: expected an integer in [0, 2**63)")
  return int(seed)


def check_count(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ConfigError(f"{name}={value!r}: expected an integer >= {minimum}")
  return int(value)


def check_sample_rate(sample_rate) -> int:
  if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or not (
      8000 <= sample_rate <= 96000):
    raise ConfigError(f"sample_rate={sample_rate!r}: expected an integer in [8000, 96000] Hz")
  return int(sample_rate)


# ---------------------------------------------------------------------------------------------------------
# Signal building blocks. All return float64 arrays of length n.


def _unit(x: np.ndarray) -> np.ndarray:
  return x / (np.sqrt(np.mean(x * x)) + 1e-12)


def _db(db):
  return 10.0 ** (np.asarray(db) / 20.0)


def _band(f: np.ndarray, centre: float, octaves: float) -> np.ndarray:
  """Gaussian band on a log-frequency axis (a resonance or a noise band), peak 1."""
  return np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / centre) / octaves) ** 2)


@functools.lru_cache(maxsize=8)
def _rfft_freqs(n: int, sr: int) -> np.ndarray:
  freqs = np.fft.rfftfreq(n, 1.0 / sr).astype(np.float32)
  freqs.flags.writeable = False
  return freqs


def _noise(rng: np.random.Generator, n: int, sr: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  """Stationary Gaussian noise with magnitude response gain(freqs_hz), unit RMS (float32 FFT: 16-bit output)."""
  spec = rng.standard_normal(2 * (n // 2 + 1), dtype=np.float32).view(np.complex64)
  return _unit(scipy.fft.irfft(spec * gain(_rfft_freqs(n, sr)).astype(np.float32), n))


def _wander(rng: np.random.Generator, n: int, sr: int, step_s: float, std: float) -> np.ndarray:
  """Slow random drift (piecewise linear between knots every `step_s`), e.g. for speed or load."""
  knots = rng.standard_normal(int(n / sr / step_s) + 2) * std
  return np.interp(np.arange(n) / sr, np.arange(knots.size) * step_s, knots)


def _phase(rng: np.random.Generator, freq: np.ndarray, sr: int) -> np.ndarray:
  """Running phase (radians) of a source whose frequency varies per sample."""
  return _TAU * np.cumsum(freq) / sr + rng.uniform(0.0, _TAU)


def _harmonics(rng: np.random.Generator, phase: np.ndarray, orders, amps, f_mean: float, sr: int) -> np.ndarray:
  """Sum of amps[k] * sin(orders[k] * phase + random offset), skipping partials near Nyquist.

  Integer orders come from successive powers of exp(i * phase), which is far cheaper than one sin per partial.
  """
  orders, amps = np.asarray(orders, dtype=np.float64), np.asarray(amps, dtype=np.float64)
  coefs = amps * np.exp(1j * rng.uniform(0.0, _TAU, orders.size))
  keep = orders * f_mean < 0.45 * sr
  cycles = phase / _TAU
  wrapped = (_TAU * (cycles - np.floor(cycles))).astype(np.float32)  # float32 trig is exact enough in [0, 2pi)
  base = np.cos(wrapped) + 1j * np.sin(wrapped)
  out = np.zeros(phase.size, dtype=np.complex64)
  power = np.ones_like(out)
  for k in range(1, int(orders[keep].max(initial=0.0)) + 1):
    power *= base
    for c in coefs[keep & (orders == k)]:
      out += np.complex64(c) * power
  for o, c in zip(orders[keep], coefs[keep]):
    if o != np.round(o):
      out += c * np.exp(1j * o * phase)
  return out.imag.astype(np.float64)


def _modes(sr: int, freqs, decays_s, amps, length_s: float) -> np.ndarray:
  """Impulse response of a few damped modes: the ring of a struck housing, bearing race or valve seat."""
  t = np.arange(int(length_s * sr)) / sr
  freqs, decays_s, amps = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (freqs, decays_s, amps))
  keep = freqs < 0.45 * sr
  ring = amps[keep, None] * np.exp(-t / decays_s[keep, None]) * np.sin(_TAU * freqs[keep, None] * t)
  return ring.sum(axis=0)


def _strike(n: int, sr: int, times: np.ndarray, amps, ir: np.ndarray) -> np.ndarray:
  """Impulses at `times` (s) with `amps`, each ringing with `ir`."""
  times = np.asarray(times, dtype=np.float64)
  idx = np.round(times * sr).astype(np.int64)
  amps = np.broadcast_to(np.asarray(amps, dtype=np.float64), idx.shape)
  keep = (idx >= 0) & (idx < n)
  train = np.zeros(n)
  np.add.at(train, idx[keep], amps[keep])
  return _convolve(train, ir) if ir.size else train


def _convolve(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
  """Linear convolution truncated to len(x): one float32 FFT product (a few ms for 10 s at 16 kHz)."""
  m = scipy.fft.next_fast_len(x.size + ir.size, real=True)
  spec = scipy.fft.rfft(x.astype(np.float32), m) * scipy.fft.rfft(ir.astype(np.float32), m)
  return scipy.fft.irfft(spec, m)[:x.size].astype(np.float64)


def _periodic_times(rng: np.random.Generator, rate_hz: float, seconds: float, jitter: float) -> np.ndarray:
  """Event times at `rate_hz` with relative period jitter (bearing defects slip a little)."""
  periods = (1.0 + jitter * rng.standard_normal(int(seconds * rate_hz) + 2)) / rate_hz
  return rng.uniform(0.0, 1.0 / rate_hz) + np.concatenate([[0.0], np.cumsum(periods)])


def _bearing(rng: np.random.Generator, n: int, sr: int, rot: np.ndarray, rate_hz: float, res_hz: float,
             sev: float) -> np.ndarray:
  """Outer-race defect: periodic resonant impacts, louder in the load zone (once per revolution)."""
  times = _periodic_times(rng, rate_hz, n / sr, 0.01)
  times = times[times < n / sr]
  load = 0.55 + 0.45 * np.cos(rot[np.minimum((times * sr).astype(np.int64), n - 1)])
  amps = load * (1.0 + 0.2 * rng.standard_normal(times.size))
  ir = _modes(sr, [res_hz, res_hz * 1.37], [0.0015 + 0.001 * sev, 0.001], [1.0, 0.5], 0.02)
  return _strike(n, sr, times, amps, ir)


def _background(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
  """Factory floor: sloped noise, a distant machine's hum and the odd far-away impact; unit RMS."""
  slope, tint = rng.uniform(-5.0, -2.0) / 6.02, rng.uniform(200.0, 2000.0)
  floor = _noise(rng, n, sr, lambda f: np.maximum(f, 30.0) ** slope * (1.0 + 0.5 * _band(f, tint, 1.0)))
  f_hum = rng.uniform(40.0, 250.0)
  hum = _harmonics(rng, _phase(rng, np.full(n, f_hum), sr), np.arange(1, 6), np.arange(1, 6) ** -1.5, f_hum, sr)
  times = rng.uniform(0.0, n / sr, rng.poisson(0.3 * n / sr))
  thumps = _strike(n, sr, times, rng.uniform(0.2, 1.0, times.size),
                   _modes(sr, rng.uniform(80, 400, 2), [0.03, 0.02], [1.0, 0.5], 0.15))
  out = floor + _db(rng.uniform(-18.0, -8.0)) * _unit(hum)
  if times.size:  # peaks a few times the floor's RMS
    out += _db(rng.uniform(-12.0, -4.0)) * 3.0 * thumps / np.abs(thumps).max()
  return _unit(out)


# ---------------------------------------------------------------------------------------------------------
# Machines. `params(rng)` draws one unit's geometry (per machine ID); `synth(rng, p, n, sr, kind, sev)` renders
# a clip of that unit, with fault `kind` ("normal" or one of `anomalies`) at severity sev in [0, 1).


def _fan_params(rng):
  return {
      "f_rot": rng.uniform(12.0, 24.0), "blades": int(rng.choice([5, 6, 7, 9, 11])),
      "harm_slope": rng.uniform(0.6, 1.1), "tonal_db": rng.uniform(-9.0, -3.0),
      "hump_hz": rng.uniform(250.0, 1000.0), "hf_slope": rng.uniform(1.2, 2.2),
      "res_hz": rng.uniform(700.0, 3200.0, 2), "res_db": rng.uniform(3.0, 8.0, 2), "bp_am": rng.uniform(0.1, 0.3),
      "bearing_order": rng.uniform(3.1, 5.4), "bearing_hz": rng.uniform(2500.0, 5000.0),
      "rub_hz": rng.uniform(1500.0, 4000.0), "blade_k": int(rng.integers(2, 5)),
  }


def _fan(rng, p, n, sr, kind, sev):
  f_rot = p["f_rot"] * (1.0 + 0.015 * rng.standard_normal()) * (1.0 + _wander(rng, n, sr, 0.7, 0.004))
  rot = _phase(rng, f_rot, sr)
  orders = np.arange(1, 13, dtype=np.float64)
  amps = orders ** -p["harm_slope"] * _db(rng.normal(0.0, 1.0, orders.size))
  f_bp = p["blades"] * f_rot.mean()
  if kind == "blade":  # a damaged or fouled blade: one blade-pass harmonic up, plus a half-order partial
    k = p["blade_k"]
    amps[k - 1] *= _db(4.0 + 6.0 * sev)
    orders, amps = np.append(orders, k + 0.5), np.append(amps, amps[k - 1] * 0.5)
  tonal = _harmonics(rng, p["blades"] * rot, orders, amps, f_bp, sr)

  def gain(f):
    r = (f + 1.0) / p["hump_hz"]
    g = r / (1.0 + r ** (1.0 + p["hf_slope"]))
    for hz, db in zip(p["res_hz"], p["res_db"]):
      g = g * (1.0 + (_db(db) - 1.0) * _band(f, hz, 0.15))
    return g

  air = _noise(rng, n, sr, gain) * (1.0 + p["bp_am"] * np.sin(p["blades"] * rot))
  x = _unit(air) + _db(p["tonal_db"]) * _unit(tonal)
  if kind == "imbalance":  # once-per-revolution force: 1x/2x tones and the whole sound pulsing with rotation
    x = x * (1.0 + (0.12 + 0.2 * sev) * np.sin(rot))
    x += _db(-14.0 + 8.0 * sev) * _unit(np.sin(rot) + 0.5 * np.sin(2.0 * rot + 1.0))
  elif kind == "bearing":
    x += _db(-21.0 + 8.0 * sev) * _unit(_bearing(rng, n, sr, rot, p["bearing_order"] * f_rot.mean(),
                                                 p["bearing_hz"], sev))
  elif kind == "rub":  # blade tip touching the shroud once per turn: a narrow friction band, gated by rotation
    band = _noise(rng, n, sr, lambda f: _band(f, p["rub_hz"], 0.2))
    x += _db(-20.0 + 8.0 * sev) * _unit(band * np.maximum(0.0, np.sin(rot)) ** 2)
  return x


def _pump_params(rng):
  return {
      "f_rot": rng.uniform(24.0, 48.0), "vanes": int(rng.choice([5, 6, 7])), "rot_slope": rng.uniform(1.0, 1.6),
      "hum_hz": float(rng.choice([100.0, 120.0])), "tonal_db": rng.uniform(-7.0, -2.0),
      "flow_hz": rng.uniform(200.0, 900.0), "flow_oct": rng.uniform(1.0, 1.8),
      "pipe_hz": rng.uniform(400.0, 2500.0, 2), "pulse_hz": rng.uniform(0.4, 1.5),
      "pulse_depth": rng.uniform(0.1, 0.25),
      "bearing_order": rng.uniform(2.8, 4.8), "bearing_hz": rng.uniform(1800.0, 4500.0),
      "leak_hz": rng.uniform(3000.0, 6000.0),
  }


def _pump(rng, p, n, sr, kind, sev):
  t = np.arange(n) / sr
  load = -(0.03 + 0.03 * sev) if kind == "clog" else 0.0  # a clogged impeller drags the motor down
  f_rot = p["f_rot"] * (1.0 + load + 0.01 * rng.standard_normal()) * (1.0 + _wander(rng, n, sr, 1.0, 0.003))
  rot = _phase(rng, f_rot, sr)
  depth, rate = p["pulse_depth"], p["pulse_hz"]
  if kind == "clog":
    depth, rate = depth + 0.25 + 0.2 * sev, rate * 1.6
  pulse = 1.0 + depth * np.sin(_TAU * rate * (1.0 + 0.05 * rng.standard_normal()) * t + rng.uniform(0.0, _TAU))
  shaft_orders = np.arange(1.0, 9.0)
  shaft_amps = shaft_orders ** -p["rot_slope"] * _db(rng.normal(0.0, 1.0, shaft_orders.size))
  vane_orders = np.arange(1.0, 5.0)
  vane_amps = 2.0 * vane_orders ** -1.0 * _db(rng.normal(0.0, 1.0, vane_orders.size))
  if kind == "misalign":  # coupling misalignment: strong 2x and 3x running speed
    shaft_amps[1] *= _db(7.0 + 6.0 * sev)
    shaft_amps[2] *= _db(4.0 + 4.0 * sev)
  if kind == "clog":
    vane_amps[1] *= _db(4.0 + 4.0 * sev)
  f_mean = f_rot.mean()
  shaft = _harmonics(rng, rot, shaft_orders, shaft_amps, f_mean, sr)
  vane = _harmonics(rng, p["vanes"] * rot, vane_orders, vane_amps, p["vanes"] * f_mean, sr) * pulse
  hum = _harmonics(rng, _phase(rng, np.full(n, p["hum_hz"]), sr), [1.0, 2.0], [1.0, 0.3], p["hum_hz"], sr)

  def gain(f):
    g = _band(f, p["flow_hz"], p["flow_oct"]) + 0.05 * np.minimum(1.0, 300.0 / (f + 1.0))
    for hz in p["pipe_hz"]:
      g = g * (1.0 + 1.5 * _band(f, hz, 0.12))
    return g

  fluid = _noise(rng, n, sr, gain) * pulse
  x = _unit(fluid) + _db(p["tonal_db"]) * _unit(shaft + vane) + _db(-14.0) * _unit(hum)
  if kind == "bearing":
    x += _db(-21.0 + 8.0 * sev) * _unit(_bearing(rng, n, sr, rot, p["bearing_order"] * f_mean, p["bearing_hz"],
                                                 sev))
  elif kind == "leak":  # a seal leak: a narrow high hiss that breathes with the pressure pulsation
    hiss = _noise(rng, n, sr, lambda f: _band(f, p["leak_hz"], 0.3)) * (0.6 + 0.4 * pulse)
    x += _db(-22.0 + 8.0 * sev) * _unit(hiss)
  return x


def _valve_params(rng):
  base = rng.uniform(1200.0, 6500.0, 3)
  return {
      "period": rng.uniform(0.5, 1.5), "pulses": int(rng.choice([1, 2])), "open_frac": rng.uniform(0.15, 0.4),
      "open_modes": base, "close_modes": base * rng.uniform(0.9, 1.1, 3), "decays": rng.uniform(0.002, 0.008, 3),
      "close_gain": rng.uniform(1.3, 2.0), "flow_hz": rng.uniform(800.0, 2500.0),
      "flow_db": rng.uniform(-34.0, -26.0),  # flow noise while open, relative to the loudest click
      "leak_hz": rng.uniform(3000.0, 6000.0),
  }


def _valve(rng, p, n, sr, kind, sev):
  seconds = n / sr
  period = p["period"] * (1.0 + 0.02 * rng.standard_normal())
  open_s = p["open_frac"] * period / p["pulses"]
  jitter = 0.004
  if kind == "rhythm":  # sticking actuator: held open longer, irregular timing
    open_s *= 1.6 + 0.6 * sev
    jitter = 0.03 + 0.03 * sev
  cycles = np.arange(-1, int(seconds / period) + 2) * period + rng.uniform(0.0, period)
  opens = (cycles[:, None] + np.arange(p["pulses"]) * period / p["pulses"]).ravel()
  opens = opens + jitter * rng.standard_normal(opens.size)
  closes = opens + open_s * (1.0 + 0.08 * rng.standard_normal(opens.size))
  if kind == "rhythm":  # one actuation missed entirely
    inside = np.flatnonzero((opens > 0.0) & (closes < seconds))
    if inside.size:
      drop = rng.choice(inside)
      opens, closes = np.delete(opens, drop), np.delete(closes, drop)
  mode_amps = rng.uniform(0.5, 1.0, 3)
  close_modes, decays = p["close_modes"], p["decays"]
  open_gain = 1.0
  if kind == "contamination":  # debris on the seat: a duller, longer close ring and a weak open click
    close_modes = close_modes * (0.93 - 0.06 * sev)
    decays = decays * (1.3 + 0.5 * sev)
    open_gain = _db(-4.0 - 3.0 * sev)
  open_ir = _modes(sr, p["open_modes"], p["decays"], mode_amps, 0.05)
  close_ir = _modes(sr, close_modes, decays, mode_amps, 0.08)
  n_ev = opens.size
  x = _strike(n, sr, opens, open_gain * (1.0 + 0.1 * rng.standard_normal(n_ev)), open_ir)
  x += _strike(n, sr, closes, p["close_gain"] * (1.0 + 0.1 * rng.standard_normal(n_ev)), close_ir)
  if kind == "chatter":  # a weak return spring: the plunger bounces after closing
    gap = rng.uniform(0.015, 0.04)
    x += _strike(n, sr, np.concatenate([closes + gap, closes + 1.8 * gap]),
                 np.concatenate([np.full(n_ev, 0.5 + 0.4 * sev), np.full(n_ev, 0.25)]) * p["close_gain"], close_ir)
  t = np.arange(n) / sr
  gate = (np.searchsorted(np.sort(opens), t, "right") - np.searchsorted(np.sort(closes), t, "right")) > 0
  gate = _convolve(gate.astype(np.float64), np.hanning(int(0.01 * sr)) / (0.005 * sr))
  flow = _noise(rng, n, sr, lambda f: _band(f, p["flow_hz"], 1.2)) * gate
  x = x / (np.abs(x).max() + 1e-12) + _db(p["flow_db"]) * flow
  if kind == "leak":  # the closed seat no longer seals: a thin hiss between actuations
    hiss = _noise(rng, n, sr, lambda f: _band(f, p["leak_hz"], 0.35)) * (1.0 - np.clip(gate, 0.0, 1.0))
    x += _db(-22.0 + 6.0 * sev) * np.sqrt(np.mean(x * x)) * _unit(hiss)
  return x


def _slider_params(rng):
  lo = rng.uniform(400.0, 900.0)
  return {
      "period": rng.uniform(1.0, 2.4), "dwell": rng.uniform(0.0, 0.3),
      "fric_lo": lo, "fric_hi": lo * rng.uniform(2.0, 3.5),  # friction band when creeping / at full speed
      "motor_hz": rng.uniform(250.0, 700.0), "motor_db": rng.uniform(-10.0, -3.0),
      "motor_slope": rng.uniform(0.8, 1.5),
      "clunk_modes": rng.uniform(120.0, 400.0, 2), "click_hz": rng.uniform(1500.0, 3000.0),
      "clunk_db": rng.uniform(-6.0, 0.0), "rub_hz": rng.uniform(2000.0, 5000.0), "rub_at": rng.uniform(0.1, 0.5),
      "rail_hz": rng.uniform(1500.0, 4000.0), "rail_spacing": rng.uniform(0.05, 0.12),
  }


def _slider(rng, p, n, sr, kind, sev):
  t = np.arange(n) / sr
  period = p["period"] * (1.0 + 0.02 * rng.standard_normal())
  move = 1.0 - p["dwell"]
  half = (t / period * 2.0 + rng.uniform(0.0, 2.0)) % 2.0  # [0, 1): out stroke, [1, 2): return stroke
  u = half % 1.0
  s = np.where(u < move, 0.5 * (1.0 - np.cos(np.pi * np.minimum(u / move, 1.0))), 1.0)
  pos = np.where(half < 1.0, s, 1.0 - s)
  vel = np.where(u < move, np.sin(np.pi * np.minimum(u / move, 1.0)), 0.0)
  fric_lo, fric_hi, motor_db = p["fric_lo"], p["fric_hi"], p["motor_db"]
  if kind == "lube":  # dry rail: brighter, louder friction relative to the drive
    fric_lo, fric_hi = fric_lo * 1.25, fric_hi * 1.25
    motor_db -= 2.0 + 3.0 * sev
  lo = _noise(rng, n, sr, lambda f: _band(f, fric_lo, 0.8))
  hi = _noise(rng, n, sr, lambda f: _band(f, fric_hi, 0.8))
  friction = (lo * (1.0 - vel) + hi * vel) * vel ** 1.2  # faster sliding: louder and brighter
  f_motor = p["motor_hz"] * np.maximum(vel, 0.05)
  orders = np.arange(1.0, 7.0)
  amps = orders ** -p["motor_slope"] * _db(rng.normal(0.0, 1.0, orders.size))
  if kind == "whine":  # worn drive gear: an added 1.5-order partial and a stronger 3rd
    amps[2] *= _db(8.0 + 4.0 * sev)
    orders, amps = np.append(orders, 1.5), np.append(amps, amps[0] * (0.4 + 0.3 * sev))
  motor = _harmonics(rng, _phase(rng, f_motor, sr), orders, amps, p["motor_hz"], sr) * np.minimum(1.0, 3.0 * vel)
  # End-stop clunks where each stroke arrives.
  arrive = np.flatnonzero(np.diff((u >= move).astype(np.int8)) == 1) / sr
  ir = _modes(sr, [*p["clunk_modes"], p["click_hz"]], [0.03, 0.02, 0.003], [1.0, 0.6, 0.3], 0.15)
  clunks = _strike(n, sr, arrive, 1.0 + 0.1 * rng.standard_normal(arrive.size), ir)
  x = _unit(friction) + _db(motor_db) * _unit(motor)
  x += _db(p["clunk_db"]) * clunks / (np.sqrt(np.mean(clunks ** 2)) + 1e-12) * 0.5
  if kind == "rub":  # a bent section of rail: a narrow friction band over part of the stroke
    zone = ((pos > p["rub_at"]) & (pos < p["rub_at"] + 0.35)).astype(np.float64)
    band = _noise(rng, n, sr, lambda f: _band(f, p["rub_hz"], 0.2)) * zone * vel
    x += _db(-12.0 + 6.0 * sev) * _unit(band)
  elif kind == "rail":  # dents along the rail: a tick at each one the carriage passes, faster when faster
    ticks = np.flatnonzero(np.diff(np.floor(pos / p["rail_spacing"])) != 0) / sr
    hits = _strike(n, sr, ticks, 0.5 + 0.5 * vel[(ticks * sr).astype(np.int64)],
                   _modes(sr, [p["rail_hz"], p["rail_hz"] * 1.6], [0.002, 0.001], [1.0, 0.4], 0.02))
    x += _db(-9.0 + 6.0 * sev) * _unit(hits)
  return x


class _Machine(NamedTuple):
  params: Callable
  synth: Callable
  anomalies: tuple[str, ...]
  level_db: float  # mean clip level of the machine alone, dBFS
  snr_db: tuple[float, float]  # machine over background


_MACHINES = {
    "fan": _Machine(_fan_params, _fan, ("imbalance", "bearing", "blade", "rub"), -24.0, (3.0, 9.0)),
    "pump": _Machine(_pump_params, _pump, ("bearing", "leak", "clog", "misalign"), -26.0, (3.0, 9.0)),
    "slider": _Machine(_slider_params, _slider, ("rub", "rail", "whine", "lube"), -26.0, (4.0, 10.0)),
    "valve": _Machine(_valve_params, _valve, ("chatter", "rhythm", "leak", "contamination"), -38.0, (6.0, 12.0)),
}
MACHINE_TYPES = tuple(sorted(_MACHINES))
ANOMALY_KINDS = {name: m.anomalies for name, m in _MACHINES.items()}


def synth_clip(machine_type: str, machine_id: int, split: str, label: str, index: int, *, seed: int = 0,
               seconds: float = 10.0, sample_rate: int = 16000, min_severity: float = 0.0) -> tuple[np.ndarray, str]:
  """One clip (float64 in [-1, 1]) and its kind: "normal", or for anomalies the machine's faults in turn.

  Fault severity is uniform in [min_severity, 1): 0 gives the full range including barely audible faults
  (as in real data); a higher floor gives a set where every fault is clear (quick learning tests)."""
  machine = _MACHINES[machine_type]
  params = machine.params(clip_rng(seed, "dcase", machine_type, machine_id, "unit"))
  level_offset = clip_rng(seed, "dcase", machine_type, machine_id, "level").uniform(-3.0, 3.0)
  rng = clip_rng(seed, "dcase", machine_type, machine_id, split, label, index)
  kind = machine.anomalies[index % len(machine.anomalies)] if label == "anomaly" else "normal"
  sev = min_severity + (1.0 - min_severity) * rng.uniform()
  n = int(round(seconds * sample_rate))
  # Level drawn independently of the label, so loudness alone cannot tell anomalies apart.
  level_db = machine.level_db + level_offset + np.clip(rng.normal(0.0, 1.0), -2.0, 2.0)
  x = _unit(machine.synth(rng, params, n, sample_rate, kind, sev)) * _db(level_db)
  x += _background(rng, n, sample_rate) * _db(level_db - rng.uniform(*machine.snr_db))
  return np.clip(x, -1.0, 1.0), kind


def clip_name(label: str, machine_id: int, index: int) -> str:
  return f"{label}_id_{machine_id:02d}_{index:08d}.wav"


# ---------------------------------------------------------------------------------------------------------


def _check(seed, machine_types, machine_ids, n_train, n_test_normal, n_test_anomaly, seconds, sample_rate,
           min_severity=0.0) -> dict:
  if isinstance(min_severity, bool) or not isinstance(min_severity, (int, float)) or not 0.0 <= min_severity < 1.0:
    raise ConfigError(f"min_severity={min_severity!r}: expected a number in [0, 1)")
  if isinstance(machine_types, str) or not machine_types:
    raise ConfigError(f"machine_types={machine_types!r}: expected a non-empty list of {', '.join(MACHINE_TYPES)}")
  for name in machine_types:
    if name not in _MACHINES:
      raise ConfigError(f"machine_types: unknown type {name!r}; expected one of {', '.join(MACHINE_TYPES)}")
  if len(set(machine_types)) != len(machine_types):
    raise ConfigError(f"machine_types={list(machine_types)!r}: has duplicates")
  if isinstance(machine_ids, (str, int)) or not machine_ids:
    raise ConfigError(f"machine_ids={machine_ids!r}: expected a non-empty list of integers in [0, 99]")
  for i in machine_ids:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i <= 99:
      raise ConfigError(f"machine_ids: {i!r} is not an integer in [0, 99]")
  if len(set(machine_ids)) != len(machine_ids):
    raise ConfigError(f"machine_ids={list(machine_ids)!r}: has duplicates")
  if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0.1 <= seconds <= 600.0:
    raise ConfigError(f"seconds={seconds!r}: expected a clip length in [0.1, 600] seconds")
  return {
      "seed": check_seed(seed), "machine_types": list(machine_types), "machine_ids": [int(i) for i in machine_ids],
      "n_train": check_count("n_train", n_train, 1),
      "n_test_normal": check_count("n_test_normal", n_test_normal, 0),
      "n_test_anomaly": check_count("n_test_anomaly", n_test_anomaly, 0), "seconds": float(seconds),
      "sample_rate": check_sample_rate(sample_rate), "min_severity": float(min_severity),
  }


def _owned(out: pathlib.Path, types, old: dict | None) -> list[pathlib.Path]:
  """Existing clips this generator writes or wrote: layout-named wavs under the (old and new) type folders."""
  names = set(types) | set((old or {}).get("params", {}).get("machine_types", []))
  return sorted(f for name in names if name in _MACHINES for split in ("train", "test")
                for f in (out / name / split).glob("*.wav") if FILE_RE.match(f.name))


def generate_dcase(out_dir, *, seed: int = 0, machine_types=("fan", "pump", "valve"), machine_ids=(0, 2),
                   n_train: int = 48, n_test_normal: int = 12, n_test_anomaly: int = 12, seconds: float = 10.0,
                   sample_rate: int = 16000, min_severity: float = 0.0, overwrite: bool = False) -> dict:
  """Writes the data set and returns its manifest (also `<out>/synth_manifest.json`).

  A second call with the same settings finds the manifest and returns it with `skipped=True`; other settings
  raise ConfigError unless `overwrite`, which deletes the earlier clips first. The manifest holds the settings,
  `counts[type]["id_XX"][split_label]` and `anomalies[type][file] = fault kind`.
  """
  params = _check(seed, machine_types, machine_ids, n_train, n_test_normal, n_test_anomaly, seconds, sample_rate,
                  min_severity)
  out = pathlib.Path(out_dir)
  header = {"generator": _GENERATOR, "version": _VERSION, "params": params}
  done = prepare_output(out, header, overwrite, lambda old: _owned(out, params["machine_types"], old))
  if done is not None:
    return {**done, "skipped": True}
  plan = (("train", "normal", params["n_train"]), ("test", "normal", params["n_test_normal"]),
          ("test", "anomaly", params["n_test_anomaly"]))
  counts, anomalies, total = {}, {}, 0
  for name in params["machine_types"]:
    for split in ("train", "test"):
      (out / name / split).mkdir(parents=True, exist_ok=True)
    anomalies[name] = {}
    for mid in params["machine_ids"]:
      counts.setdefault(name, {})[f"id_{mid:02d}"] = {f"{s}_{lab}": c for s, lab, c in plan}
      for split, label, count in plan:
        for index in range(count):
          audio, kind = synth_clip(name, mid, split, label, index, seed=params["seed"], seconds=params["seconds"],
                                   sample_rate=params["sample_rate"], min_severity=params["min_severity"])
          file = clip_name(label, mid, index)
          write_wav(out / name / split / file, audio, params["sample_rate"])
          if label == "anomaly":
            anomalies[name][file] = kind
          total += 1
  manifest = {**header, "complete": True, "n_files": total, "counts": counts, "anomalies": anomalies}
  write_manifest(out, manifest)
  return {**manifest, "skipped": False}
