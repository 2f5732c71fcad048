"""Deterministic synthetic LC-MS/MS runs, so DreaMS demos and tests need no downloads.

A library of molecules, each with a precursor m/z, a fragmentation pattern (the precursor minus chains of
common neutral losses, so fragments are predictable from the rest of the spectrum, which is what masked
m/z modelling learns), 13C isotope peaks (+1.00336 Da, heavier molecules carry more), and a retention time
that grows with mass and with the molecule's polarity (visible as its share of water losses), so
retention order is learnable. Each run measures a random subset of molecules, some more than once, with
run-specific RT drift, intensity jitter and random noise peaks. Written as one .mgf (or DreaMS HDF5) per
run, readable by `vqax.data.spectra.read_spectra`. Same seed, same bytes.
"""
import pathlib

import numpy as np

from vqax.data.spectra import Spectrum, write_hdf5

NEUTRAL_LOSSES = {"H2O": 18.010565, "CO": 27.994915, "CO2": 43.989829, "NH3": 17.026549, "CH2": 14.01565,
                  "C2H4": 28.0313}
ISOTOPE = 1.003355


def make_molecules(n_molecules: int, rng: np.random.Generator) -> list[dict]:
  """Molecule library: precursor m/z, fragments (m/z, relative intensity), polarity, retention time."""
  losses = np.asarray(list(NEUTRAL_LOSSES.values()))
  molecules = []
  for k in range(n_molecules):
    precursor = round(float(rng.uniform(150, 700)), 4)
    polarity = float(rng.uniform(0, 1))
    # Loss preferences: polar molecules lose water and ammonia more often.
    weights = np.asarray([1 + 4 * polarity, 1.5, 1.0, 1 + 2 * polarity, 2.0, 1.0])
    weights /= weights.sum()
    fragments, mz = {}, precursor
    for _ in range(int(rng.integers(6, 16))):
      mz = mz - losses[rng.choice(len(losses), p=weights)]
      if mz < 50:
        mz = precursor - losses[rng.choice(len(losses), p=weights)] * rng.integers(1, 4)
        if mz < 50:
          continue
      fragments[round(float(mz), 4)] = float(rng.uniform(0.05, 1.0))
    base = max(fragments, key=fragments.get)
    fragments[base] = 1.0
    carbons = precursor / 14.0
    rt = 60 + 1.2 * precursor - 300 * polarity + float(rng.normal(0, 15))
    molecules.append({"id": f"SYNTH{k:09d}", "precursor_mz": precursor, "fragments": fragments,
                      "isotope_ratio": min(0.6, 0.011 * carbons), "rt": max(rt, 10.0), "polarity": polarity})
  return molecules


def measure(molecule: dict, rt_drift: float, rng: np.random.Generator, noise_peaks: int) -> tuple:
  """One MS/MS scan of a molecule: jittered fragment intensities, isotopes, noise; (mz, intensity, rt)."""
  peaks = {}
  for mz, rel in molecule["fragments"].items():
    intensity = rel * float(rng.uniform(0.8, 1.2)) * 1e5
    peaks[round(mz + float(rng.normal(0, 0.001)), 4)] = intensity
    if rel * molecule["isotope_ratio"] > 0.02:
      peaks[round(mz + ISOTOPE, 4)] = intensity * molecule["isotope_ratio"]
  for _ in range(noise_peaks):
    peaks[round(float(rng.uniform(50, molecule["precursor_mz"])), 4)] = float(rng.uniform(0.005, 0.05)) * 1e5
  mz = np.asarray(sorted(peaks))
  intensity = np.asarray([peaks[m] for m in mz])
  rt = molecule["rt"] + rt_drift + float(rng.normal(0, 2.0))
  return mz, np.round(intensity, 1), round(rt, 2)


