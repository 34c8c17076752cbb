"""The palette explorer: its numbers against solve_dual, its exported flag through run_map's parser, bad requests,
a burst of concurrent updates, and the page itself in a real headless browser (Debian's chromium)."""

import concurrent.futures
import json
import shutil
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest

from map_jax.core.dual import solve_dual
from map_jax.core.palette import quantile_palette
from map_jax.explorer import BadRequest, Explorer, ExplorerServer
from map_jax.spec import palette_quantiles, parse_palettes


def reference_lambda(R, names, quantiles):
  with jax.enable_x64(True):
    c = quantile_palette(np.asarray(R, np.float64), [quantiles[v] for v in names])
    return np.asarray(solve_dual(np.asarray(R, np.float64), c).lam)


@pytest.fixture(scope="module")
def explorer(tiny_workdir):
  return Explorer.from_workdir(tiny_workdir)


def test_view_matches_solve_dual_and_the_flag_round_trips(explorer):
  names = explorer.names
  qs = {names[0]: 0.8, names[1]: 0.65, names[2]: None}
  v = explorer.view(qs, names[0])
  np.testing.assert_allclose(v["lambda"], reference_lambda(explorer.R, names, qs), rtol=0, atol=1e-9)
  ((label, parsed),) = parse_palettes(v["flag"], explorer.targeted, [n for n in names if n not in explorer.targeted])
  assert label == "explorer" and parsed == {names[0]: 0.8, names[1]: 0.65}
  with jax.enable_x64(True):
    c = np.asarray(quantile_palette(explorer.R, palette_quantiles(parsed, names)))
  np.testing.assert_array_equal(c, v["palette"])
  assert v["sensitivity"]["value"] == names[0] and len(v["sensitivity"]["d_lambda"]) == 3
  assert len(v["decoded"]) == 3 and all(0 < d["probability"] <= 1 for d in v["decoded"])
  assert len(v["top_pilot"]) == 5 and v["top_pilot"][0]["weight"] >= v["top_pilot"][-1]["weight"]


def test_infeasible_palettes_give_a_certificate_and_adjust_makes_them_feasible(explorer):
  top = {v: 1.0 for v in explorer.names}
  v = explorer.view(top)
  assert not v["feasible"] and v["certificate"]["asked"] > v["certificate"]["best"]
  assert "No mixture of pilot responses reaches" in v["certificate"]["text"]
  for method, priority in (("interpolate", None), ("greedy", list(reversed(explorer.names)))):
    a = explorer.adjust(top, method, priority)
    assert a["feasible"] and a["adjusted"]["method"] == method
    np.testing.assert_allclose(a["lambda"], reference_lambda(explorer.R, explorer.names, a["quantiles"]), atol=1e-9)


@pytest.mark.parametrize(
  "request_, message",
  [
    ({"nope": 0.5}, "unknown values"),
    ({"positiveness": 1.5}, "must be a number in"),
    ({"positiveness": float("nan")}, "must be a number in"),
    ({"positiveness": True}, "must be a number in"),
    ([0.5], "must be an object"),
  ],
)
def test_bad_quantiles_are_named(explorer, request_, message):
  with pytest.raises(BadRequest, match=message):
    explorer.view(request_)


def _post(url, body: bytes):
  req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
  try:
    with urllib.request.urlopen(req, timeout=60) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def test_server_answers_400_to_malformed_requests_404_to_paths_and_survives_a_burst(explorer):
  server = ExplorerServer(explorer).start()
  try:
    assert server.url.startswith("http://127.0.0.1:")
    api = server.url + "api/view"
    assert _post(api, b"{not json")[0] == 400
    assert _post(api, b'{"quantiles": {"positiveness": -1}}') == (
      400,
      {"error": "quantile of 'positiveness' must be a number in [0, 1] or null, got -1"},
    )
    assert _post(api, b'{"quantiles": {}, "seq": "x"}')[0] == 400
    assert _post(server.url + "api/adjust", b'{"quantiles": {}, "method": "magic"}')[0] == 400
    for path in ("static/../view.py", "static/%2e%2e/view.py", "etc/passwd", "static/app.js/../../server.py"):
      with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.url + path, timeout=30)
      assert e.value.code == 404
    # 40 slider positions from 8 clients at once: every answer is a view or "stale", and the last one counts.
    bodies = [
      json.dumps({"quantiles": {"positiveness": 0.5 + i / 100}, "moved": "positiveness", "seq": i}).encode()
      for i in range(40)
    ]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      answers = list(pool.map(lambda b: _post(api, b), bodies))
    assert all(status == 200 for status, _ in answers)
    assert any(not a.get("stale") for _, a in answers)
    status, last = _post(api, json.dumps({"quantiles": {"positiveness": 0.9}, "seq": 40}).encode())
    assert status == 200 and not last.get("stale")
    np.testing.assert_allclose(
      last["lambda"], reference_lambda(explorer.R, explorer.names, last["quantiles"]), rtol=0, atol=1e-9
    )
  finally:
    server.close()


def _browser():
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service

  chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
  assert chromium and driver, "the browser tests need Debian's chromium and chromium-driver (apt-get install)"
  options = webdriver.ChromeOptions()
  options.binary_location = chromium
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1400"):
    options.add_argument(arg)
  return webdriver.Chrome(service=Service(driver), options=options)


