"""VQ-VAE anomalous-sound detector on DCASE2020 Task 2 style data.

Train, then score:
  vqax train --config configs/vqvae_dcase.py --workdir runs/vqvae --data_root /path/to/dev_data
  vqax score --workdir runs/vqvae
Variants: `configs/vqvae_dcase.py:demo` (the `make demo` size) and `:smoke` (seconds, for tests).
Any field can be overridden with --config.<field>=<value>; the seed scripts' flag names are aliases
(--batch_size, --n_patches, --stride, --epochs, --machine_type, --data_root, --norm_stats_path, ...).
"""
import ml_collections

from vqax.train.defaults import trainer_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = trainer_config("vqvae")

  # Data: the DCASE layout <data_root>/<machine_type>/{train,test}/ with .wav or precomputed .npy.
  c.data_root = "data/synth_dcase"
  c.machine_type = "all"  # one type, a comma list, or "all" folders under data_root
  c.norm_stats_path = ""  # default: <workdir>/norm_stats.json (computed on the training split)
  c.feature_cache_dir = ""  # optional folder for cached log-mel .npy files
  c.resample = False  # clips at another sample rate: resample to 16 kHz (True) or reject (False)
  c.stereo = "downmix"  # multi-channel clips: "downmix" (average, with a note) or "reject"

  # Batch: per-device clips x patches per clip; the model sees batch_size * n_patches patches a step.
  c.batch_size = 16
  c.n_patches = 16
  c.stride = 32  # frames between patch starts

  # Model (shared/SPEC.md section 1).
  c.model.encoder_channels = (32, 64, 96)
  c.model.latent_dim = 64
  c.model.num_embeddings = 128

  # Staged training, lengths in epochs: phase 1 VQ-only, phase 2 full loss, last phase3 epochs codebook frozen.
  c.epochs = 40
  c.phase1_epochs = 2
  c.phase3_epochs = 5
  c.phase1_train_encoder = False  # True: phase 1 also trains the encoder (collapses; see vqax/tasks/vqvae/task.py)
  c.commitment_cost = 0.25
  c.commitment_warmup_start = 0.05
  c.commitment_warmup_epochs = 5
  # Dead-code revival: a code whose EMA share of assignments falls below dead_code_threshold / K is moved
  # onto a recent encoder output (0 disables). Usage starts at 0, so step 1 seeds the codebook from data.
  c.dead_code_threshold = 0.03
  c.dead_code_decay = 0.95

  c.learning_rate = 1e-3
  c.warmup_steps = 50
  c.remat_groups = 4  # with remat on, encoder/decoder run over this many groups of patches in turn

  # Scoring.
  c.score = ml_collections.ConfigDict()
  # method: "latent" (Mahalanobis distance of encoder latents), "density" (code-index NLL), "recon"
  # (reconstruction MSE), "both" (density, recon) or "all" (latent, density, recon); docs/anomaly_study.md.
  c.score.method = "all"
  # Scorer whose scores go into the top-level DCASE CSVs ("": the first of method's). The DCASE baseline
  # autoencoder, since it scored best on the demo set (docs/anomaly_study.md: the VQ-VAE's best, "latent",
  # stays ~5 points of mean AUC below both references).
  c.score.primary = "dcase_ae"
  c.score.density_model = "knn"  # position | row | bigram | knn (vqax/eval/code_density.py; study: knn best)
  c.score.density_smoothing = 1.0  # additive (Laplace) smoothing of the code counts
  c.score.knn_k = 1  # neighbours for density_model="knn"
  c.score.density_per_id = True  # one density (and PCA) per machine ID (IDs are known at test time in DCASE)
  c.score.latent_shrinkage = 1e-3  # latent Gaussian: covariance + shrinkage * mean variance * identity
  c.score.aggregate = "mean"  # patch scores -> clip score: mean | max | topk (the top topk_fraction)
  c.score.topk_fraction = 0.25
  c.score.stride = 32  # frames between patch starts when scoring (all patches of a clip)
  c.score.max_fpr = 0.1
  # References fitted on the same training clips in the same `vqax score` run (vqax/eval/references.py):
  # "pca" and/or "dcase_ae" (the DCASE2020 baseline autoencoder) on context_frames-frame context vectors.
  c.score.references = "pca,dcase_ae"
  c.score.context_frames = 5
  c.score.pca_components = 16
  c.score.baseline_epochs = 20
  c.score.baseline_batch_size = 512
  c.score.baseline_learning_rate = 1e-3

  if variant == "demo":
    # make demo: 3 machine types x 2 IDs x 48 clips, 432 steps of 32 patches; under 10 minutes on 2 cores.
    c.batch_size = 8
    c.n_patches = 4
    c.stride = 64
    c.epochs = 12
    c.phase1_epochs = 1
    c.phase3_epochs = 2
    c.commitment_warmup_epochs = 3
    c.learning_rate = 2e-3
    c.warmup_steps = 20
    c.checkpoint_every_steps = 100
    c.log_every_steps = 36
  elif variant == "smoke":
    # Seconds on CPU: a narrow model for tests.
    c.batch_size = 4
    c.n_patches = 2
    c.stride = 64
    c.epochs = 3
    c.phase1_epochs = 1
    c.phase3_epochs = 1
    c.commitment_warmup_epochs = 1
    c.model.encoder_channels = (8, 16, 16)
    c.model.latent_dim = 16
    c.model.num_embeddings = 32
    c.warmup_steps = 2
    c.log_every_steps = 1
    c.checkpoint_every_steps = 4
    c.score.references = ""  # tests ask for the references they need
    c.score.primary = ""
  elif variant:
    raise ValueError(f"unknown variant {variant!r}: expected '', 'demo' or 'smoke'")
  return c
