"""mixlab as a regular (non-editable) install: a wheel built from this tree, installed into a scratch
folder, runs ``python -m mixlab`` from an unrelated directory with the configs it ships."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_built_wheel_ships_the_configs_and_runs_from_anywhere(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("mixlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    on_disk = {str(p.relative_to(REPO / "mixlab")) for p in (REPO / "mixlab" / "conf").rglob("*.yaml")}
    assert on_disk and {f"mixlab/{n}" for n in on_disk} <= names  # every config file, none left behind

    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import mixlab; print(mixlab.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=120)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr  # the installed copy, not the tree
    run = subprocess.run([sys.executable, "-m", "mixlab", "data=moons", "model=mlp", "model.hidden=[8]", "device=cpu",
                          "trainer.epochs=1", "trainer.progress=false", "hydra.run.dir=run"], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((elsewhere / "run" / "summary.json").read_text())["status"] == "completed"
