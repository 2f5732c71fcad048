"""VQ-VAE anomalous-sound detection task: data preparation, staged loss, phases.

Phases (lengths in epochs from the config):
  1 "vq_only":  codebook + commitment terms only (the decoder has no loss). By default only the codebook
                trains, fitting itself to the encoder's outputs; `phase1_train_encoder=True` also trains
                the encoder, as the seed scripts did. Measured here: with the encoder trainable, the VQ-only
                objective's trivial minimum (every latent on one code) is reached within ~20 steps
                (perplexity 1.0) and the dead ReLUs never recover in phase 2 (reconstruction MSE stays at
                the variance, 1.0); with the codebook alone, perplexity stays ~45 and phase 2 learns.
  2 "full":     reconstruction + codebook + commitment; everything trains.
  3 "frozen_codebook": full loss; the codebook is frozen, encoder and decoder keep adapting to it.
"""
import dataclasses
import pathlib

import jax
import jax.numpy as jnp

from vqax.data import dcase_loader
from vqax.errors import ConfigError
from vqax.models.precision import memory_settings
from vqax.models.vqvae import VQVAE
from vqax.ops import forms
from vqax.tasks.dcase_clips import feature_config, training_clips
from vqax.train.task import BatchSizes, DataInfo, Phase, Program, Task, TrainData


def build_model(config, platform: str | None = None) -> VQVAE:
  """The VQ-VAE the config describes, with layer forms for `platform` (default: JAX's default backend)."""
  memory = memory_settings(config)
  m = config.model
  setting = m.get("layer_forms", "auto")  # workdirs from before layer_forms have none: auto
  if setting not in forms.LAYER_FORMS:
    raise ConfigError(f"model.layer_forms={setting!r}: expected one of {', '.join(forms.LAYER_FORMS)}")
  return VQVAE(encoder_channels=tuple(m.encoder_channels), latent_dim=int(m.latent_dim),
               num_embeddings=int(m.num_embeddings), dtype=memory.dtype, remat_policy=memory.remat_policy,
               remat_groups=memory.remat_groups,
               layer_forms=forms.resolve(setting, platform or jax.default_backend()))


def validate_config(config) -> None:
  """Range checks that need no data, so a bad value fails before any long work."""
  for name in ("batch_size", "n_patches", "stride", "epochs"):
    if int(config[name]) <= 0:
      raise ConfigError(f"{name}={config[name]}: expected a positive integer")
  for name in ("phase1_epochs", "phase3_epochs", "commitment_warmup_epochs"):
    if int(config[name]) < 0:
      raise ConfigError(f"{name}={config[name]}: expected an integer >= 0")
  if config.phase1_epochs + config.phase3_epochs > config.epochs:
    raise ConfigError(f"phase1_epochs + phase3_epochs = {config.phase1_epochs + config.phase3_epochs} exceeds "
                      f"epochs={config.epochs}")
  if config.score.method not in ("latent", "density", "recon", "both", "all"):
    raise ConfigError(f"score.method={config.score.method!r}: expected latent, density, recon, both or all")
  if config.get("stereo", "downmix") not in ("downmix", "reject"):
    raise ConfigError(f"stereo={config.stereo!r}: expected downmix or reject")
  if config.nonfinite not in ("skip", "halt"):
    raise ConfigError(f"nonfinite={config.nonfinite!r}: expected skip or halt")
  if int(config.model.latent_dim) <= 0 or int(config.model.num_embeddings) <= 1:
    raise ConfigError("model.latent_dim must be > 0 and model.num_embeddings > 1")
  if config.model.layer_forms not in forms.LAYER_FORMS:
    raise ConfigError(f"model.layer_forms={config.model.layer_forms!r}: expected one of "
                      f"{', '.join(forms.LAYER_FORMS)}")
  memory_settings(config)


def commitment_weight(config, step, steps_per_epoch: int):
  """Linear warm-up from commitment_warmup_start to commitment_cost over commitment_warmup_epochs."""
  warmup_steps = int(config.commitment_warmup_epochs) * steps_per_epoch
  start, end = float(config.commitment_warmup_start), float(config.commitment_cost)
  if warmup_steps <= 0:
    return jnp.asarray(end, jnp.float32)
  fraction = jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)
  return start + (end - start) * fraction


