"""One-off: give run records made before runs fingerprinted their data the fingerprints they would have.

    python scripts/fingerprint_records.py docs/results/*

For every run folder (one holding summary.json) under the folders given whose summary has no
``dataset.fingerprint``: rebuild the run's data as the run did (``dataset_from_config`` of the config the
summary records, with the run's seed, on the CPU; ``data.download=false``, so data that is not here is
not fetched), check that the rebuilt data set agrees with everything ``summary["dataset"]`` recorded
(name, split sizes, classes, task), and only then add three keys to ``summary["dataset"]``: the split
fingerprints, the Debian package the files come from *as of now* (where there is one), and
``"fingerprinted_later": "<date> by scripts/fingerprint_records.py"``, so that no reader takes them for
a record made at run time. Nothing else in the file changes: it is rewritten as mixlab writes summaries
(``atomic_write_json``), after checking that the old file was in that format, so the new text is the
old one plus those keys. A run whose data cannot be rebuilt here, or no longer matches its record, is
left as it is, with one line saying which folder and why.
"""
from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

ADDED = ("fingerprint", "package", "fingerprinted_later")


def _text(summary: dict) -> str:
    """``summary`` as ``atomic_write_json`` writes it (indent 2, a trailing newline)."""
    return json.dumps(summary, indent=2, allow_nan=False) + "\n"


def rebuilt(config: dict, cache: dict[str, dict]) -> dict:
    """The dataset summary of the data a run of ``config`` trained on, rebuilt here (memoised per data
    config and effective seed: a study's runs mostly share one data set)."""
    from mixlab.data import dataset_from_config

    data = {**config["data"], "download": False}
    seed = config["seed"]
    key = json.dumps([data, seed if data.get("subset_per_seed", False) else None], sort_keys=True)
    if key not in cache:
        cache[key] = dataset_from_config(data, seed=seed, device="cpu").summary()
    return cache[key]


def differences(recorded: dict, now: dict) -> list[str]:
    """What the run recorded about its data that the rebuilt data set does not repeat."""
    return [f"{k}={v!r} recorded, {now[k]!r} rebuilt" if k in now else f"{k}={v!r} recorded, not rebuilt"
            for k, v in recorded.items() if k not in ADDED and now.get(k, object()) != v]


def fingerprint_run(folder: Path, stamp: str, cache: dict[str, dict]) -> str | None:
    """Add the fingerprints to ``folder``'s summary.json; None when done, else why it was left as it is."""
    path = folder / "summary.json"
    text = path.read_text(encoding="utf-8")
    summary = json.loads(text)
    recorded = summary.get("dataset")
    config = summary.get("config")
    if not isinstance(recorded, dict) or not isinstance(config, dict) or "data" not in config:
        return "its summary records no dataset (or no data config) to check a rebuilt data set against"
    if _text(summary) != text:
        return "summary.json is not in the format mixlab writes; rewriting it would change more than the added keys"
    root = config["data"].get("root")
    if root is not None and not Path(root).expanduser().exists():
        # a loader looks elsewhere too (Fashion-MNIST: Debian's copy): the data found would not be the run's files
        return f"its data.root={root} is not here"
    try:
        now = rebuilt(config, cache)
    except Exception as e:  # noqa: BLE001 - any failure to rebuild is that run's line, not the end of the others
        return f"its data cannot be rebuilt here ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
    diff = differences(recorded, now)
    if diff:
        return f"the rebuilt data no longer match the record ({'; '.join(diff)})"
    recorded["fingerprint"] = now["fingerprint"]
    if now.get("package") is not None:
        recorded["package"] = now["package"]
    recorded["fingerprinted_later"] = stamp
    from mixlab.run.records import atomic_write_json

    atomic_write_json(path, summary)
    return None


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    stamp = f"{datetime.datetime.now(datetime.timezone.utc).date().isoformat()} by scripts/fingerprint_records.py"
    cache: dict[str, dict] = {}
    for top in map(Path, argv):
        if not top.is_dir():
            print(f"{top}: not a folder, skipped")
            continue
        counts: dict[str, int] = {"fingerprinted": 0, "already fingerprinted": 0, "left as they were": 0}
        for summary in sorted(top.rglob("summary.json")):
            folder = summary.parent
            record: Any = json.loads(summary.read_text(encoding="utf-8")).get("dataset")
            if isinstance(record, dict) and record.get("fingerprint") is not None:
                counts["already fingerprinted"] += 1
                continue
            why = fingerprint_run(folder, stamp, cache)
            if why is None:
                counts["fingerprinted"] += 1
            else:
                counts["left as they were"] += 1
                print(f"{folder}: left as it is: {why}")
        print(f"{top}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
