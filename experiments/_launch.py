"""What every launcher shares: one error style (`run`), and the body of the MAP-by-decoding launchers
(--config, a configs/*.py file with fields overridable as flags, --workdir, --force; each runs the pipeline up
to its own stage).

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
    timings = pipeline.run(flags.FLAGS.config, workdir, until=until, force=flags.FLAGS.force, on_stage=announce)
    for stage, t in timings.items():
      print(f"{stage:<20} {'skipped (done)' if t['skipped'] else 'ran'} {t.get('seconds', 0.0):8.1f} s")
    if done_message:
      print(done_message(workdir))
    return 0

  define_flags()
  run(main)
