"""Tandem mass spectra: readers (.mgf, .mzML, DreaMS HDF5), checks, DreaMS preprocessing and a grain
loader of retention-order pairs.

Every reader returns a `SpectraSet`: `Spectrum` records keeping the precursor m/z, charge, retention
time, file of origin, LC-MS run and molecule identity (InChIKey first block, else SMILES, else name).
A spectrum that cannot be used (no peaks, NaN m/z or intensity, no precursor, unsorted m/z, negative
values) raises one `DataError` naming the file and the spectrum; with `skip_bad_spectra` it is skipped
and counted. A truncated or unreadable file always raises.

Preprocessing follows the official `SpectrumPreprocessor` (dreams/utils/data.py): keep the max_peaks_n
most intense peaks in their m/z order, zero-pad, intensities relative to the base peak, prepend the
precursor token [precursor m/z, 1.1], float32.
"""
import dataclasses
import math
import pathlib

import grain
import numpy as np

from vqax.data.pipeline import make_loader
from vqax.errors import DataError

PREC_INTENS = 1.1
FORMATS = (".mgf", ".mzml", ".hdf5", ".h5")


@dataclasses.dataclass(frozen=True)
class Spectrum:
  mz: np.ndarray          # [n] float64, ascending
  intensity: np.ndarray   # [n] float64, raw
  precursor_mz: float
  charge: int | None
  rt: float | None        # seconds
  file: str
  index: int              # position in its file
  run: str                # LC-MS run the spectrum belongs to (retention times compare within one run)
  identity: str | None    # molecule: InChIKey first block, else SMILES, else name
  title: str = ""


@dataclasses.dataclass
class SpectraSet:
  spectra: list[Spectrum]
  skipped: int = 0
  skipped_reasons: list[str] = dataclasses.field(default_factory=list)


def problem(mz, intensity, precursor_mz) -> str | None:
  """Why a spectrum cannot be used, or None."""
  if precursor_mz is None or not np.isfinite(precursor_mz) or precursor_mz <= 0:
    return f"missing precursor m/z (got {precursor_mz})"
  if len(mz) == 0:
    return "no peaks"
  if not np.all(np.isfinite(mz)):
    return "NaN or infinite m/z"
  if not np.all(np.isfinite(intensity)):
    return "NaN or infinite intensity"
  if np.any(mz < 0) or np.any(intensity < 0):
    return "negative m/z or intensity"
  if np.any(np.diff(mz) < 0):
    return "m/z values not sorted ascending"
  if not np.any(intensity > 0):
    return "no peak with positive intensity"
  return None


class _Collector:
  def __init__(self, path: pathlib.Path, skip_bad_spectra: bool):
    self.path, self.skip = path, skip_bad_spectra
    self.result = SpectraSet([])

  def add(self, index, mz, intensity, precursor_mz, label, **meta):
    mz, intensity = np.asarray(mz, np.float64), np.asarray(intensity, np.float64)
    reason = problem(mz, intensity, precursor_mz)
    if reason is not None:
      message = f"{self.path}: spectrum {index} ({label}): {reason}"
      if not self.skip:
        raise DataError(message + " (pass skip_bad_spectra to skip such spectra)")
      self.result.skipped += 1
      self.result.skipped_reasons.append(message)
      return
    self.result.spectra.append(Spectrum(mz, intensity, float(precursor_mz), file=str(self.path), index=index,
                                        **meta))


def _identity(inchikey=None, smiles=None, name=None):
  for value in (inchikey and str(inchikey).split("-")[0], smiles, name):
    if value and str(value).strip().lower() not in ("n/a", "na", "none", ""):
      return str(value).strip()
  return None


def _charge(value):
  if value is None:
    return None
  value = value[0] if isinstance(value, (list, tuple)) and value else value
  try:
    return int(value)
  except (TypeError, ValueError):
    return None


def read_mgf(path, skip_bad_spectra: bool = False) -> SpectraSet:
  """An .mgf file (pyteomics); PEPMASS is the precursor, RTINSECONDS the retention time."""
  from pyteomics import mgf
  path = pathlib.Path(path)
  text = _read_text(path)
  begins, ends = text.count("BEGIN IONS"), text.count("END IONS")
  if begins != ends:
    raise DataError(f"{path}: truncated .mgf ({begins} BEGIN IONS but {ends} END IONS)")
  if begins == 0:
    raise DataError(f"{path}: no spectra (no BEGIN IONS block)")
  out = _Collector(path, skip_bad_spectra)
  try:
    for index, entry in enumerate(mgf.read(str(path), use_index=False, convert_arrays=1,
                                           read_charges=False)):
      params = entry["params"]
      pepmass = params.get("pepmass")
      precursor = float(pepmass[0]) if pepmass and pepmass[0] is not None else None
      rt = params.get("rtinseconds")
      title = str(params.get("title") or params.get("spectrumid") or params.get("name") or "")
      out.add(index, entry["m/z array"], entry["intensity array"], precursor, title or f"#{index}",
              charge=_charge(params.get("charge")), rt=float(rt) if rt is not None else None,
              run=str(params.get("filename") or path.name),
              identity=_identity(params.get("inchikey"), params.get("smiles"), params.get("name")), title=title)
  except DataError:
    raise
  except Exception as e:  # pyteomics raises several types for malformed blocks
    raise DataError(f"{path}: cannot parse as .mgf ({type(e).__name__}: {e})") from None
  return out.result


