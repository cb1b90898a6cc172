"""Studies side by side over one setting (``python -m mixlab.study.sizes``; issue 26's training sizes)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from mixlab.study.sizes import main

from .test_study_report import ACCS, make_plan, make_study


def two_sizes(tmp_path):
    small = {**ACCS, "schedule": [0.925, 0.95, 0.915]}   # schedule − beta: +0.5, +2.0, +0.5 pp
    large = {**ACCS, "schedule": [0.93, 0.93, 0.90]}     # schedule − beta: +1.0, 0.0, −1.0 pp
    folders = []
    for name, accs, size in (("a", small, 500), ("b", large, 2000)):
        plan = make_plan(config={"data.name": "digits", "data.train_subset": size})
        folders.append(make_study(tmp_path / name, accs, plan=plan).parent)
    return folders


def test_each_size_shows_its_studys_primary_family_and_the_trend_is_the_least_squares_slope(tmp_path):
    a, b = two_sizes(tmp_path)
    assert main([str(b), str(a), "--out", str(tmp_path / "out")]) == 0  # any order: sorted by the setting
    md = (tmp_path / "out" / "sizes.md").read_text()
    assert md.index("data.train_subset = 500") < md.index("data.train_subset = 2000")
    small = md.split("data.train_subset = 500")[1].split("## ")[0]
    # the paired mean difference and its t interval, in points (float64, from the definitions)
    d = np.array([0.5, 2.0, 0.5])
    half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert f"| schedule vs beta on test_acc | 3 | {d.mean():+.2f} | [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}] |" \
        in small
    assert "| schedule vs its control on test_acc | 3 |" in small
    # the trend: slope of the six per-seed differences on log2(size), its t interval on 4 degrees of freedom
    x = np.array([math.log2(500)] * 3 + [math.log2(2000)] * 3)
    y = np.array([0.5, 2.0, 0.5, 1.0, 0.0, -1.0]) / 100
    slope = np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2)
    resid = y - (y.mean() + slope * (x - x.mean()))
    se = math.sqrt(np.sum(resid ** 2) / 4 / np.sum((x - x.mean()) ** 2))
    t = sps.t.ppf(0.975, 4)
    row = next(line for line in md.split("## Secondary")[1].splitlines() if line.startswith("| schedule vs beta "))
    assert row == (f"| schedule vs beta on test_acc | {100 * slope:+.2f} | [{100 * (slope - t * se):+.2f}, "
                   f"{100 * (slope + t * se):+.2f}] | 6 (2) |")
    dump = json.loads((tmp_path / "out" / "sizes.json").read_text())
    assert dump["trend"][0]["slope"] == pytest.approx(slope, rel=1e-9)
    assert sorted(p.name for p in (tmp_path / "out" / "figures").iterdir()) == ["delta.png", "strength.png"]


def test_labels_say_what_ran_not_config_keys(tmp_path):
    a, _ = two_sizes(tmp_path)
    assert main([str(a), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "sizes.md").read_text()
    ran = md.split("What ran: ")[1].split("\n")[0]
    assert "tuned Beta: Beta(" in ran and "no mixing: no mixing" in ran and "schedule (α annealed): schedule α " in ran
    assert "lam=" not in ran and "lam." not in ran


def test_a_folder_that_is_no_study_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected a study folder" in err[0]
