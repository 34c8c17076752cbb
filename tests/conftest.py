"""Test-wide setup: the test process (and the notebook kernels it starts) use one core.

XLA:CPU (jaxlib 0.10.2) intermittently hangs on vmapped while-loop graphs such as the
batched dual solver over a few hundred palettes: every thread asleep, the caller
waiting on its buffers for good. Seen here within minutes with two such processes
running; neither --xla_cpu_multi_thread_eigen=false nor the removed thunk-runtime flag
helped, while a process pinned to one core (a one-thread intra-op pool) never hung in
the same runs and was as fast. The pin must come before JAX starts its CPU client.
"""

import os

if hasattr(os, "sched_setaffinity"):
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
