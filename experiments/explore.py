r"""The palette explorer: a local web page with one slider per value; λ, feasibility, ESS and answers follow.

  python -m experiments.explore --workdir=runs/default              # a run_map workdir: pilot + test answers
  python -m experiments.explore --rewards=pilot.rewards.jsonl        # any scored table

Serves on http://127.0.0.1:PORT/ only (--port=0 picks a free port) and prints the URL; stop with Ctrl-C.
Everything the page loads comes from map-jax itself: it works offline. See map_jax/explorer/.
"""

from absl import app, flags

from experiments import _launch


def define_flags():
  flags.DEFINE_string("workdir", None, "A run_map workdir (its pilot.rewards.jsonl, pilot.jsonl, candidates).")
  flags.DEFINE_string("rewards", None, "A scored table instead (experiments.score output, a pilot table).")
  flags.DEFINE_integer("port", 8765, "Port on 127.0.0.1 (0: any free port).")


def main(argv):
  from map_jax.explorer import Explorer, ExplorerServer

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  if bool(FLAGS.workdir) == bool(FLAGS.rewards):
    raise app.UsageError("give exactly one of --workdir and --rewards")
  explorer = Explorer.from_workdir(FLAGS.workdir) if FLAGS.workdir else Explorer.from_table(FLAGS.rewards)
  explorer.warm_up()
  server = ExplorerServer(explorer, FLAGS.port)
  print(f"palette explorer on {server.url} (Ctrl-C stops it)", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.close()
  return 0


if __name__ == "__main__":
  define_flags()
  _launch.run(main)
