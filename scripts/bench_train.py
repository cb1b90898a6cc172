#!/usr/bin/env python
"""Benchmark the training loop: per-step overhead of each λ policy and pairing, end-to-end
throughput against a plain PyTorch loop, and the wall time of a sweep. Not a test.

  step   Each λ policy (random pairing), each pairing (beta λ) and each image mixer (beta λ: its
         extra passes, PuzzleMix's input gradient, included), plus the feature-space
         variants and manifold mixup, against ``lambda=none`` on the same model and batch.
         Every case is a real ``Parts`` from ``mixlab.run.train.build`` run through
         ``train_epoch`` on synthetic data; rounds are interleaved (round r runs every case
         once) and the overhead is the median of the per-round ratios case / none.
  e2e    Images per second over the training split: mixlab's loop against the way most
         research code trains: a torchvision ``FashionMNIST`` data set with per-image
         transforms, a ``DataLoader`` with worker processes, ``v2.MixUp`` on each batch, the
         same model, batch, optimiser and precision. Median over interleaved rounds.
  sweep  Wall time of ``python -m mixlab experiment=<sweep>`` with Hydra's basic (sequential)
         launcher against the joblib launcher running ``--jobs`` at once.

``python scripts/bench_train.py --help``; results go to ``docs/bench_train.json`` (merged by
section, so sections can be run separately) and a table is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench_mixing import device_name  # noqa: E402  (scripts/ is on sys.path when run as a script)
from mixlab import LAMBDAS, MIXERS, PAIRINGS  # noqa: E402
from mixlab.run import train as T  # noqa: E402
from mixlab.run.config import ConfigError  # noqa: E402
from mixlab.data import Dataset, find_fashion_mnist  # noqa: E402

STEP_BASELINE = "lambda=none"
FEATURE_CASES = ("lambda=distance lam.space=feature", "lambda=distance lam.space=feature trainer.features=cache",
                 "pairing=nearest pairing.space=feature", "pairing=nearest pairing.space=feature trainer.features=cache",
                 "lambda=distance mixer=manifold")


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def synthetic(n: int, shape: tuple[int, ...], classes: int, device: torch.device) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g).to(device)
    y = torch.randint(0, classes, (n,), generator=g).to(device)
    return Dataset(name="synthetic", task="classification", x_train=x, y_train=y, x_test=x[:classes],
                   y_test=y[:classes], num_classes=classes, mean=(0.0,) * shape[0], std=(1.0,) * shape[0])


def synthetic_text(n: int, length: int, vocab: int, classes: int, device: torch.device) -> Dataset:
    """Token ids (n, length) with the last quarter of each row padding (id 0), as text batches are."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, vocab, (n, length), generator=g)
    x[:, length - length // 4:] = 0
    y = torch.randint(0, classes, (n,), generator=g)
    x, y = x.to(device), y.to(device)
    return Dataset(name="synthetic_text", task="classification", x_train=x, y_train=y, x_test=x[:classes],
                   y_test=y[:classes], num_classes=classes, mean=(), std=(), vocab_size=vocab)


def build_parts(overrides: list[str], ds: Dataset | None = None) -> T.Parts:
    """``mixlab.run.train.build`` on ``overrides``; with ``ds`` the data set is swapped for it."""
    cfg = compose(overrides)
    T.validate(cfg)
    if ds is None:
        return T.build(cfg)
    original = T.dataset_from_config
    T.dataset_from_config = lambda *a, **k: ds
    try:
        return T.build(cfg)
    finally:
        T.dataset_from_config = original


def run_epoch(p: T.Parts) -> float:
    """Seconds for one pass of ``train_epoch`` (its last line reads the device's sums: synchronised).
    Timed as epoch 2 of 2: the steady state (``trainer.features=cache`` pays its extra pass in epoch 1)."""
    if p.device.type == "cuda":
        torch.cuda.synchronize(p.device)
    t0 = time.perf_counter()
    T.train_epoch(p, 2, 2, log_every=10**9, bar=None)
    if p.device.type == "cuda":
        torch.cuda.synchronize(p.device)
    return time.perf_counter() - t0


def quantiles(xs: list[float]) -> dict:
    q1, med, q3 = statistics.quantiles(xs, n=4) if len(xs) > 1 else (xs[0],) * 3
    return {"median": med, "q1": q1, "q3": q3, "n": len(xs)}


# --------------------------------------------------------------------------- step overhead


def step_cases(compile: bool = False) -> list[str]:
    cases = [STEP_BASELINE] + [f"lambda={n}" for n in LAMBDAS.names() if n != "none"]
    cases += [f"pairing={n}" for n in PAIRINGS.names() if n != "random"]
    cases += [f"mixer={n}" for n in MIXERS.names() if n not in ("input", "manifold")]  # beta λ, each image mixer
    # torch.compile is measured, not assumed: the same step compiled, with and without mixing
    extra = ["lambda=none trainer.compile=true", "lambda=beta trainer.compile=true"] if compile else []
    return cases + list(FEATURE_CASES) + extra


def bench_step(args, device: torch.device) -> dict:
    n = args.batch * args.steps
    ds = synthetic_text(n, args.shape[0], args.vocab, 10, device) if args.vocab else \
        synthetic(n, tuple(args.shape), 10, device)
    base = [f"model={args.model}", f"data.batch_size={args.batch}", f"device={device}", "trainer.progress=false",
            "optim=sgd", *args.override]
    parts = {}
    for case in [c for c in step_cases(args.compile) if c == STEP_BASELINE or re.search(args.only, c)]:
        extra = case.split()
        if case.startswith("lambda=loss"):
            extra.append("lam.per_sample=true")  # the policy's real work: a loss per sample by index
        try:
            parts[case] = build_parts(base + extra, ds)
        except ConfigError as e:
            if not isinstance(e.__context__, ImportError):  # only an optional package this machine lacks
                raise
            print(f"step: {case} left out: {e}", file=sys.stderr)
            continue
        parts[case].mix.setup(num_samples=ds.n_train)
        run_epoch(parts[case])  # warm-up: cuDNN autotune, allocator, lazy tables
    seconds: dict[str, list[float]] = {c: [] for c in parts}
    for r in range(args.repeats):
        for case, p in parts.items():
            seconds[case].append(run_epoch(p) / args.steps)
        print(f"step: round {r + 1}/{args.repeats}", file=sys.stderr)
    out = {}
    for case, ts in seconds.items():
        rel = [t / b - 1.0 for t, b in zip(ts, seconds[STEP_BASELINE])]
        out[case] = {"ms_per_step": quantiles([t * 1e3 for t in ts]), "overhead": quantiles(rel),
                     "feature_space": case in FEATURE_CASES}
    return {"model": args.model, "batch": args.batch, "shape": args.shape, "vocab": args.vocab or None,
            "samples_per_second": {c: args.batch / (r["ms_per_step"]["median"] / 1e3) for c, r in out.items()},
            "steps_per_round": args.steps,
            "repeats": args.repeats, "amp": parts[STEP_BASELINE].amp,
            "channels_last": parts[STEP_BASELINE].channels_last, "cases": out}


def step_table(res: dict) -> str:
    what = f"token ids × {res['shape']} (vocabulary {res['vocab']})" if res.get("vocab") else f"× {res['shape']}"
    lines = [f"model {res['model']}, batch {res['batch']} {what}, {res['steps_per_round']} steps × "
             f"{res['repeats']} rounds, amp={res['amp']}",
             "| case | ms / step (median) | samples / s | overhead vs lambda=none (median [IQR]) |", "|---|---:|---:|---:|"]
    for case, r in res["cases"].items():
        o = r["overhead"]
        lines.append(f"| {case} | {r['ms_per_step']['median']:.1f} | {res['batch'] / r['ms_per_step']['median'] * 1e3:.0f} | "
                     f"{o['median'] * 100:+.1f}% [{o['q1'] * 100:+.1f}, {o['q3'] * 100:+.1f}] |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- end to end


def reference_loop(args, device: torch.device, root: Path):
    """The usual research loop: per-image transforms in DataLoader workers, batch MixUp."""
    from torchvision import datasets
    from torchvision.transforms import v2

    mean, std = 0.2860, 0.3530  # Fashion-MNIST train mean/std of pixels in [0, 1]
    aug = [v2.RandomCrop(28, padding=args.crop)] if args.crop else []
    aug += [v2.RandomHorizontalFlip()] if args.hflip else []
    tf = v2.Compose([v2.ToImage(), *aug, v2.ToDtype(torch.float32, scale=True), v2.Normalize([mean], [std])])
    data = datasets.FashionMNIST(str(root), train=True, transform=tf, download=False)
    if args.train_subset:
        data = torch.utils.data.Subset(data, range(args.train_subset))
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         pin_memory=device.type == "cuda", drop_last=False,
                                         persistent_workers=args.workers > 0)
    p = build_parts([f"model={args.model}", f"data.batch_size={args.batch}", f"device={device}",
                     "trainer.progress=false", "optim=sgd", "data.train_subset=null", "data.download=false"],
                    _tiny_fashion_like(device))
    model, opt, amp = p.model, p.optimizer, p.amp
    mixup = v2.MixUp(alpha=1.0, num_classes=10)

    def epoch() -> int:
        model.train()
        n = 0
        total = torch.zeros((), device=device)
        for x, y in loader:
            x, y = mixup(x, y)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if p.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x)
            loss = -(y * F.log_softmax(out.float(), dim=1)).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            n += x.shape[0]
        total.item()  # one read per epoch, like mixlab: the reference is not slowed by logging
        return n

    return epoch