def make_runs(n_runs: int = 4, n_molecules: int = 40, molecules_per_run: int = 25, seed: int = 0,
              max_repeats: int = 3, noise_peaks: int = 4) -> list[list[Spectrum]]:
  """Spectra of each run (in acquisition order, by RT)."""
  rng = np.random.default_rng(seed)
  molecules = make_molecules(n_molecules, rng)
  runs = []
  for r in range(n_runs):
    name = f"synth_run_{r:02d}.mgf"
    drift = float(rng.normal(0, 10))
    scans = []
    for k in rng.choice(n_molecules, size=min(molecules_per_run, n_molecules), replace=False):
      for _ in range(int(rng.integers(1, max_repeats + 1))):
        mz, intensity, rt = measure(molecules[k], drift, rng, noise_peaks)
        scans.append((rt, mz, intensity, molecules[k]))
    scans.sort(key=lambda s: s[0])
    runs.append([Spectrum(mz, intensity, m["precursor_mz"], 1, rt, name, i, name, m["id"], f"{name}:{i}")
                 for i, (rt, mz, intensity, m) in enumerate(scans)])
  return runs


def write_mgf(path, spectra: list[Spectrum]) -> pathlib.Path:
  lines = []
  for s in spectra:
    lines += ["BEGIN IONS", f"TITLE={s.title}", f"PEPMASS={s.precursor_mz:.4f}", f"CHARGE={s.charge or 1}+",
              f"RTINSECONDS={s.rt:.2f}", f"FILENAME={s.run}", f"INCHIKEY={s.identity}-UHFFFAOYSA-N",
              f"NAME={s.identity}"]
    lines += [f"{m:.4f}\t{i:.1f}" for m, i in zip(s.mz, s.intensity)]
    lines += ["END IONS", ""]
  path = pathlib.Path(path)
  path.write_text("\n".join(lines))
  return path


def write_synthetic_runs(out_dir, fmt: str = "mgf", **kwargs) -> list[pathlib.Path]:
  """`make_runs(**kwargs)` written to out_dir as one file per run (.mgf or .hdf5); returns the paths."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for spectra in make_runs(**kwargs):
    stem = pathlib.Path(spectra[0].run).stem
    if fmt == "mgf":
      paths.append(write_mgf(out_dir / f"{stem}.mgf", spectra))
    else:
      paths.append(write_hdf5(out_dir / f"{stem}.hdf5", spectra))
  return paths


_GENERATOR = "vqax.data.synth_spectra"
_VERSION = 1


def generate_spectra(out_dir, *, seed: int = 0, train_runs: int = 8, test_runs: int = 2, n_molecules: int = 60,
                     molecules_per_run: int = 30, fmt: str = "mgf", overwrite: bool = False) -> dict:
  """The `vqax synth spectra` data set: train/ and test/ runs of one molecule library (so the test runs
  hold new measurements of molecules seen in training). A no-op when out_dir already holds the same set;
  returns its manifest."""
  from vqax.data.synth_dcase import check_count, check_seed, prepare_output, write_manifest
  from vqax.errors import ConfigError
  out = pathlib.Path(out_dir)
  if fmt not in ("mgf", "hdf5"):
    raise ConfigError(f"--format {fmt!r}: expected mgf or hdf5")
  params = {"seed": check_seed(seed), "train_runs": check_count("train_runs", train_runs, 1),
            "test_runs": check_count("test_runs", test_runs, 0), "n_molecules": check_count("n_molecules", n_molecules, 2),
            "molecules_per_run": check_count("molecules_per_run", molecules_per_run, 2), "format": fmt}
  header = {"generator": _GENERATOR, "version": _VERSION, "params": params}
  owned = lambda _old: sorted(p for split in ("train", "test") for p in (out / split).glob(f"synth_run_*.{fmt}"))
  done = prepare_output(out, header, overwrite, owned)
  if done is not None:
    return done
  runs = make_runs(n_runs=train_runs + test_runs, n_molecules=n_molecules, molecules_per_run=molecules_per_run,
                   seed=seed)
  files = {}
  for r, spectra in enumerate(runs):
    split = "train" if r < train_runs else "test"
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pathlib.Path(spectra[0].run).stem}.{fmt}"
    (write_mgf if fmt == "mgf" else write_hdf5)(path, spectra)
    files.setdefault(split, []).append({"file": f"{split}/{path.name}", "spectra": len(spectra)})
  manifest = {**header, "complete": True, "n_files": len(runs), "files": files,
              "total_spectra": sum(len(s) for s in runs)}
  write_manifest(out, manifest)
  return manifest