def read_mzml(path, skip_bad_spectra: bool = False) -> SpectraSet:
  """MS2 spectra of an .mzML run (pyteomics); MS1 scans are not spectra to embed and are left out."""
  from pyteomics import mzml
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"{path}: no such file")
  out = _Collector(path, skip_bad_spectra)
  try:
    for entry in mzml.read(str(path), use_index=False):
      if entry.get("ms level") != 2:
        continue
      precursor, charge = None, None
      precursors = entry.get("precursorList", {}).get("precursor", [])
      if precursors:
        ions = precursors[0].get("selectedIonList", {}).get("selectedIon", [])
        if ions:
          precursor, charge = ions[0].get("selected ion m/z"), _charge(ions[0].get("charge state"))
      scans = entry.get("scanList", {}).get("scan", [{}])
      rt = scans[0].get("scan start time") if scans else None
      if rt is not None:  # pyteomics gives a unitfloat; mzML times are usually minutes
        unit = getattr(rt, "unit_info", "minute")
        rt = float(rt) * (60.0 if unit in ("minute", None) else 1.0)
      out.add(entry["index"], entry.get("m/z array", []), entry.get("intensity array", []), precursor,
              str(entry.get("id", "")), charge=charge, rt=rt, run=path.name, identity=None,
              title=str(entry.get("id", "")))
  except DataError:
    raise
  except Exception as e:  # lxml syntax errors for truncated XML, KeyError for malformed entries
    raise DataError(f"{path}: cannot parse as .mzML ({type(e).__name__}: {e})") from None
  if not out.result.spectra and not out.result.skipped:
    raise DataError(f"{path}: no MS2 spectra")
  return out.result


def read_hdf5(path, skip_bad_spectra: bool = False) -> SpectraSet:
  """DreaMS's HDF5 layout: 'spectrum' [N, 2, n_peaks] zero-padded, 'precursor_mz' [N]; optional 'RT',
  'charge', 'smiles', 'name' (the LC-MS run), 'file_name', 'inchikey'."""
  import h5py
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"{path}: no such file")
  try:
    with h5py.File(path, "r") as f:
      for key in ("spectrum", "precursor_mz"):
        if key not in f:
          raise DataError(f"{path}: no '{key}' dataset (DreaMS HDF5 needs 'spectrum' [N, 2, n_peaks] and "
                          "'precursor_mz' [N])")
      spectra, precursors = f["spectrum"][()], f["precursor_mz"][()]
      columns = {k: f[k][()] for k in ("RT", "charge", "smiles", "name", "file_name", "inchikey") if k in f}
  except DataError:
    raise
  except Exception as e:  # OSError for truncated or non-HDF5 files
    raise DataError(f"{path}: cannot read as HDF5 ({type(e).__name__}: {e})") from None
  if spectra.ndim != 3 or spectra.shape[1] != 2 or len(precursors) != len(spectra):
    raise DataError(f"{path}: 'spectrum' has shape {spectra.shape} and 'precursor_mz' {precursors.shape}; "
                    "expected [N, 2, n_peaks] and [N]")
  text = lambda key, i: (columns[key][i].decode() if isinstance(columns[key][i], bytes)
                         else str(columns[key][i])) if key in columns else None
  out = _Collector(path, skip_bad_spectra)
  for i in range(len(spectra)):
    keep = spectra[i, 0] != 0  # zero padding
    out.add(i, spectra[i, 0][keep], spectra[i, 1][keep], float(precursors[i]), f"row {i}",
            charge=int(columns["charge"][i]) if "charge" in columns else None,
            rt=float(columns["RT"][i]) if "RT" in columns else None,
            run=text("name", i) or text("file_name", i) or path.name,
            identity=_identity(text("inchikey", i), text("smiles", i)))
  return out.result


def write_hdf5(path, spectra: list[Spectrum], n_peaks: int | None = None) -> pathlib.Path:
  """Spectra -> DreaMS HDF5 layout (zero-padded to n_peaks, the longest by default)."""
  import h5py
  n_peaks = n_peaks or max(len(s.mz) for s in spectra)
  array = np.zeros((len(spectra), 2, n_peaks))
  for i, s in enumerate(spectra):
    array[i, 0, :len(s.mz)], array[i, 1, :len(s.mz)] = s.mz[:n_peaks], s.intensity[:n_peaks]
  with h5py.File(path, "w") as f:
    f["spectrum"] = array
    f["precursor_mz"] = np.asarray([s.precursor_mz for s in spectra])
    f["RT"] = np.asarray([np.nan if s.rt is None else s.rt for s in spectra])
    f["charge"] = np.asarray([s.charge or 0 for s in spectra])
    f["name"] = np.asarray([s.run.encode() for s in spectra])
    f["smiles"] = np.asarray([(s.identity or "").encode() for s in spectra])
  return pathlib.Path(path)


