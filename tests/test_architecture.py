"""The shape of the package: no import cycles inside map_jax, and dependencies that point down.

Every import counts, also those inside functions (a local import that dodges a cycle at load time is still a
cycle in the design).
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def import_graph() -> dict[str, set[str]]:
  """{module: the map_jax modules it imports}, from the source alone."""
  files = {}
  for path in (ROOT / "map_jax").rglob("*.py"):
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    files[name] = path
  graph = {}
  for name, path in files.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        edges |= {a.name for a in node.names if a.name in files}
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          up = package.split(".")[: len(package.split(".")) - node.level + 1]
          base = ".".join(up + ([base] if base else []))
        for a in node.names:
          edges.add(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base)
    graph[name] = {e for e in edges if e in files and e != name}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_cycle_finder_finds_cycles():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_map_jax():
  graph = import_graph()
  assert {"map_jax.core.dual", "map_jax.pipeline", "map_jax.rewards.registry"} <= set(graph)
  assert "map_jax.core.implicit" in graph["map_jax.core.dual"]  # the graph sees real edges
  assert cycles(graph) == []


def test_dependencies_point_down():
  graph = import_graph()
  for module, deps in graph.items():
    if module.startswith("map_jax.core"):
      assert all(d.startswith("map_jax.core") for d in deps), (module, deps)  # core: pure math, jax only
    if module.startswith("map_jax.models"):
      assert not any(d.startswith(("map_jax.rewards", "map_jax.align", "map_jax.eval")) for d in deps), module
    if module.startswith("map_jax.eval"):
      assert "map_jax.pipeline" not in deps and "map_jax.workdir" not in deps, module  # data, not paths
    if module != "map_jax.compare":  # the comparison drives the pipeline's stages; nothing else does
      assert "map_jax.pipeline" not in deps, f"{module} imports the pipeline, which sits on top"
    assert "map_jax.compare" not in deps, f"{module} imports the comparison, the top layer"
  assert graph["map_jax.plugins"] == set() and graph["map_jax.store"] == set()  # the bottom layer
  for path in (ROOT / "map_jax").rglob("*.py"):
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(n == "experiments" or n.startswith(("experiments.", "configs", "benchmarks")) for n in names), path


def test_public_names_are_callables_not_submodules():
  """`map_jax.X` is the same object whatever was imported before (no name is also a submodule)."""
  import importlib
  import types

  import map_jax

  for module in ("map_jax.sampling", "map_jax.rewards", "map_jax.align.decode", "map_jax.core.frontier"):
    importlib.import_module(module)
  submodules = {p.stem for p in (ROOT / "map_jax").iterdir()}
  for name in map_jax.__all__:
    assert name not in submodules, name
    assert not isinstance(getattr(map_jax, name), types.ModuleType), name
  assert callable(map_jax.generate) and map_jax.generate.__module__ == "map_jax.sampling"


def test_the_fine_tuning_loop_knows_no_method():
  graph = import_graph()
  methods = {"map_jax.align.ppo", "map_jax.align.dpo", "map_jax.align.map_f", "map_jax.rewards.registry"}
  assert not graph["map_jax.align.trainer"] & methods, graph["map_jax.align.trainer"]
  assert "map_jax.align.trainer" in graph["map_jax.align.ppo"]  # PPO runs on it