def test_the_page_in_a_real_browser(explorer, tmp_path):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.common.keys import Keys
  from selenium.webdriver.support.ui import WebDriverWait

  names = explorer.names
  server = ExplorerServer(explorer).start()
  browser = _browser()
  wait = WebDriverWait(browser, 60)
  try:
    browser.get(server.url)
    wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")

    def shown():  # λ as the page shows it (read in one script: the table is redrawn on every update)
      cells = browser.execute_script(
        "return arguments[0].map(v => document.getElementById('lambda-' + v).dataset.value)", names
      )
      return dict(zip(names, map(float, cells)))

    def quantiles():  # the sliders' positions, None where "keep at its mean" is ticked
      pos = browser.execute_script(
        "return arguments[0].map(v => document.getElementById('keep-' + v).checked ? null : "
        "Number(document.getElementById('slider-' + v).value))",
        names,
      )
      return dict(zip(names, pos))

    start = shown()
    np.testing.assert_allclose(
      [start[v] for v in names], reference_lambda(explorer.R, names, quantiles()), rtol=0, atol=1e-6
    )
    # Moving a slider (by keyboard, as a user can) updates λ on the page to solve_dual's: the first targeted
    # value, as many steps right as it takes for its level, and so λ, to change (tied pilot rewards make steps).
    q0 = quantiles()
    moved = next(v for v in names if q0[v] is not None)
    steps = next(
      k
      for k in range(1, 101)
      if not np.allclose(
        reference_lambda(explorer.R, names, {**q0, moved: min(1.0, round(q0[moved] + k / 100, 2))}),
        [start[n] for n in names],
      )
    )
    slider = browser.find_element(By.ID, f"slider-{moved}")
    for _ in range(steps):
      slider.send_keys(Keys.ARROW_RIGHT)
    wait.until(lambda b: shown() != start)
    wait.until(
      lambda b: np.allclose([shown()[v] for v in names], reference_lambda(explorer.R, names, quantiles()), atol=1e-6)
    )
    assert (
      "dλ" in browser.find_element(By.ID, "sensitivity").text
      or "Raising" in browser.find_element(By.ID, "sensitivity").text
    )
    # The exported flag goes through run_map's parser to the palette on the page.
    flag = browser.find_element(By.ID, "flag").get_attribute("value")
    assert flag.startswith('--config.palettes="') and flag.endswith('"')
    ((_, parsed),) = parse_palettes(
      flag[len('--config.palettes="') : -1], explorer.targeted, [n for n in names if n not in explorer.targeted]
    )
    assert {v: q for v, q in quantiles().items() if q is not None} == pytest.approx(parsed)
    browser.save_screenshot(str(tmp_path / "explorer.png"))
    # Every raised value at its maximum: infeasible, with the certificate in words; "interpolate" repairs it.
    for v in names:
      if quantiles()[v] is not None:
        browser.find_element(By.ID, f"slider-{v}").send_keys(Keys.END)
    wait.until(lambda b: b.find_element(By.ID, "feasible").text == "infeasible")
    assert "No mixture of pilot responses reaches" in browser.find_element(By.ID, "certificate").text
    browser.save_screenshot(str(tmp_path / "explorer_infeasible.png"))
    browser.find_element(By.ID, "adjust-interpolate").click()
    wait.until(lambda b: b.find_element(By.ID, "feasible").text == "feasible")
    np.testing.assert_allclose(
      [shown()[v] for v in names], reference_lambda(explorer.R, names, quantiles()), rtol=0, atol=1e-6
    )
    # The permalink reproduces the view in a fresh page.
    link = browser.find_element(By.ID, "permalink").get_attribute("href")
    before = shown()
    browser.get("about:blank")
    browser.get(link)
    wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert browser.find_element(By.ID, "error").text == "", (link, browser.find_element(By.ID, "error").text)
    np.testing.assert_allclose([shown()[v] for v in names], [before[v] for v in names], rtol=0, atol=1e-12)
    assert (tmp_path / "explorer.png").stat().st_size > 10_000
  finally:
    browser.quit()
    server.close()


def test_a_scored_table_without_texts_is_explored_by_its_value_columns():
  import pathlib

  table = pathlib.Path(__file__).resolve().parents[2] / "examples" / "map_reference" / "opt1.3b-Anthropic-harmless.json"
  e = Explorer.from_table(str(table))
  info = e.info()
  assert sorted(info["values"]) == sorted(
    ["humor", "gpt2-helpful", "gpt2-harmless", "diversity", "coherence", "perplexity"]
  )
  assert info["n"] == 2312 and not info["has_test"] and not info["has_texts"]
  qs = {v: 0.6 for v in e.names}
  np.testing.assert_allclose(e.view(qs)["lambda"], reference_lambda(e.R, e.names, qs), rtol=0, atol=1e-9)


def test_the_readme_command_serves_the_workdir_on_localhost(tiny_workdir, tmp_path):
  import os
  import pathlib
  import re
  import shlex
  import subprocess
  import sys

  root = pathlib.Path(__file__).resolve().parents[2]
  (command,) = re.findall(r"^python -m experiments\.explore .*$", (root / "README.md").read_text(), re.M)
  argv = shlex.split(command.split("#")[0])
  (tmp_path / "runs").mkdir()
  os.symlink(tiny_workdir, tmp_path / "runs" / "default")  # the workdir the README's first command makes
  proc = subprocess.Popen(
    [sys.executable, *argv[1:]],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    cwd=tmp_path,
    env={**os.environ, "PYTHONPATH": str(root)},
  )
  try:
    line = proc.stdout.readline()
    assert line.startswith("palette explorer on http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
    url = line.split()[3]
    with urllib.request.urlopen(url + "api/info", timeout=60) as r:
      info = json.loads(r.read())
    assert info["values"] == ["length", "diversity", "positiveness"] and info["has_test"] and info["has_texts"]
    with urllib.request.urlopen(url, timeout=60) as r:
      assert b"MAP palette explorer" in r.read()
  finally:
    proc.terminate()
    proc.wait(timeout=60)
