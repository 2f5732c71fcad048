"""Which form the layers take: XLA's own ("xla") or the reformulations XLA:CPU runs faster ("cpu").

The forms in `vqax.ops` compute the same function with the same parameters; only speed differs, and only
on XLA:CPU were the reformulations measured faster (docs/performance.md). So a model has one setting,
`layer_forms`, on its top-level module, and its layers read the active form while they are traced:

  with forms.use(self.layer_forms):   # in the top-level model's __call__
    ...                               # vqax.ops.Conv / upsample2x / materialized pick their form here

"auto" follows the platform the step is compiled for. Tasks resolve it with `resolve(setting, platform)`
from the mesh's devices, so a plan compiled for a GPU target on a CPU-only machine traces XLA's own layers,
as the GPU would run them. Outside any `use` block (a layer called on its own), "auto" means the default
backend.
"""
import contextlib
import contextvars

import jax

LAYER_FORMS = ("auto", "cpu", "xla")

_ACTIVE: contextvars.ContextVar[str] = contextvars.ContextVar("vqax_layer_forms", default="auto")


def resolve(setting: str, platform: str) -> str:
  """"auto" -> "cpu" when compiling for the CPU, else "xla"; "cpu" and "xla" stay as they are."""
  if setting not in LAYER_FORMS:
    raise ValueError(f"layer_forms={setting!r}: expected one of {', '.join(LAYER_FORMS)}")
  if setting == "auto":
    return "cpu" if platform == "cpu" else "xla"
  return setting


@contextlib.contextmanager
def use(setting: str):
  """Layers traced inside take `setting`'s forms ("auto" leaves an enclosing choice in force)."""
  if setting not in LAYER_FORMS:
    raise ValueError(f"layer_forms={setting!r}: expected one of {', '.join(LAYER_FORMS)}")
  if setting == "auto":
    yield
    return
  token = _ACTIVE.set(setting)
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def cpu_forms() -> bool:
  """Whether layers traced now take the XLA:CPU reformulations."""
  active = _ACTIVE.get()
  if active == "auto":
    return jax.default_backend() == "cpu"
  return active == "cpu"
