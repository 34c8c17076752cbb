"""The palette explorer: a local page where a user drags one slider per value and sees λ, feasibility, ESS and
the aligned answers change live (`python -m experiments.explore --workdir=RUN`).

`view.Explorer` computes what the page shows (pure NumPy/JAX over the pilot set); `server.ExplorerServer`
serves it on 127.0.0.1 with Python's standard library, the page's files coming from `static/`.
"""

from map_jax.explorer.server import ExplorerServer
from map_jax.explorer.view import BadRequest, Explorer, palette_flag

__all__ = ["BadRequest", "Explorer", "ExplorerServer", "palette_flag"]