class VQVAETask(Task):
  name = "vqvae"
  flag_aliases = {"n_patches": "n_patches", "stride": "stride", "machine_type": "machine_type",
                  "norm_stats_path": "norm_stats_path"}
  fit_fields = ("batch_size", "n_patches")
  commands = "vqax.tasks.vqvae.commands"
  demo_config = str(pathlib.Path(__file__).resolve().parents[3] / "configs" / "vqvae_dcase.py") + ":demo"
  demo_data_root = "data/synth_dcase"

  @classmethod
  def make_demo_data(cls, data_root: str) -> None:
    from vqax.data.synth_dcase import generate_dcase
    generate_dcase(data_root, seed=0)  # a no-op when the same set is already there

  @classmethod
  def evaluate_demo(cls, workdir: str):
    from vqax.tasks.vqvae.scoring import score_workdir
    return score_workdir(workdir)

  def __init__(self, config):
    validate_config(config)
    super().__init__(config)
    self.feature_config = feature_config(config)

  def prepare_data(self, workdir, batch: BatchSizes) -> TrainData:
    c = self.config
    clips = training_clips(c, workdir, self.feature_config)
    shortest = min(f.shape[1] for f in clips.features)
    if c.stride > shortest:
      raise ConfigError(f"stride={c.stride} frames exceeds the shortest training clip ({shortest} frames)")
    records, norm_stats = clips.records, clips.norm_stats
    clips.features = None  # the loader reads clips again per step: the data set never stays in memory
    steps_per_epoch = max(1, len(records) // batch.global_batch)
    loader = dcase_loader.train_loader(records, norm_stats, batch_size=batch.per_process,
                                       n_patches=int(c.n_patches), stride=int(c.stride), seed=int(c.seed),
                                       worker_count=int(c.worker_count), cache_dir=c.feature_cache_dir or None,
                                       feature_config=self.feature_config)
    return TrainData(loader, DataInfo(steps_per_epoch), samples_per_step=batch.global_batch * int(c.n_patches),
                     sample_unit="patches", summary=clips.summary())

  def build(self, info: DataInfo, platform: str) -> "VQVAEProgram":
    return VQVAEProgram(self.config, build_model(self.config, platform), info.steps_per_epoch)


@dataclasses.dataclass(frozen=True, eq=False)
class VQVAEProgram(Program):
  config: object
  model: VQVAE
  steps_per_epoch: int

  def batch_spec(self, global_batch: int):
    return {"patches": jax.ShapeDtypeStruct((global_batch, int(self.config.n_patches), 64, 64, 1), jnp.float32)}

  # --- model and loss --------------------------------------------------------------------------------

  def init_variables(self, rng, batch_spec):
    variables = dict(self.model.init(rng, jnp.zeros((1, 64, 64, 1), jnp.float32)))
    k, d = int(self.config.model.num_embeddings), int(self.config.model.latent_dim)
    # Codebook bookkeeping for dead-code revival: usage starts at zero, so the first step seeds every
    # code from the encoder's outputs (a data-dependent initialisation).
    variables["vq"] = {"usage": jnp.zeros((k,), jnp.float32), "recent_latents": jnp.zeros((k, d), jnp.float32)}
    return variables

  def phases(self, total_steps: int) -> list[Phase]:
    c = self.config
    p1_end = int(c.phase1_epochs) * self.steps_per_epoch
    p3_start = total_steps - int(c.phase3_epochs) * self.steps_per_epoch
    return [
        Phase("vq_only", 0, p1_end, (lambda path: path[0] in ("encoder", "quantizer")) if c.phase1_train_encoder
              else (lambda path: path[0] == "quantizer")),
        Phase("full", p1_end, p3_start),
        Phase("frozen_codebook", p3_start, total_steps, lambda path: path[0] != "quantizer"),
    ]

  def loss_fn(self, params, model_state, batch, rng, step, phase: Phase):
    patches = batch["patches"].reshape(-1, 64, 64, 1)
    reconstruction, aux = self.model.apply({"params": params}, patches)
    recon_loss = jnp.mean((reconstruction - patches) ** 2)
    beta = commitment_weight(self.config, step, self.steps_per_epoch)
    vq_loss = aux["codebook_loss"] + beta * aux["commitment_loss"]
    loss = vq_loss if phase.name == "vq_only" else recon_loss + vq_loss
    model_state = self._track_codes(model_state, aux, rng)
    metrics = {"recon_loss": recon_loss, "codebook_loss": aux["codebook_loss"],
               "commitment_loss": aux["commitment_loss"], "commitment_weight": beta,
               "perplexity": aux["perplexity"], "codebook_usage": aux["usage"]}
    if "vq" in model_state:
      metrics["dead_codes"] = jnp.sum(model_state["vq"]["usage"] < float(self.config.dead_code_threshold) /
                                      model_state["vq"]["usage"].shape[0])
    return loss.astype(jnp.float32), (model_state, metrics)

  # --- dead codes ------------------------------------------------------------------------------------

  def _track_codes(self, model_state, aux, rng):
    """EMA of each code's share of assignments, and a random sample of this batch's encoder outputs."""
    if "vq" not in model_state:
      return model_state
    decay = float(self.config.dead_code_decay)
    share = aux["code_counts"] / jnp.maximum(aux["code_counts"].sum(), 1)
    usage = decay * model_state["vq"]["usage"] + (1.0 - decay) * share
    latents = aux["latents"]
    k = usage.shape[0]
    rows = jax.random.choice(jax.random.fold_in(rng, 1), latents.shape[0], (k,), replace=latents.shape[0] < k)
    return dict(model_state, vq={"usage": usage, "recent_latents": latents[rows]})

  def after_update(self, params, model_state, rng, phase: Phase):
    """Revive dead codes (big_vision UViM / Jukebox style): a code whose usage share fell below
    dead_code_threshold / K is moved onto a recent encoder output, so no code stays unused for long.
    Not in the frozen-codebook phase, and never when dead_code_threshold is 0."""
    threshold = float(self.config.dead_code_threshold)
    if threshold <= 0 or phase.name == "frozen_codebook" or "vq" not in model_state:
      return params, model_state
    vq = model_state["vq"]
    k = vq["usage"].shape[0]
    dead = vq["usage"] < threshold / k
    codebook = params["quantizer"]["codebook"]
    codebook = jnp.where(dead[:, None], vq["recent_latents"].astype(codebook.dtype), codebook)
    # A revived code gets a grace period of one uniform share before it can be declared dead again.
    usage = jnp.where(dead, 1.0 / k, vq["usage"])
    params = dict(params, quantizer=dict(params["quantizer"], codebook=codebook))
    return params, dict(model_state, vq=dict(vq, usage=usage))
