"""Shared body of the MAP-by-decoding launchers: --config (a configs/*.py file, fields overridable as flags),
--workdir, --force; each launcher runs the pipeline up to its own stage."""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py")


def define_flags():
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Run config (configs/*.py); override fields as "
                                  "--config.prompts.num_test=16.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory: stage outputs, the report; a rerun resumes there.")
  flags.DEFINE_list("force", [], "Stages to rerun even if done (e.g. decode,report).")


def launch(until: str, done_message=None):
  """Run the pipeline up to `until` from the flags; print where the results are."""
  from map_jax import pipeline

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    if not FLAGS.workdir:
      raise app.UsageError("--workdir is required")
    if not FLAGS["verbosity"].present:  # orbax and XLA log a lot at INFO; -v 0 brings it back
      logging.set_verbosity(logging.WARNING)
    announce = lambda stage, skipped: print(  # noqa: E731
        f"stage {stage}: {'done before, skipped' if skipped else 'running'}", flush=True)
    try:
      timings = pipeline.run(FLAGS.config, FLAGS.workdir, until=until, force=FLAGS.force, on_stage=announce)
    except (ValueError, FileNotFoundError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    for stage, t in timings.items():
      print(f"{stage:<20} {'skipped (done)' if t['skipped'] else 'ran'} {t.get('seconds', 0.0):8.1f} s")
    if done_message:
      print(done_message(FLAGS.workdir))
    return 0

  define_flags()
  app.run(main)
