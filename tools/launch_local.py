"""Start N cooperating JAX processes on this machine, to try multi-host training without a cluster.

  python -m tools.launch_local -n 2 --devices_per_process 2 -- \
      vqax train --config configs/vqvae_dcase.py:smoke --workdir runs/mh --config.batch_size=1

Each process gets VQAX_COORDINATOR_ADDRESS=localhost:PORT, VQAX_NUM_PROCESSES=N and VQAX_PROCESS_ID=i
(read by vqax/train/distributed.py) and, on CPU, that many forced host devices; they talk over gloo.
Output lines are prefixed with [p<i>]. If one process fails the others are stopped, since the survivors
would wait forever in their next collective. Exits with the first non-zero status, else 0.
"""
import argparse
import os
import socket
import subprocess
import sys
import threading
import time

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(index: int, count: int, port: int, devices: int | None, platform: str, base=None) -> dict:
  """The environment of process `index`: distributed settings, device count, platform."""
  env = dict(os.environ if base is None else base)
  env.update(VQAX_COORDINATOR_ADDRESS=f"localhost:{port}", VQAX_NUM_PROCESSES=str(count),
             VQAX_PROCESS_ID=str(index))
  if platform:
    env["JAX_PLATFORMS"] = platform
  if devices:
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    env["XLA_FLAGS"] = " ".join(flags + [f"{DEVICE_COUNT_FLAG}={devices}"])
  return env


def _relay(index: int, stream, out) -> None:
  for line in stream:
    out.write(f"[p{index}] {line}")
    out.flush()


def launch(command: list[str], *, num_processes: int, devices_per_process: int | None = None, port: int = 0,
           platform: str = "cpu", timeout: float | None = None, out=sys.stdout) -> int:
  """Run `command` as processes 0..num_processes-1; returns the first non-zero exit status, or 0."""
  port = port or free_port()
  procs, relays = [], []
  for i in range(num_processes):
    proc = subprocess.Popen(command, env=process_env(i, num_processes, port, devices_per_process, platform),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    relay = threading.Thread(target=_relay, args=(i, proc.stdout, out), daemon=True)
    relay.start()
    procs.append(proc)
    relays.append(relay)
  deadline = None if timeout is None else time.monotonic() + timeout
  status, reason = 0, ""
  try:
    while any(p.poll() is None for p in procs):
      failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
      if failed or (deadline is not None and time.monotonic() > deadline):
        status = failed[0][1] if failed else 124
        reason = f"process {failed[0][0]} exited with {status}" if failed else f"timed out after {timeout} s"
        break
      time.sleep(0.1)
  finally:
    for p in procs:
      if p.poll() is None:
        p.terminate()
    for p in procs:
      try:
        p.wait(timeout=10)
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    for relay in relays:
      relay.join(timeout=10)
  if reason:
    out.write(f"[launch] {reason}; stopped the others\n")
  return status or next((p.returncode for p in procs if p.returncode), 0)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   usage="%(prog)s [-n N] [--devices_per_process D] -- command ...")
  parser.add_argument("-n", "--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=None,
                      help="forced CPU devices per process (XLA_FLAGS); default: XLA's own")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
  parser.add_argument("--platform", default="cpu", help="JAX_PLATFORMS for the processes ('' leaves it)")
  parser.add_argument("--timeout", type=float, default=None, help="stop everything after this many seconds")
  parser.add_argument("command", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command to run after --")
  return launch(command, num_processes=args.num_processes, devices_per_process=args.devices_per_process,
                port=args.port, platform=args.platform, timeout=args.timeout)


if __name__ == "__main__":
  sys.exit(main())
