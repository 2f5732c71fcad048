"""The augmentation loop (Ravuri & Vinyals 2019's naive score): the classifier trained on real clips only and
on real + N GAN spectrograms per class, over several seeds, evaluated on the same held-out files. The
augmented runs get proportionally fewer epochs, so both settings take about the same number of steps.

Reported: accuracy per setting with a Student-t interval over seeds; the Frechet distance between real and
generated spectrograms on the real-only classifier's penultimate features (seed 0), beside the distance
between the real training and held-out clips (the floor a perfect generator would reach at these sample
sizes); condition faithfulness (the real-only classifier's accuracy on generated samples, by requested class).
Written to `out_dir`: results.json, grid.png (real vs generated per class), curves.png (GAN and classifier
losses), and one Griffin-Lim WAV preview per class.
"""
import copy
import json
import pathlib

import numpy as np

from vqax import config_loading, tasks
from vqax.eval import augmentation as aug
from vqax.tasks import class_spectrograms as data_lib
from vqax.tasks.spectrogram_gan.generation import load_generator
from vqax.tasks.vit_classifier import evaluation
from vqax.train import trainer

DEFAULT_PER_CLASS = 20


def _read_curve(workdir, keys) -> dict:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  curves = {k: [] for k in keys}
  if path.is_file():
    for line in path.read_text().splitlines():
      row = json.loads(line)
      for k in keys:
        if k in row:
          curves[k].append((row["step"], row[k]))
  return curves


def run_augmentation(config_spec: str, gan_workdir, *, out_dir=None, seeds: int = 3, per_class: int | None = None,
                     data_root: str | None = None, overrides=(), max_steps: int | None = None,
                     verbose: bool = True) -> dict:
  """Train and evaluate both settings for `seeds` seeds; write and print the results (see module doc)."""
  gan_workdir = pathlib.Path(gan_workdir)
  trained_gan = load_generator(gan_workdir)
  gan_config = config_loading.config_from_json((gan_workdir / "config.json").read_text())
  base = config_loading.load_config(config_spec)
  base.data_root = data_root or gan_config.data_root
  base = tasks.apply_overrides(base, list(overrides))
  n = int(per_class if per_class is not None else (int(base.augment.per_class) or DEFAULT_PER_CLASS))
  out = pathlib.Path(out_dir or gan_workdir / "augmentation")
  out.mkdir(parents=True, exist_ok=True)

  settings = {"real only": 0, f"real + {n}/class": n}
  # Both settings train for about the same number of steps: the augmented run's epochs are fewer by the
  # share of synthetic clips (else its gain would partly be more training).
  n_real = len(data_lib.list_split(base)[0])
  epochs = {count: max(1, round(int(base.epochs) * n_real / (n_real + count * len(trained_gan.classes))))
            for count in settings.values()}
  accuracies = {name: [] for name in settings}
  runs = {}
  for seed in range(int(seeds)):
    for name, count in settings.items():
      config = copy.deepcopy(base)
      with config.unlocked():
        config.seed = seed
        config.epochs = epochs[count]
        config.augment.per_class = count
        config.augment.gan_workdir = str(gan_workdir) if count else ""
      workdir = out / ("real_only" if not count else f"real_plus_{count}") / f"seed{seed}"
      trainer.train(config, workdir, tasks.create(config), max_steps=max_steps, progress=False)
      classifier = evaluation.load_classifier(workdir)
      x_test, y_test = evaluation.test_arrays(config, classifier.normalization)
      accuracies[name].append(evaluation.accuracy(classifier, x_test, y_test))
      runs.setdefault(name, []).append(str(workdir))
      if verbose:
        print(f"[vqax] {name}, seed {seed}: held-out accuracy {accuracies[name][-1]:.3f}", flush=True)

  # The fixed embedding: the real-only classifier of seed 0.
  reference = evaluation.load_classifier(runs["real only"][0])
  classes = reference.classes
  x_test, y_test = evaluation.test_arrays(base, reference.normalization)
  train_records = data_lib.list_split(base)[0]
  x_train, _ = _sample_arrays(base, train_records, reference.normalization, max(len(x_test), 2))
  per_class_fake = max(2, int(np.ceil(len(x_test) / len(classes))))
  fake_labels = np.repeat(np.arange(len(classes)), per_class_fake)
  fake_log_mel = trained_gan.log_mels(fake_labels, seed=1000)
  fake = reference.normalization.apply(fake_log_mel)
  fake_predictions, fake_features = reference.predict(fake)
  _, real_features = reference.predict(x_test)
  _, train_features = reference.predict(x_train)
  frechet = aug.frechet_distance(real_features, fake_features)
  frechet_floor = aug.frechet_distance(real_features, train_features)
  faithfulness = aug.condition_faithfulness(fake_predictions, fake_labels, len(classes))

  grid = aug.spectrogram_grid_png(x_test, y_test, fake, fake_labels, classes, out / "grid.png")
  curves = {f"GAN {k}": v for k, v in _read_curve(gan_workdir, ("d_loss", "g_loss")).items()}
  for name, workdirs in runs.items():
    curves[f"classifier loss, {name} (seed 0)"] = _read_curve(workdirs[0], ("loss",))["loss"]
  curves_png = aug.training_curves_png(curves, out / "curves.png", title="GAN and classifier training")
  wavs = [str(aug.write_wav_preview(fake_log_mel[c * per_class_fake], out / f"generated_{name}.wav",
                                    trained_gan.features))
          for c, name in enumerate(classes)]

  table = aug.augmentation_table(accuracies)
  result = {"accuracies": accuracies, "intervals": {k: aug.accuracy_interval(v) for k, v in accuracies.items()},
            "frechet_distance": frechet, "frechet_distance_real_train_vs_held_out": frechet_floor,
            "embedding": f"penultimate (final-LN CLS) features of {runs['real only'][0]}",
            "condition_faithfulness": faithfulness, "classes": classes, "per_class": n, "seeds": int(seeds),
            "gan_workdir": str(gan_workdir), "gan_step": trained_gan.step, "held_out_clips": len(y_test),
            "training_clips": n_real, "epochs": {name: epochs[count] for name, count in settings.items()},
            "generated_clips": len(fake_labels), "grid_png": str(grid), "curves_png": str(curves_png),
            "wavs": wavs, "runs": runs}
  (out / "results.json").write_text(json.dumps(result, indent=1))
  if verbose:
    print(f"\nHeld-out accuracy over {seeds} seeds ({len(y_test)} clips of {len(classes)} classes; chance "
          f"{1 / len(classes):.3f}; {n_real} real training clips; epochs "
          f"{', '.join(str(e) for e in result['epochs'].values())}: about the same number of steps):")
    print(table)
    print(f"\nFrechet distance, real held-out vs generated ({len(fake_labels)}), on the real-only classifier's "
          f"penultimate features: {frechet:.3f} (real training vs real held-out: {frechet_floor:.3f})")
    per = ", ".join(f"{name} {acc:.2f}" for name, acc in zip(classes, faithfulness["per_class"]))
    print(f"Condition faithfulness (real-only classifier on generated samples): {faithfulness['accuracy']:.3f} "
          f"[{per}]")
    print(f"\nwrote {out / 'results.json'}, {grid}, {curves_png} and {len(wavs)} WAV previews in {out}")
  return result


def _sample_arrays(config, records, normalization, count: int):
  """Up to `count` training clips, evenly spaced over the (class-ordered) list."""
  step = max(1, len(records) // count)
  return evaluation.cf.load_arrays(records[::step][:count], data_lib.clip_config(config), normalization)