def _tiny_fashion_like(device: torch.device) -> Dataset:
    return synthetic(64, (1, 28, 28), 10, device)


def torchvision_layout(files: dict[str, Path]) -> Path:
    """A temporary ``<root>/FashionMNIST/raw/`` holding the idx files unzipped: torchvision's layout."""
    import gzip

    root = Path(tempfile.mkdtemp(prefix="bench_fmnist_"))
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in files.values():
        (raw / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
    return root


def bench_e2e(args, device: torch.device) -> dict:
    files = find_fashion_mnist(args.data_root)
    if files is None:
        raise SystemExit("e2e needs Fashion-MNIST's idx.gz files (apt-get install dataset-fashion-mnist or --data-root)")
    root = torchvision_layout(files)
    mix_overrides = [f"model={args.model}", f"data.batch_size={args.batch}", f"device={device}",
                     "trainer.progress=false", "optim=sgd", f"data.crop_padding={args.crop}",
                     f"data.hflip={str(args.hflip).lower()}", "lambda=beta", "lam.alpha=1.0", "pairing=roll",
                     f"data.train_subset={args.train_subset or 'null'}"]
    if args.data_root:
        mix_overrides.append(f"data.root={args.data_root}")
    p = build_parts(mix_overrides)
    reference = reference_loop(args, device, root)
    n = p.ds.n_train
    ips: dict[str, list[float]] = {"mixlab": [], "reference": []}
    run_epoch(p)  # warm-up epochs for both (and the workers' start-up)
    reference()
    for r in range(args.repeats):
        ips["mixlab"].append(n / run_epoch(p))
        t0 = time.perf_counter()
        m = reference()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ips["reference"].append(m / (time.perf_counter() - t0))
        print(f"e2e: round {r + 1}/{args.repeats}", file=sys.stderr)
    shutil.rmtree(root, ignore_errors=True)
    ratio = [a / b for a, b in zip(ips["mixlab"], ips["reference"])]
    return {"model": args.model, "batch": args.batch, "train_images": n, "crop_padding": args.crop,
            "hflip": args.hflip, "workers": args.workers, "repeats": args.repeats, "amp": p.amp,
            "images_per_second": {k: quantiles(v) for k, v in ips.items()}, "speedup": quantiles(ratio)}


def e2e_table(res: dict) -> str:
    ips = res["images_per_second"]
    return "\n".join([
        f"model {res['model']}, batch {res['batch']}, {res['train_images']} images/epoch, crop {res['crop_padding']}, "
        f"hflip {res['hflip']}, {res['workers']} DataLoader workers, {res['repeats']} rounds",
        "| loop | images / s (median [IQR]) |", "|---|---:|",
        *(f"| {k} | {v['median']:.0f} [{v['q1']:.0f}, {v['q3']:.0f}] |" for k, v in ips.items()),
        f"| mixlab / reference | {res['speedup']['median']:.2f}× [{res['speedup']['q1']:.2f}, "
        f"{res['speedup']['q3']:.2f}] |"])


# --------------------------------------------------------------------------- sweep wall time


def bench_sweep(args, device: torch.device) -> dict:
    out: dict = {"experiment": args.sweep, "overrides": args.sweep_override, "jobs": args.jobs}
    for label, launcher in (("sequential", []), (f"joblib n_jobs={args.jobs}",
                                                   ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"])):
        sweep_dir = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
        cmd = [sys.executable, "-m", "mixlab", f"experiment={args.sweep}", f"hydra.sweep.dir={sweep_dir}",
               "trainer.progress=false", f"device={device.type}", *launcher, *args.sweep_override]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        summaries = [json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")]
        statuses = [s.get("status") for s in summaries]
        out[label] = {"command": " ".join(["python", "-m", "mixlab", *cmd[3:]]), "wall_s": wall,
                      "runs": len(summaries), "completed": statuses.count("completed"),
                      "returncode": done.returncode}
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
        shutil.rmtree(sweep_dir, ignore_errors=True)
        print(f"sweep: {label} {wall:.0f}s, {statuses.count('completed')}/{len(summaries)} completed", file=sys.stderr)
    return out


def sweep_table(res: dict) -> str:
    rows = [(k, v) for k, v in res.items() if isinstance(v, dict)]
    return "\n".join([f"experiment={res['experiment']} {' '.join(res['overrides'])}",
                      "| launch | wall | runs completed |", "|---|---:|---:|",
                      *(f"| {k} | {v['wall_s'] / 60:.1f} min | {v['completed']}/{v['runs']} |" for k, v in rows)])


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sections", nargs="*", default=["step", "e2e", "sweep"], choices=["step", "e2e", "sweep"])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--model", default="preact_resnet18")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    p.add_argument("--override", nargs="*", default=[], help="extra overrides for every step case")
    g = p.add_argument_group("step")
    g.add_argument("--shape", type=int, nargs="+", default=[3, 32, 32], help="synthetic input shape (text: [length])")
    g.add_argument("--vocab", type=int, default=0, help="text: synthetic token ids of this vocabulary (model=textcnn "
                                                       "or transformer; 0: images)")
    g.add_argument("--steps", type=int, default=20, help="training steps per case per round")
    g.add_argument("--compile", action="store_true", help="add torch.compile'd cases (slow to build on a CPU)")
    g.add_argument("--only", default="", help="a regex: keep the cases it matches (and the baseline)")
    g = p.add_argument_group("e2e")
    g.add_argument("--train-subset", type=int, default=None, help="Fashion-MNIST training images (default all)")
    g.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="reference DataLoader workers")
    g.add_argument("--crop", type=int, default=2, help="crop padding in both loops")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--data-root", default=None)
    g = p.add_argument_group("sweep")
    g.add_argument("--sweep", default="fixed_vs_dynamic")
    g.add_argument("--jobs", type=int, default=4)
    g.add_argument("--sweep-override", nargs="*", default=[], help="e.g. trainer.epochs=1 'seed=0,1'")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_train.json")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = T.resolve_device(args.device)
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    import torchvision

    for section in args.sections:
        started, load = time.time(), os.getloadavg()[0]
        res = {"step": bench_step, "e2e": bench_e2e, "sweep": bench_sweep}[section](args, device)
        res.update(command=" ".join(["python", *sys.argv]), device=str(device), device_name=device_name(device),
                   torch=torch.__version__, torchvision=torchvision.__version__, python=platform.python_version(),
                   wall_s=round(time.time() - started, 1),
                   loadavg_1min_before_after=[round(load, 2), round(os.getloadavg()[0], 2)])
        key = f"{section}_{device.type}" + (f"_{args.model}" if section != "sweep" else "") + (
            "_compile" if section == "step" and args.compile else "")
        report[key] = res
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\n## {section} — {res['device_name']}, torch {torch.__version__}\n")
        print({"step": step_table, "e2e": e2e_table, "sweep": sweep_table}[section](res))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
