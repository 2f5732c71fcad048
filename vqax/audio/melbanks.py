"""ReDimNet's log-mel front end (official `MelBanks`, feat_type 'pt') in JAX.

It runs inside the jitted model so waveforms go to the device once and the features never round-trip through
the host. Every step mirrors torchaudio's `MelSpectrogram` as the official code configures it; the parity
fixture (`shared/fixtures/redimnet_b0_parity.json`) lists the details. Output layout is the official one,
[batch, n_mels, frames], with frames = 1 + num_samples // hop_length.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqax.audio.mel import mel_filterbank
from vqax.errors import ConfigError

SPEC_NORMS = ("mn", "mvn")


def normalize_audio(wave: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Per-utterance zero mean, unit (biased) std, as the official `NormalizeAudio`."""
  mean = jnp.mean(wave, axis=-1, keepdims=True)
  return (wave - mean) / (jnp.std(wave, axis=-1, keepdims=True) + eps)


def preemphasis(wave: jax.Array, coef: float = 0.97) -> jax.Array:
  """y[n] = x[n] - coef * x[n-1]; x[-1] is the reflection x[1], as in the official code (not zero)."""
  previous = jnp.concatenate([wave[:, 1:2], wave[:, :-1]], axis=-1)
  return wave - coef * previous


def hamming_window(win_length: int, n_fft: int) -> np.ndarray:
  """Periodic Hamming window zero-padded centrally to n_fft, as torch.stft pads a shorter window."""
  n = np.arange(win_length, dtype=np.float64)
  window = 0.54 - 0.46 * np.cos(2.0 * np.pi * n / win_length)
  left = (n_fft - win_length) // 2
  return np.pad(window, (left, n_fft - win_length - left))


def frame(signal: jax.Array, frame_length: int, hop_length: int) -> jax.Array:
  """[B, T] -> [B, n_frames, frame_length] with one strided gather (no Python loop over frames)."""
  n_frames = 1 + (signal.shape[-1] - frame_length) // hop_length
  index = hop_length * np.arange(n_frames)[:, None] + np.arange(frame_length)[None, :]
  return signal[:, index]


def power_spectrogram(wave: jax.Array, n_fft: int, win_length: int, hop_length: int) -> jax.Array:
  """|STFT|^2 with center=True reflect padding: [B, T] -> [B, 1 + T // hop, n_fft // 2 + 1]."""
  padded = jnp.pad(wave, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
  frames = frame(padded, n_fft, hop_length) * hamming_window(win_length, n_fft).astype(np.float32)
  spectrum = jnp.fft.rfft(frames, n=n_fft, axis=-1)
  return jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2


def fbank_augment(rng: jax.Array, spec: jax.Array, freq_mask_width: Sequence[int],
                  time_mask_width: Sequence[int], freq_start_bin: int = 0) -> jax.Array:
  """One time mask then one frequency mask per utterance (official `FbankAug`), on [B, F, T].

  Widths are [low, high) ranges. As in the official code every utterance's mask start is drawn below
  D - (widest mask in the batch), and `freq_start_bin` offsets the start on both axes.
  """
  time_rng, freq_rng = jax.random.split(rng)
  for axis, width, key in ((2, time_mask_width, time_rng), (1, freq_mask_width, freq_rng)):
    size = spec.shape[axis]
    len_key, pos_key = jax.random.split(key)
    mask_len = jax.random.randint(len_key, (spec.shape[0], 1), width[0], width[1])
    upper = jnp.maximum(1, size - jnp.max(mask_len))
    mask_pos = jax.random.randint(pos_key, (spec.shape[0], 1), freq_start_bin, upper)
    positions = jnp.arange(size)[None, :]
    mask = (mask_pos <= positions) & (positions < mask_pos + mask_len)  # [B, size]
    mask = mask[:, None, :] if axis == 2 else mask[:, :, None]
    spec = jnp.where(mask, 0.0, spec)
  return spec


class MelBanks(nn.Module):
  """Waveform [B, T] -> mean-normalised log-mel [B, n_mels, 1 + T // hop_length], always in float32.

  Field names and defaults are the official MelBanks arguments, so a model_config's `spec_params` passes
  through unchanged. SpecAugment needs the 'specaug' RNG stream and runs only when `train` is True.
  """
  sample_rate: int = 16000
  n_fft: int = 512
  win_length: int = 400
  hop_length: int = 160
  f_min: float = 20.0
  f_max: float = 7600.0
  n_mels: int = 80
  do_spec_aug: bool = False
  norm_signal: bool = False
  do_preemph: bool = True
  spec_norm: str = "mn"
  freq_start_bin: int = 0
  num_apply_spec_aug: int = 1
  freq_mask_width: Sequence[int] = (0, 8)
  time_mask_width: Sequence[int] = (0, 10)

  def mel_matrix(self) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels] HTK filters without normalisation (torchaudio's MelSpectrogram default)."""
    return mel_filterbank(self.n_fft // 2 + 1, self.f_min, self.f_max, self.n_mels, self.sample_rate,
                          htk=True)

  @nn.compact
  def __call__(self, wave: jax.Array, train: bool = False) -> jax.Array:
    if self.spec_norm not in SPEC_NORMS:
      raise ConfigError(f"spec_params.spec_norm={self.spec_norm!r} is not supported; "
                        f"expected one of {SPEC_NORMS}")
    if self.win_length > self.n_fft:
      raise ConfigError(f"spec_params.win_length={self.win_length} must not exceed n_fft={self.n_fft}")
    # The official front end casts to float32 and disables autocast: log-mel needs the precision.
    wave = jnp.asarray(wave, jnp.float32)
    if self.norm_signal:
      wave = normalize_audio(wave)
    if self.do_preemph:
      wave = preemphasis(wave)
    power = power_spectrogram(wave, self.n_fft, self.win_length, self.hop_length)
    mel = jnp.matmul(power, self.mel_matrix().astype(np.float32), precision=jax.lax.Precision.HIGHEST)
    spec = jnp.log(jnp.swapaxes(mel, 1, 2) + 1e-6)  # [B, n_mels, frames]
    spec = spec - jnp.mean(spec, axis=-1, keepdims=True)
    if self.spec_norm == "mvn":
      spec = spec / (jnp.std(spec, axis=-1, keepdims=True, ddof=1) + 1e-8)
    if train and self.do_spec_aug:
      rng = self.make_rng("specaug")
      for _ in range(self.num_apply_spec_aug):
        rng, step_rng = jax.random.split(rng)
        spec = fbank_augment(step_rng, spec, self.freq_mask_width, self.time_mask_width, self.freq_start_bin)
    return jax.lax.stop_gradient(spec)
