"""What every launcher shares: one error style (`run`), and the body of the MAP-by-decoding launchers
(--config, a configs/*.py file with fields overridable as flags, --workdir, --force, the multi-host flags; each
runs the pipeline up to its own stage).

Errors: a launcher that fails prints one line, `error: ...` naming what is wrong, and exits with status 1.
Set MAP_JAX_TRACEBACK=1 for the full traceback instead. Logging is at WARNING unless -v/--verbosity is given.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
DEFAULT_CONFIG = os.path.join(CONFIGS, "default.py")


def define_flags(default_config: str = DEFAULT_CONFIG):
  config_flags.DEFINE_config_file(
    "config",
    default_config,
    "Run config (configs/*.py); override fields as --config.prompts.num_test=16.",
    lock_config=True,
  )
  flags.DEFINE_string("workdir", None, "Run directory: stage outputs, the report; a rerun resumes there.")
  flags.DEFINE_list("force", [], "Stages to rerun even if done (e.g. decode,report).")


def define_distributed_flags():
  """The multi-host flags of the pipeline launchers (see `join_distributed`)."""
  flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-host run first (map_jax.parallel.initialize_distributed): SLURM, Cloud TPU and Kubernetes "
    "are detected; elsewhere give --coordinator_address, --num_processes and --process_id.",
  )
  flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 (implies --distributed).")
  flags.DEFINE_integer("num_processes", None, "Multi-host: how many processes take part.")
  flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0 to num_processes - 1.")


def join_distributed() -> None:
  """`initialize_distributed` when --distributed or --coordinator_address asks for it (before any JAX call)."""
  f = flags.FLAGS
  if not (f.distributed or f.coordinator_address):
    if f.num_processes is not None or f.process_id is not None:
      raise ValueError("--num_processes and --process_id need --coordinator_address (or --distributed)")
    return
  from map_jax import parallel

  given = {"coordinator_address": f.coordinator_address, "num_processes": f.num_processes, "process_id": f.process_id}
  parallel.initialize_distributed(**{k: v for k, v in given.items() if v is not None})


TRACEBACK_ENV = "MAP_JAX_TRACEBACK"


def one_line(error: BaseException) -> str:
  """An exception as the one line a launcher prints."""
  text = " ".join(str(error).split()) or type(error).__name__
  return f"error: {text}"


def run(main):
  """`absl.app.run(main)` with the launchers' error style (see the module docstring)."""

  def wrapped(argv):
    if not flags.FLAGS["verbosity"].present:  # orbax, XLA and JAX's backend probing log a lot at INFO
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except (app.UsageError, KeyboardInterrupt, SystemExit):
      raise
    except Exception as e:  # noqa: BLE001  (every failure gets the same one-line report)
      if os.environ.get(TRACEBACK_ENV):
        raise
      print(one_line(e), file=sys.stderr)
      # A multi-host run: leave now rather than wait at JAX's shutdown barrier for processes stuck in a
      # collective (they stop once the coordinator sees this one gone).
      jax = sys.modules.get("jax")
      if jax is not None and jax.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
      return 1

  app.run(wrapped)


def workdir_of(argv) -> str:
  """--workdir, required, and no positional arguments."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  return flags.FLAGS.workdir


def announce(stage: str, skipped: bool) -> None:
  """Print a stage (or unit) as it starts, or that it is done from an earlier run."""
  print(f"stage {stage}: {'done before, skipped' if skipped else 'running'}", flush=True)


def launch(until: str, done_message=None):
  """Run the pipeline up to `until` from the flags; print where the results are."""
  from map_jax import pipeline

  def main(argv):
    workdir = workdir_of(argv)
    join_distributed()
    from map_jax import parallel

    writer = parallel.is_writer()  # in a multi-host run, process 0 prints
    timings = pipeline.run(
      flags.FLAGS.config, workdir, until=until, force=flags.FLAGS.force, on_stage=announce if writer else None
    )
    if not writer:
      return 0
    for stage, t in timings.items():
      print(f"{stage:<20} {'skipped (done)' if t['skipped'] else 'ran'} {t.get('seconds', 0.0):8.1f} s")
    if done_message:
      print(done_message(workdir))
    return 0

  define_flags()
  define_distributed_flags()
  run(main)
