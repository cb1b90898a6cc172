"""W&B as a study's dashboard: a study's job is grouped by its arm, typed by its phase and tagged with its
study and plan; the report is one run of its own. Tested by reading the offline runs' files."""
from __future__ import annotations

import json
import struct
import time
import warnings
from pathlib import Path

import pytest

from mixlab.run.train import train

from .test_config import CONF, compose_cfg

TINY = ("data=digits", "data.train_subset=64", "model=mlp", "model.hidden=[8]", "device=cpu", "trainer.epochs=1",
        "trainer.progress=false", "logger=wandb", "logger.mode=offline", "logger.tags=[mine]")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    settings = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path),
                "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "cache")}
    for key, value in settings.items():
        monkeypatch.setenv(key, value)


def records(folder: Path, wait: float = 30.0) -> list:
    """The records of the one offline run under ``folder``: its ``run-*.wandb`` file is a LevelDB-style log
    (a 7-byte header, then 32 KiB blocks of chunks: crc32c, length, type) of ``wandb_internal_pb2.Record``s.
    W&B's service writes it on after ``finish()`` returns: read until its exit record is there."""
    deadline = time.monotonic() + wait
    while True:
        out = _read_log(folder)
        if any(r.HasField("exit") for r in out) or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


def _read_log(folder: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    [path] = folder.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, buf, out = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):
            break  # a chunk not yet written whole
        buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def run_record(folder: Path):
    [run] = [r.run for r in records(folder) if r.HasField("run")]
    return run


def logged(folder: Path) -> dict[str, dict]:
    """Each logged key -> its fields (``_type``, ``path``, ...), from the run's history records."""
    out: dict[str, dict] = {}
    for r in records(folder):
        for item in r.history.item if r.HasField("history") else ():
            if len(item.nested_key) == 2:
                out.setdefault(item.nested_key[0], {})[item.nested_key[1]] = json.loads(item.value_json)
    return out


def test_a_study_job_is_grouped_by_arm_typed_by_phase_and_tagged_and_a_plain_run_as_before(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    study = "+study.run={name:s1,plan:abc123,phase:tuning,arm:beta}"
    train(compose_cfg(*TINY, "seed=3", study), tmp_path / "study")
    run = run_record(tmp_path / "study")
    assert (run.run_group, run.job_type) == ("beta", "tuning")
    assert list(run.tags) == ["mine", "study:s1", "plan:abc123"]
    # without study.run: grouped by the command's overrides minus the seed, as Hydra hands them to the run
    overrides = [*TINY, "seed=3"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    before = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(hydra_cfg)
    try:
        train(compose_cfg(*overrides), tmp_path / "plain")
    finally:
        HydraConfig.instance().cfg = before
    run = run_record(tmp_path / "plain")
    assert run.run_group == ",".join(sorted(TINY)) and run.job_type == "" and list(run.tags) == ["mine"]


def test_a_bad_study_run_is_one_line():
    from mixlab.run.config import ConfigError, validate

    with pytest.raises(ConfigError, match=r"^study\.run=\{.*'phase': 'tunning'.*\}: expected null, or \{name, plan, "
                                          r"phase, arm\}.*$"):
        validate(compose_cfg("+study.run={name:s1,plan:abc123,phase:tunning,arm:beta}"))


def test_the_report_is_one_run_holding_its_tables_and_figures(tmp_path):
    from PIL import Image

    from mixlab.run.loggers import log_report

    out = tmp_path / "study_a" / "report"
    out.mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 30, 30)).save(out / "forest.png")
    log_report(out, config={"plan": "abc123"}, tables={"comparison": (["arm", "acc"], [["beta", 0.9], ["none", 0.8]])},
               images={"forest_plot": out / "forest.png"}, tags=["study:study_a"], mode="offline")
    run = run_record(out)
    assert (run.display_name, run.run_group, run.job_type, list(run.tags)) == ("study_a", "report", "report",
                                                                                ["study:study_a"])
    media = logged(out)
    assert (media["comparison"]["_type"], media["forest_plot"]["_type"]) == ("table-file", "image-file")
    [files] = out.glob("wandb/offline-run-*/files")
    table = json.loads((files / media["comparison"]["path"]).read_text())
    assert table["columns"] == ["arm", "acc"] and table["data"] == [["beta", 0.9], ["none", 0.8]]
    assert (files / media["forest_plot"]["path"]).read_bytes() == (out / "forest.png").read_bytes()


def test_a_report_that_wandb_refuses_is_one_warning(tmp_path, monkeypatch):
    import wandb

    from mixlab.run.loggers import log_report

    def broken(**kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(wandb, "init", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log_report(tmp_path / "report", config={}, tables={"t": (["a"], [[1]])}, images={}, mode="online")
    assert [str(w.message) for w in caught] == ["W&B init failed (ConnectionError: no network); continuing with "
                                                 "local records only"]
