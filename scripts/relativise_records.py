"""One-off (issue 24): make a committed study's records travel by removing the absolute folder it ran in.

    python scripts/relativise_records.py docs/results/rcf_small /work/rcf/

``/work/rcf/tuning/tuned.yaml`` becomes ``tuning/tuned.yaml`` (relative to the study folder, where the
committed ``tuning/`` is) in every record under ``records/`` and ``tuning/`` (summary.json, .hydra/*.yaml,
tuning.json), and ``tuned=%2Fwork%2Frcf%2F...`` in a run folder's name likewise. It changes only paths and
checks that it did: every JSON or YAML value that differs is a string that differs by the prefix alone, and
the report made from the rewritten records equals the committed one with the prefix removed (every number
the same). Then it writes that report over the committed one.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import yaml


def _only_paths(old: object, new: object, prefix: str, where: str) -> None:
    """Raise unless ``new`` is ``old`` with ``prefix`` removed from strings, and nothing else changed."""
    if isinstance(old, dict) and isinstance(new, dict) and list(old) == list(new):
        for k in old:
            _only_paths(old[k], new[k], prefix, f"{where}.{k}")
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            _only_paths(a, b, prefix, f"{where}[{i}]")
    elif old != new and not (isinstance(old, str) and old.replace(prefix, "") == new):
        raise SystemExit(f"{where}: {old!r} -> {new!r} is not a path made relative")


def rewrite(study: Path, prefix: str) -> int:
    """Rewrite the records of ``study``; returns how many files changed."""
    changed = 0
    for f in sorted(p for sub in ("records", "tuning") for p in (study / sub).rglob("*")
                    if p.is_file() and p.suffix in (".json", ".yaml")):
        text = f.read_text(encoding="utf-8")
        if prefix not in text:
            continue
        new = text.replace(prefix, "")
        load = json.loads if f.suffix == ".json" else yaml.safe_load
        _only_paths(load(text), load(new), prefix, str(f))
        f.write_text(new, encoding="utf-8")
        changed += 1
    encoded = quote(prefix, safe="")
    for d in sorted((p for p in (study / "records").rglob("*") if p.is_dir() and encoded in p.name),
                    key=lambda p: -len(p.parts)):
        d.rename(d.with_name(d.name.replace(encoded, "")))
    return changed


def main(argv: list[str]) -> int:
    study, prefix = Path(argv[0]), argv[1]
    from mixlab.study.report import main as report

    committed = (study / "report.md").read_text(encoding="utf-8")
    print(f"{study}: {rewrite(study, prefix)} files rewritten")
    with tempfile.TemporaryDirectory() as tmp:
        assert report([str(study / "records"), "--out", tmp]) == 0
        if (Path(tmp) / "report.md").read_text(encoding="utf-8") != committed.replace(prefix, ""):
            raise SystemExit(f"{study}: the report from the rewritten records differs beyond the paths")
        for name in ("report.md", "report.html"):  # the figures carry no path: they stay as committed
            (study / name).write_bytes((Path(tmp) / name).read_bytes())
    print(f"{study}: report.md regenerated; it differs from the committed one only by the prefix {prefix!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
