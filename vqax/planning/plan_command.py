"""`vqax plan`: per-device memory of the real train step, compiled from shapes, before any training.

  vqax plan --config configs/vqvae_dcase.py [--batch_size 16 --memory_saver ...]
  vqax plan --config configs/vqvae_dcase.py --budget 8GiB [--fit n_patches]   (a field the task can fit)
  vqax plan --config configs/vqvae_dcase.py --target h100x8 [--fit batch_size]  (a GPU that is not here)

Prints parameters, optimizer state, accumulator, batch, temporaries and the compiled peak for the config and,
side by side, its variants (plain, bf16, remat, bf16+remat, accumulation). With --budget, the largest
per-device batch_size (or another of the task's fit fields) within it for each variant and the `vqax train` command that uses it.
Compiles for the default JAX backend (--device cpu/gpu/tpu picks one), or with --target for the local CPU or
a GPU that need not be here (h100, h200, a100-80g, h100x8, h100:1x2x4, a .txtpb description: see
vqax/planning/targets.py; a GPU target needs the [plan-gpu] extra). With a target, --fit without --budget
fits the memory JAX may use on that device. Reads no data.
"""
import json
import math
import pathlib
import shlex

from vqax.errors import ConfigError

def add_arguments(p) -> None:
  p.add_argument("--config", default="configs/vqvae_dcase.py", help="config file, optionally :variant")
  p.add_argument("--budget", default=None, help="memory per device to fit, e.g. 8GiB or 512MiB")
  p.add_argument("--fit", default=None,
                 help="what --budget searches (default batch_size) or another of the task's fit fields (e.g. "
                      "n_patches); with --target and no --budget, the target's memory is the budget")
  p.add_argument("--target", default=None,
                 help="compile for cpu, h100, h200, a100-80g (xN devices, :PxHxD topology) or a .txtpb GPU "
                      "description instead of this machine's default backend")
  p.add_argument("--variants", default="plain,bf16,remat,bf16+remat,accumulation",
                 help="comma list of variants to show beside the config")
  p.add_argument("--json", default=None, help="also write the plans (and fits) to this JSON file")


def run(args, extra) -> dict:
  from vqax import config_loading, platforms, tasks
  from vqax.planning import planner, targets
  config = tasks.apply_overrides(config_loading.load_config(args.config), extra)
  platforms.select_platform(config)
  if args.target:
    targets.use_cpu_backend_on_cpu_hosts()  # before JAX starts a backend (parsing "cpu" starts one)
  target = targets.parse(args.target) if args.target else None
  devices = target.devices() if target is not None else None
  variants = [v for v in args.variants.split(",") if v]
  for v in variants:
    if v not in planner.VARIANTS:
      raise ConfigError(f"--variants {v}: expected some of {', '.join(planner.VARIANTS)}")
  budget = planner.parse_bytes(args.budget) if args.budget else None
  if budget is None and args.fit and target is not None:
    budget = target.usable_bytes
  args.fit = args.fit or "batch_size"
  if args.fit not in planner.fit_fields(config):
    raise ConfigError(f"--fit {args.fit}: expected one of {', '.join(planner.fit_fields(config))} for task "
                      f"{config.task!r}")

  plans = planner.plan_variants(config, variants, devices=devices)
  first = next(iter(plans.values()))
  where = f" (--target {target.describe()})" if target is not None else ""
  print(f"[vqax] memory per device of the train step, compiled ahead of time for {first.n_devices} x "
        f"{first.device}{where} (phase {first.phase!r}; no data read):")
  print(planner.format_plans(plans, memory=target.memory_bytes if target is not None else None))
  result = {"device": first.device, "n_devices": first.n_devices,
            "plans": {name: p.to_dict() for name, p in plans.items()}}
  if target is not None:
    result["target"] = _describe_target(target)
    _print_target_notes(target)
  if budget is not None:
    result["fits"] = _fit_and_print(config, args, extra, variants, budget, plans, devices)
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
  return result


def _describe_target(target) -> dict:
  return {"name": target.name, "platform": target.platform, "device_kind": target.device_kind,
          "n_devices": target.n_devices, "topology": target.topology, "memory_bytes": target.memory_bytes,
          "allocator_fraction": target.allocator_fraction, "usable_bytes": target.usable_bytes,
          "source": target.source}


def _print_target_notes(target) -> None:
  from vqax.planning import planner, targets
  memory, usable = planner.format_bytes(target.memory_bytes), planner.format_bytes(target.usable_bytes)
  if target.platform == "cpu":
    print(f"[vqax] device memory: the host's {memory} of RAM.")
    return
  print(f"[vqax] device memory {memory} ({target.source}); JAX's allocator may use "
        f"{target.allocator_fraction:.0%} of it, {usable} (XLA_CLIENT_MEM_FRACTION changes that share).")
  print(f"[vqax] {targets.GPU_CAVEATS}")


def _fit_and_print(config, args, extra, variants, budget, plans, devices=None) -> dict:
  from vqax.planning import planner
  print(f"\n[vqax] largest {args.fit} per device whose compiled peak fits {planner.format_bytes(budget)}:")
  rows = [["variant", args.fit, "compiled peak", f"at {args.fit} + 1", "compiles"]]
  commands, fits = [], {}
  for name in variants or ["config"]:
    flags = planner.variant_flags(config, name) if name != "config" else []
    fit, = planner.fit_budgets(planner.with_flags(config, flags), [budget], field=args.fit, variant=name,
                               flags=flags, known=plans.get(name), devices=devices)
    fits[name] = {"size": fit.size, "peak": fit.plan and fit.plan.peak,
                  "next_peak": fit.next_plan and fit.next_plan.peak, "compiles": fit.compiles}
    if fit.size is None:
      rows.append([name, "none", "-", planner.format_bytes(fit.next_plan.peak), str(fit.compiles)])
      continue
    rows.append([name, str(fit.size), planner.format_bytes(fit.plan.peak),
                 planner.format_bytes(fit.next_plan.peak) if fit.next_plan else "(search cap)", str(fit.compiles)])
    final = _train_flags(config, name, flags, args.fit, fit.size)
    command = shlex.join(["vqax", "train", "--config", args.config, "--workdir", "WORKDIR"] + list(extra) + final)
    fits[name]["command"] = command
    commands.append(f"  {name}: {command}")
  print(planner.format_table(rows))
  print("\n".join(commands))
  return fits


def _train_flags(config, variant, flags, field, size) -> list[str]:
  """`vqax train` flags for a fit: the variant's plus the fitted size.

  For accumulation the micro-batch was fitted; as many micro-steps follow as reach the config's effective
  batch (one when the micro-batch alone reaches it: no accumulator, so still within the budget).
  """
  from vqax.planning import planner
  if variant == "accumulation" and field == "batch_size":
    effective = int(config.batch_size) * int(config.gradient_accumulation_steps)
    steps = max(1, math.ceil(effective / size))
    keep = steps == int(config.gradient_accumulation_steps)
    return (planner.variant_flags(config, "plain") + planner.size_flags(field, size, config)
            + ([] if keep else ["--gradient_accumulation_steps", str(steps)]))
  return list(flags) + planner.size_flags(field, size, config)
