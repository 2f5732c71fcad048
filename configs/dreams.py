"""DreaMS self-supervised pre-training on tandem mass spectra (pluskal-lab/DreaMS, training/pre_train.sh).

Pre-train on LC-MS/MS runs (a spectra file, or a folder of .mgf / .mzML / DreaMS .hdf5 files; pairs are drawn
within each run, so spectra need retention times):
  vqax train --config configs/dreams.py --workdir runs/dreams --data_root /data/gems_a10
Start from official weights:
  vqax convert dreams ssl_model.ckpt --out runs/dreams_converted
  vqax train --config configs/dreams.py --workdir runs/dreams_ft --config.init_from=runs/dreams_converted
Then: `vqax embed --workdir W --data FILE --out F.npy`, `vqax eval-spectra --workdir W --data FILE`.
Variants: `:demo` (a few minutes on a CPU, `vqax synth spectra --out data/synth_spectra` data) and `:smoke`
(seconds, for tests). Memory: `vqax plan --config configs/dreams.py --budget 16GiB --fit max_peaks_n`.
"""
import ml_collections

from vqax.train.defaults import trainer_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = trainer_config("dreams")

  # Data: a spectra file or a folder of them; runs are an .mgf's FILENAME / an .mzML file / HDF5 'name'.
  c.data_root = "data/synth_spectra/train"
  c.skip_bad_spectra = False  # log each bad spectrum (file and spectrum named) and train without it
  c.max_peaks_n = 60  # the most intense peaks kept per spectrum (+ the precursor token: 61 tokens)
  c.mz_shift_aug_p = 0.2  # probability of shifting a spectrum's m/z by U(0, mz_shift_aug_max)
  c.mz_shift_aug_max = 50.0
  c.init_from = ""  # a `vqax convert dreams` folder: start from those weights

  # Objectives: masked m/z (focal loss over m/z bins) and retention order, 0.8 / 0.2.
  c.frac_masks = 0.3
  c.min_n_masks = 2
  c.focal_loss_gamma = 5.0
  c.ret_order_loss_w = 0.2

  # Model: the official pre-training flags (116,051,429 parameters with both heads).
  m = c.model
  m.d_peak = 44
  m.d_fourier = 980
  m.n_layers = 7
  m.n_heads = 8
  m.ff_peak_depth = 1
  m.ff_fourier_depth = 5
  m.ff_fourier_d = 512
  m.ff_out_depth = 1
  m.ffs_bias = True
  m.transformer_bias = False
  m.pre_norm = True
  m.dropout = 0.1
  m.att_dropout = 0.1
  m.residual_dropout = 0.1
  m.ff_dropout = 0.1
  m.max_mz = 1000.0
  m.fourier_x_min = 1e-4
  m.fourier_trainable = False
  m.graphormer_mz_diffs = True
  m.hot_mz_bin_size = 0.05
  m.mz_head = True
  m.ro_head = True
  # How it runs (same function): the Graphormer m/z bias "split" (never builds the [B, N, N, d_fourier]
  # tensor) or "materialized" (the official form, kept for memory comparisons); the official padding mask
  # (masks padding query rows, needed for the released weights) or "keys"; attention through
  # jax.nn.dot_product_attention ("xla" or the fused "cudnn" kernel on GPUs) or "explicit" einsums.
  m.graphormer_bias = "split"
  m.padding_mask = "official"
  m.attention_impl = "dot_product_attention"
  m.attention_backend = "xla"

  # Optimiser and schedule (pre_train.sh: lr 1e-4, batch 256 per GPU, no weight decay, 5000 warm-up steps).
  c.batch_size = 256
  c.learning_rate = 1e-4
  c.weight_decay = 0.0
  c.warmup_steps = 5000
  c.grad_clip_norm = 0.0  # none, as the official Lightning trainer
  c.epochs = 100
  # Memory: each encoder layer rematerialised in the backward pass (float32: the same numbers). At the
  # official 256 pairs x 61 tokens this compiles to 11.6 GiB per device against 27.5 GiB without remat and
  # 34.5 GiB for the official materialized m/z bias (XLA:CPU, tools/bench_memory_dreams.py); --memory_saver
  # adds bfloat16 compute.
  c.remat_policy = "full"
  c.log_every_steps = 20
  c.checkpoint_every_steps = 2000

  # Evaluation (vqax embed / eval-spectra): 100 peaks, as the official embedding API.
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 64
  c.eval.max_peaks_n = 100

  if variant == "demo":
    # A few minutes on a 2-core CPU, on `vqax synth spectra` runs: a narrow model, 1 Da m/z bins.
    c.data_root = "data/synth_spectra/train"
    c.max_peaks_n = 32
    c.mz_shift_aug_p = 0.0
    m.update(d_peak=16, d_fourier=112, n_layers=3, n_heads=4, ff_fourier_d=128, ff_fourier_depth=3,
             fourier_x_min=1e-2, hot_mz_bin_size=1.0, dropout=0.0, att_dropout=0.0, residual_dropout=0.0,
             ff_dropout=0.0)
    c.remat_policy = "none"  # small activations: no recompute
    c.batch_size = 32
    c.epochs = 60
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4
    c.warmup_steps = 50
    c.grad_clip_norm = 1.0
    c.log_every_steps = 20
    c.checkpoint_every_steps = 500
    c.eval.batch_size = 64
    c.eval.max_peaks_n = 32
  elif variant == "smoke":
    # Seconds on a CPU: one small layer, 2 Da bins.
    c.data_root = "data/synth_spectra/train"
    c.max_peaks_n = 16
    c.mz_shift_aug_p = 0.2
    c.mz_shift_aug_max = 5.0
    m.update(d_peak=8, d_fourier=24, n_layers=1, n_heads=2, ff_fourier_d=16, ff_fourier_depth=2,
             fourier_x_min=1e-2, hot_mz_bin_size=2.0)
    c.batch_size = 8
    c.epochs = 2
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4
    c.warmup_steps = 5
    c.grad_clip_norm = 1.0
    c.log_every_steps = 5
    c.checkpoint_every_steps = 1000
    c.eval.batch_size = 16
    c.eval.max_peaks_n = 16
  elif variant:
    raise ValueError(f"unknown variant {variant!r}: expected '', 'demo' or 'smoke'")
  return c
