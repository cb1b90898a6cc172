"""Without a network, a Hugging Face data set that is not cached fails in one line naming it and what to do, at
once (issue: ~20 lines of huggingface_hub's retry warnings over ~25 s came first); a cached one is read. The Hub
is made unreachable by pointing HF_ENDPOINT at a local port nothing listens on, so these hold online too."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

datasets = pytest.importorskip("datasets")
import mixlab.data.hf as hf_text  # noqa: E402
from mixlab.data.hf import SPECS, HFTextError, load_hf_text  # noqa: E402

from .test_hf import write_hub_style_cache  # noqa: E402

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def refused() -> str:
    """An endpoint on a local port bound but never listened on: a connection to it is refused at once."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


@pytest.fixture
def listening() -> tuple[str, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()
    s.close()


def offline_env(tmp_path, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "XDG_CACHE")) and k.lower() not in PROXY_VARS}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**env, "HF_ENDPOINT": endpoint, "HOME": str(home)}


@pytest.fixture
def hub_at(monkeypatch):
    def point(endpoint: str) -> None:
        for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", *PROXY_VARS, *(v.upper() for v in PROXY_VARS)):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    return point


def test_the_command_prints_one_line_naming_the_data_set_and_what_to_do(tmp_path, refused):
    r = subprocess.run([sys.executable, "-m", "mixlab", "data=ag_news", f"data.root={tmp_path / 'data'}",
                        "model=textcnn", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                       timeout=300, env=offline_env(tmp_path, refused))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    line = r.stderr.strip()
    assert line.startswith(f"mixlab: error: data=ag_news: not in {tmp_path / 'data'} and the Hugging Face Hub cannot "
                           f"be reached ({refused.split('//')[1]}: "), line
    assert "run once with network and data.download=true" in line and "fancyzhx___ag_news" in line, line


LOAD = textwrap.dedent("""
    import json, sys, time
    from mixlab.data.hf import HFTextError, load_hf_text
    t0 = time.perf_counter()
    try:
        load_hf_text("trec", root=sys.argv[1], download=True)
        message = "LOADED"
    except HFTextError as e:
        message = str(e)
    print(json.dumps({"seconds": time.perf_counter() - t0, "message": message}))
""")


def test_the_loader_fails_at_once_without_retrying(tmp_path, refused):
    """The load itself, timed inside the process (imports aside): huggingface_hub's five retries wait 1+2+4+8+8 s."""
    r = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "data")], capture_output=True, text=True,
                       timeout=300, env=offline_env(tmp_path, refused))
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["message"].startswith("data=trec: not in ") and "cannot be reached" in out["message"], out
    assert out["seconds"] < 10, out
    assert r.stderr == "", r.stderr  # no retry warnings


def test_a_cached_copy_is_read_when_the_hub_cannot_be_reached(tmp_path, refused, hub_at, monkeypatch):
    root = tmp_path / "cache"
    write_hub_style_cache(root, "fancyzhx/ag_news", "text", "label", SPECS["ag_news"].classes, {"train": 5, "test": 2})
    hub_at(refused)
    t0 = time.perf_counter()
    d = load_hf_text("ag_news", root=root, download=True)
    assert time.perf_counter() - t0 < 10
    assert d.source == "hub:fancyzhx/ag_news" and d.train[0] == [f"cached train {i}" for i in range(5)]


def test_without_a_cache_the_library_is_never_called(tmp_path, refused, hub_at, monkeypatch):
    hub_at(refused)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the Hub was tried"))
    with pytest.raises(HFTextError) as e:
        load_hf_text("sst2", root=tmp_path, download=True)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"data=sst2: not in {tmp_path} and the Hugging Face Hub")
    assert "stanfordnlp___sst2" in str(e.value)


def test_the_probe_goes_where_the_request_would(refused, listening, hub_at, monkeypatch):
    hub_at(refused)
    assert "Connection refused" in hf_text.hub_unreachable() and refused.split("//")[1] in hf_text.hub_unreachable()
    hub_at("http://%s:%d" % listening)
    assert hf_text.hub_unreachable() is None
    hub_at("https://hub.invalid")  # a name that never resolves (RFC 2606)
    assert hf_text.hub_unreachable().startswith("hub.invalid:443: ")
    monkeypatch.setenv("https_proxy", "http://%s:%d" % listening)  # through a proxy: the proxy is what must answer
    assert hf_text.hub_unreachable() is None
    monkeypatch.setenv("no_proxy", "hub.invalid")
    assert hf_text.hub_unreachable().startswith("hub.invalid:443: ")
