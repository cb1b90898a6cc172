#!/usr/bin/env python
"""Benchmark per-sample mixing against the memory-copy floor, timm and torchvision.

Everything is measured side by side in one process, in interleaved rounds (round r times
every case once) so that drift in machine load hits all cases alike; each case's figure is
the median and IQR of all its timed blocks (``torch.utils.benchmark.Timer.blocked_autorange``,
which synchronises CUDA). Not a test: ``python scripts/bench_mixing.py --help``.

Cases, for a (B, C, H, W) float batch with 10 classes:
  copy floor        x.clone(): reading and writing the batch's bytes once
  mix_inputs        mix_inputs(x, partner, lam) with precomputed partner and λ
  Mix(λ=…)          the full call (pairing + λ + mixer + targets), each λ policy, random pairing
  Mix(pairing=…)    the full call, each pairing, beta λ
  Mix(mixer=…)      the full call, each image mixer (cutmix, fmix, ...), beta λ, random pairing
  timm elem/batch   timm.data.Mixup(mixup_alpha=1, cutmix_alpha=0, mode=…, label_smoothing=0)
  torchvision       torchvision.transforms.v2.MixUp(alpha=1, num_classes=10)
  timm CutMix       timm.data.Mixup(mixup_alpha=0, cutmix_alpha=1, mode="elem"): CutMix's peer
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixlab import LAMBDAS, MIXERS, PAIRINGS, Mix, mix_inputs  # noqa: E402
from mixlab.models import build_model  # noqa: E402

NUM_CLASSES = 10
# Options that make a policy do its real work in a benchmark (defaults otherwise).
LAM_OPTIONS = {"loss": {"per_sample": True}}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def build_cases(x: torch.Tensor, y: torch.Tensor, args) -> dict[str, callable]:
    b, dev = x.shape[0], x.device
    g = torch.Generator(device=dev).manual_seed(0)
    partner = torch.randperm(b, generator=g, device=dev)
    lam = torch.rand(b, generator=g, device=dev)
    index = torch.arange(b, device=dev)
    cases: dict[str, callable] = {
        "copy floor: x.clone()": lambda: x.clone(),
        "mix_inputs(x, partner, lam)": lambda: mix_inputs(x, partner, lam),
    }

    def full(lam_name: str, pairing: str):
        mix = Mix(lam=lam_name, pairing=pairing, num_classes=NUM_CLASSES, lam_kwargs=LAM_OPTIONS.get(lam_name),
                  generator=torch.Generator(device=dev).manual_seed(1))
        mix.setup(num_samples=b)
        mix.observe(torch.rand(b, device=dev), index)
        return lambda: mix(x, y, index=index, progress=0.5)

    for name in LAMBDAS.names():
        cases[f"Mix(lam={name}, pairing=random)"] = full(name, "random")
    for name in PAIRINGS.names():
        if name != "random":
            cases[f"Mix(lam=beta, pairing={name})"] = full("beta", name)
    if x.dim() == 4:  # every image mixer, beta λ, random pairing (what it needs besides the batch: given, not timed)
        for name in MIXERS.names():
            if name in ("input", "manifold"):
                continue
            try:
                mix = Mix(lam="beta", mixer=name, num_classes=NUM_CLASSES,
                          generator=torch.Generator(device=dev).manual_seed(1))
            except ImportError as e:  # an optional package (PyMaxflow for puzzlemix) this machine lacks
                print(f"bench_mixing: mixer={name} left out: {e}", file=sys.stderr)
                continue
            # a learned mixer serves a model: the small cnn, whose momentum copy's forward is part of the call
            mix.attach(build_model("cnn", in_shape=tuple(x.shape[1:]), num_classes=NUM_CLASSES).to(dev))
            side = {need: torch.randn_like(x) for need in mix.needs}
            if "targets" in mix.needs:
                side["targets"] = torch.nn.functional.one_hot(y, NUM_CLASSES).to(x.dtype)
            cases[f"Mix(lam=beta, mixer={name})"] = (lambda mix=mix, side=side: mix(x, y, progress=0.5, **side))

    if not args.no_oracles:
        try:
            from timm.data import Mixup

            for mode in ("elem", "batch"):
                m = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, mode=mode, label_smoothing=0.0, num_classes=NUM_CLASSES)
                # timm mixes in place: keep x's values bounded by mixing a scratch batch.
                scratch = x.clone()
                cases[f"timm Mixup(mode={mode})"] = (lambda m=m, s=scratch: m(s, y))
            if x.dim() == 4:
                m = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode="elem", label_smoothing=0.0, num_classes=NUM_CLASSES)
                scratch = x.clone()
                cases["timm CutMix(mode=elem)"] = (lambda m=m, s=scratch: m(s, y))
        except ImportError:
            print("timm not installed: skipping timm", file=sys.stderr)
        try:
            from torchvision.transforms import v2

            tv = v2.MixUp(alpha=1.0, num_classes=NUM_CLASSES)
            cases["torchvision v2.MixUp"] = lambda: tv(x, y)
        except ImportError:
            print("torchvision not installed: skipping torchvision", file=sys.stderr)
    return cases


def measure(cases: dict[str, callable], rounds: int, min_run_time: float) -> dict[str, dict]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm-up: first-call allocations, lazy imports, caches
        for _ in range(3):
            fn()
    for r in range(rounds):
        for name, fn in cases.items():
            m = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
                min_run_time=min_run_time)
            times[name].extend(m.times)  # per-call seconds of each timed block
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    out = {}
    for name, ts in times.items():
        q1, med, q3 = statistics.quantiles(ts, n=4) if len(ts) > 1 else (ts[0], ts[0], ts[0])
        out[name] = {"median_us": statistics.median(ts) * 1e6, "iqr_us": (q3 - q1) * 1e6, "blocks": len(ts)}
    return out


def table(results: dict[str, dict]) -> str:
    floor = results["copy floor: x.clone()"]["median_us"]
    width = max(len(n) for n in results)
    lines = [f"| {'case':<{width}} | median µs | IQR µs | × copy floor |", f"|{'-' * (width + 2)}|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name:<{width}} | {r['median_us']:.1f} | {r['iqr_us']:.1f} | {r['median_us'] / floor:.2f} |")
    return "\n".join(lines)


def ratios(results: dict[str, dict]) -> dict[str, float]:
    med = {k: v["median_us"] for k, v in results.items()}
    mi, full = med["mix_inputs(x, partner, lam)"], med["Mix(lam=beta, pairing=random)"]
    out = {"mix_inputs / copy floor": mi / med["copy floor: x.clone()"],
           "Mix(beta, random) / copy floor": full / med["copy floor: x.clone()"]}
    for other in ("timm Mixup(mode=elem)", "timm Mixup(mode=batch)", "torchvision v2.MixUp"):
        if other in med:
            out[f"{other} / mix_inputs"] = med[other] / mi
            out[f"{other} / Mix(beta, random)"] = med[other] / full
    for name in med:  # each image mixer against input mixing: the same call, another mixer
        if name.startswith("Mix(lam=beta, mixer="):
            out[f"{name} / Mix(beta, random)"] = med[name] / full
    if "timm CutMix(mode=elem)" in med and "Mix(lam=beta, mixer=cutmix)" in med:
        out["timm CutMix(mode=elem) / Mix(lam=beta, mixer=cutmix)"] = med["timm CutMix(mode=elem)"] / med["Mix(lam=beta, mixer=cutmix)"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--shape", type=int, nargs="+", default=[3, 32, 32], help="per-sample shape (default 3 32 32)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds over all cases")
    p.add_argument("--min-run-time", type=float, default=0.2, help="seconds per case per round")
    p.add_argument("--no-oracles", action="store_true", help="skip timm and torchvision")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "bench_mixing.json")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, *args.shape, generator=g).to(device=device, dtype=getattr(torch, args.dtype))
    y = torch.randint(0, NUM_CLASSES, (args.batch,), generator=g).to(device)

    load_before = os.getloadavg()
    started = time.time()
    results = measure(build_cases(x, y, args), args.repeats, args.min_run_time)
    load_after = os.getloadavg()

    import torchvision

    try:
        import timm

        timm_version = timm.__version__
    except ImportError:
        timm_version = None
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "batch_shape": [args.batch, *args.shape], "dtype": args.dtype, "device": str(device),
        "device_name": device_name(device), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm_version, "python": platform.python_version(), "repeats": args.repeats,
        "min_run_time_s": args.min_run_time, "wall_s": round(time.time() - started, 1),
        "loadavg_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "results": results, "ratios": ratios(results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{report['device_name']} | torch {torch.__version__} | batch {report['batch_shape']} {args.dtype}\n")
    print(table(results))
    print()
    for k, v in report["ratios"].items():
        print(f"{k:45s} {v:8.2f}")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
