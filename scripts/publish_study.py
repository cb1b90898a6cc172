"""Copy a study's records into the repository, and its report from the copy.

    python scripts/publish_study.py runs/fashion_time/n1000 docs/results/fashion_time/n1000   # from the repository root

A study folder (``python -m mixlab.study DIR``) holds more than its records: checkpoints, pictures of each run's
blends, locks, Hydra's ``hydra.yaml`` (which names the machine's folders) and the Optuna storage. The copy keeps
what the report and a reader need — ``plan.yaml``, ``tuning.json``, ``tuned.yaml``, ``go.json`` and, for every
run folder under ``compare/`` and ``tuning/``, ``summary.json``, ``metrics.jsonl``, ``.hydra/config.yaml`` and
``.hydra/overrides.yaml`` (and a compared run's ``mixed_examples.png``) — in the same layout, so that ``python -m mixlab.report DST/compare --out DST/report``
regenerates the report from the copy (done here once ``compare/`` exists). Run it again as the study goes on:
it replaces the copy. It refuses a copy in which a kept file names an absolute folder.
"""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

KEEP_TOP = ("plan.yaml", "tuning.json", "tuned.yaml", "go.json")
KEEP_RUN = ("summary.json", "metrics.jsonl", ".hydra/config.yaml", ".hydra/overrides.yaml")
ABSOLUTE = re.compile(r"""(^|[=\s'"(])/(?:work|tmp|root|home|Users)/""")


def publish(src: Path, dst: Path) -> list[Path]:
    if not (src / "plan.yaml").is_file():
        raise SystemExit(f"publish_study: {src}: expected a study folder (plan.yaml, as python -m mixlab.study writes)")
    for sub in ("compare", "tuning", "report"):
        shutil.rmtree(dst / sub, ignore_errors=True)
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in KEEP_TOP:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(dst / name)
    for summary in sorted(src.glob("compare/*/summary.json")) + sorted(src.glob("tuning/*/trial_*/seed=*/summary.json")):
        run = summary.parent
        # a compared run's picture of its blends: the report shows one per configuration
        for name in KEEP_RUN + (("mixed_examples.png",) if run.parent.name == "compare" else ()):
            if (run / name).is_file():
                target = dst / run.relative_to(src) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(run / name, target)
                copied.append(target)
    named = [str(p) for p in copied if p.suffix != ".png" and ABSOLUTE.search(p.read_text(encoding="utf-8"))]
    if named:
        raise SystemExit(f"publish_study: {len(named)} copied file(s) name an absolute folder, e.g. {named[0]}; "
                         "expected the study run from the repository root with relative folders")
    return copied


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    copied = publish(src, dst)
    print(f"publish_study: {len(copied)} file(s) -> {dst}", file=sys.stderr)
    if (dst / "compare").is_dir():
        from mixlab.study.report import main as report_main

        return report_main([str(dst / "compare"), "--out", str(dst / "report")])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