def read_spectra(path, skip_bad_spectra: bool = False) -> SpectraSet:
  """Dispatch on the suffix: .mgf, .mzML, .hdf5/.h5."""
  path = pathlib.Path(path)
  suffix = path.suffix.lower()
  if suffix not in FORMATS:
    raise DataError(f"{path}: unknown spectra format {path.suffix!r} (expected one of {', '.join(FORMATS)})")
  reader = {".mgf": read_mgf, ".mzml": read_mzml}.get(suffix, read_hdf5)
  return reader(path, skip_bad_spectra)


def _read_text(path: pathlib.Path) -> str:
  if not path.is_file():
    raise DataError(f"{path}: no such file")
  try:
    return path.read_text(errors="strict")
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not a text .mgf file ({e})") from None


# ----------------------------------------------------------------------------------------------------------
# Model input
# ----------------------------------------------------------------------------------------------------------


def preprocess(spectrum: Spectrum, max_peaks_n: int = 60, prec_intens: float = PREC_INTENS,
               mz_shift: float = 0.0, shift_padding: bool = False) -> np.ndarray:
  """-> float32 [max_peaks_n + 1, 2] (m/z, relative intensity), precursor token first, zero-padded.

  mz_shift adds one constant to every m/z (the official augmentation draws it as U(0, 50) with
  probability 0.2). The official code also shifts the padding rows, which then stop being padding;
  `shift_padding` reproduces that, the default keeps padding at zero.
  """
  top = np.sort(np.argsort(spectrum.intensity, kind="stable")[-max_peaks_n:])
  peaks = np.zeros((max_peaks_n, 2))
  peaks[:len(top), 0], peaks[:len(top), 1] = spectrum.mz[top], spectrum.intensity[top]
  peaks[:, 1] /= peaks[:, 1].max()
  spec = np.concatenate([[[spectrum.precursor_mz, prec_intens]], peaks])
  if mz_shift:
    rows = slice(None) if shift_padding else slice(0, len(top) + 1)
    spec[rows, 0] += mz_shift
  return spec.astype(np.float32)


def preprocess_many(spectra: list[Spectrum], max_peaks_n: int = 100) -> np.ndarray:
  """A stack of `preprocess` outputs [n, max_peaks_n + 1, 2] (100 peaks: the official embedding API)."""
  return np.stack([preprocess(s, max_peaks_n) for s in spectra])


def group_runs(spectra: list[Spectrum]) -> dict[str, np.ndarray]:
  """run -> indices of its spectra that have a retention time (pairs are drawn within a run)."""
  runs: dict[str, list[int]] = {}
  for i, s in enumerate(spectra):
    if s.rt is not None and math.isfinite(s.rt):
      runs.setdefault(s.run, []).append(i)
  return {run: np.asarray(idx) for run, idx in runs.items() if len(idx) >= 2}


@dataclasses.dataclass
class RetentionOrderPair(grain.transforms.RandomMap):
  """index of a spectrum -> {'spec': [2, max_peaks_n + 1, 2] float32, 'ro_label': float32}.

  The partner is drawn uniformly from the other spectra of the same run (the official code may draw
  the spectrum itself, whose label is then 0); label = RT_1 < RT_2. Optional m/z shift augmentation,
  drawn per spectrum.
  """
  spectra: list
  run_of: dict
  max_peaks_n: int = 60
  mz_shift_p: float = 0.0
  mz_shift_max: float = 0.0

  def random_map(self, index, rng: np.random.Generator):
    first = self.spectra[index]
    candidates = self.run_of[first.run]
    candidates = candidates[candidates != index]
    second = self.spectra[int(rng.choice(candidates))]
    shift = lambda: rng.uniform(0, self.mz_shift_max) if rng.random() < self.mz_shift_p else 0.0
    spec = np.stack([preprocess(first, self.max_peaks_n, mz_shift=shift()),
                     preprocess(second, self.max_peaks_n, mz_shift=shift())])
    return {"spec": spec, "ro_label": np.float32(first.rt < second.rt)}


def retention_order_loader(spectra: list[Spectrum], *, batch_size: int, seed: int, max_peaks_n: int = 60,
                           mz_shift_p: float = 0.0, mz_shift_max: float = 0.0, num_epochs: int | None = None,
                           worker_count: int = 0, shard_by_process: bool = True) -> grain.DataLoader:
  """Infinite (num_epochs None), shuffled loader of {'spec': [B, 2, N, 2], 'ro_label': [B]} batches:
  every spectrum with a retention time in a run of two or more, paired within its run."""
  runs = group_runs(spectra)
  if not runs:
    raise DataError("no LC-MS run has two or more spectra with retention times: no retention-order pairs")
  records = sorted(int(i) for idx in runs.values() for i in idx)
  op = RetentionOrderPair(spectra, runs, max_peaks_n, mz_shift_p, mz_shift_max)
  return make_loader(records, [op], batch_size=batch_size, seed=seed, shuffle=True, num_epochs=num_epochs,
                     worker_count=worker_count, shard_by_process=shard_by_process)
