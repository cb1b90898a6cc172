"""The training loop: a config in, the final validation metric out, run records on disk.

Records in ``run_dir``: ``metrics.jsonl`` (a line per epoch), ``summary.json`` (status, final
metrics, dataset, config, git, versions) and ``last.pt`` (everything needed to resume, written
atomically each epoch). Calling ``train`` again with the same config and ``run_dir`` resumes
from ``last.pt`` and ends with the same metrics as an uninterrupted run (on CPU).
"""
from __future__ import annotations

import inspect
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torchvision.utils import make_grid, save_image

from ..data import Batches, Dataset, dataset_from_config
from ..data.base import DEFAULT_ROOT
from ..data.corruptions import corrupted_sets, resolve_form
from ..data.ood import ood_inputs
from ..engine.lam import LAMBDAS, reads_time, timed_policies, unmixed_self_pairs
from ..engine.mixing import MIXERS, Mix
from ..engine.pairing import PAIRINGS, _lowest_top_bidder, batch_distance_scale, pair_distance
from ..models import MODELS, MixModel, build_model
from ..tasks import TASKS, Classification, Task
from ..tasks.metrics import classification_metrics, lam_stats, median_last, ood_metrics, temperature_scaled
from .config import (ConfigError, apply_strength, apply_tuned, component_errors, config_difference, fingerprint,
                     import_plugins, options, validate)
from .distributed import Dist, setup as setup_distributed, stream_seed
from .loggers import LOGGERS, NoLogger
from .optim import build_optimizer
from .records import (MetricsLog, RunLock, UnreadableCheckpoint, atomic_write, atomic_write_json,
                      load_checkpoint, loaded_git, read_json, remove_stale_temps, rng_state, save_checkpoint, set_rng_state,
                      versions)


class Diverged(RuntimeError):
    """The training loss became NaN or infinite (at ``epoch``, ``step``: recorded in summary.json)."""

    def __init__(self, loss: float, epoch: int, step: int) -> None:
        super().__init__(f"training loss is {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step = epoch, step


class Interrupted(RuntimeError):
    """SIGTERM or Ctrl-C (how SLURM pre-empts): stopped between two steps, last checkpoint intact.
    ``signal`` is the signal's name, or None when another process was signalled."""

    def __init__(self, message: str, signal_name: str | None = None) -> None:
        super().__init__(message)
        self.signal = signal_name


_HELD: dict | None = None  # the command line's flag (hold_signals), kept for the whole process


def _flag_signals(flag: dict) -> dict:
    """Install a SIGTERM/SIGINT handler that sets ``flag["signal"]`` (a second signal: KeyboardInterrupt,
    at once); return the handlers it replaced."""
    def handler(signum: int, frame: object) -> None:
        if flag["signal"] is not None:
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name

    return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}


def hold_signals() -> dict:
    """Turn SIGTERM/SIGINT into one flag for the whole process, from now on (the command line calls it
    before Hydra starts, signals work in the main thread only): a stop requested at any moment — while
    Hydra sets up a job, between a sweep's jobs, during evaluation — is kept until a run, or the command
    line after a run, reads it. Returns the flag (``{"signal": None | "SIGINT" | "SIGTERM"}``)."""
    global _HELD
    if _HELD is None:
        _HELD = {"signal": None}
        if threading.current_thread() is threading.main_thread():
            _flag_signals(_HELD)
    return _HELD


@contextmanager
def _signals_to_flag() -> Iterator[dict]:
    """Turn SIGTERM/SIGINT into a flag the loop reads between steps and evaluation batches, so a checkpoint
    or record being written is finished first: the process's flag where ``hold_signals`` made one, else a
    flag of this run's (library use: the previous handlers come back after it)."""
    if _HELD is not None or threading.current_thread() is not threading.main_thread():
        yield _HELD if _HELD is not None else {"signal": None}
        return
    flag: dict = {"signal": None}
    previous = _flag_signals(flag)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _check_stop(stop: dict, epoch: int, step: int, d: Dist = Dist()) -> None:
    """Raise ``Interrupted`` after SIGTERM/Ctrl-C. With several processes this is a collective (every
    process calls it), and all of them stop when any one was signalled."""
    signalled = stop["signal"] is not None
    if d.any(signalled) if d.world > 1 else signalled:
        _interrupted(stop["signal"], epoch, step)


def _interrupted(signal_name: str | None, epoch: int, step: int | None = None, *, evaluating: bool = False) -> None:
    where = f"during epoch {epoch} after step {step}" if step is not None else \
        f"while evaluating epoch {epoch} (not recorded)" if evaluating else f"after epoch {epoch}"
    raise Interrupted(f"{signal_name or 'a signal to another process'} {where}; "
                      f"the last finished epoch's checkpoint is kept", signal_name)


class _EvaluationStopped(Exception):
    """A stop request read between evaluation batches: the epoch's records are not written, and the
    loop's collective stop check (every process takes part) raises ``Interrupted``."""


def resolve_device(name: str, d: Dist = Dist()) -> torch.device:
    """The device ``device=`` names; under torchrun ``auto``/``cuda`` mean this process's cuda:LOCAL_RANK."""
    if d.world > 1 and name.startswith("cuda:"):
        raise ConfigError(f"device={name!r}: under torchrun each process uses cuda:LOCAL_RANK; expected auto | cuda | cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: CUDA is not available on this machine; expected auto | cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r}: this machine has {torch.cuda.device_count()} GPU(s); "
                          f"expected auto | cpu | cuda | cuda:0..{torch.cuda.device_count() - 1}")
    return torch.device("cuda", d.local_rank) if name == "cuda" and d.world > 1 else torch.device(name)


def _auto(flag: object, device: torch.device) -> bool:
    return device.type == "cuda" if flag == "auto" else bool(flag)


@dataclass
class Parts:
    """Everything a run is made of, built (and so validated) before the first step."""

    ds: Dataset
    model: MixModel
    forward: torch.nn.Module  # the model (DDP-wrapped with several processes), maybe torch.compile'd
    eval_forward: torch.nn.Module  # for evaluation: never DDP-wrapped (rank 0 evaluates alone)
    mix: Mix
    batches: Batches
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generators: dict[str, torch.Generator]
    device: torch.device
    amp: bool
    channels_last: bool
    manifold: bool  # mixing inside the model: mixer=manifold, or a model that embeds its inputs (text)
    needs_features: bool
    dist: Dist = field(default_factory=Dist)
    bank: FeatureBank | None = None  # trainer.features=cache
    task: Task = field(default_factory=Classification)  # what targets, the loss and the metrics are
    mix_at: int | None = None  # a fixed mix point (text with mixer=input: 0, the embeddings); None: drawn per step
    ood: Tensor | None = None  # eval.ood: the out-of-distribution inputs scored after the last epoch
    corrupted: dict | None = None  # eval.corruptions: (corruption, severity) -> uint8 test images in [0, 255]
    corruption_form: str | None = None  # the form they were made in (mnist_c, cifar10_c, imagenet_c, v1)
    stop: dict | None = None  # the run's stop flag, read between evaluation batches too


class FeatureBank:
    """Each training sample's penultimate embedding by dataset index (``trainer.features=cache``),
    so feature-space pairing and λ need no extra forward pass after the first epoch.

    Epoch 1 fills the bank from the extra clean forward (``_clean_features``). From epoch 2 a
    step reads ``bank[index]``, and after the step each blend's embedding (caught by a hook on
    the head from the step's own forward) refreshes the row of the sample that dominates that
    blend, weight >= ½: the sample itself where λ_i >= ½, else its partner (the heavier weight
    wins where several blends qualify, then the lower position). Rows that no blend refreshed in
    an epoch get a clean no-grad forward at its end (``top_up``), so at the start of every
    epoch every row is from the previous one: at most one epoch stale, for every policy and
    pairing. A refreshed row is the embedding of a blend the sample dominates, not of the clean
    sample: an approximation of the exact ``trainer.features=forward``, traded for its cost
    (``docs/benchmarks.md``). With ``trainer.pairing_scope=global`` only a sample's own blend
    counts (its partner may live on another process).
    """

    def __init__(self, model: MixModel, num_samples: int, device: torch.device, d: Dist) -> None:
        self.rows = torch.zeros(num_samples, model.embed_dim, device=device)
        self.epoch = torch.zeros(num_samples, dtype=torch.long, device=device)  # epoch of each row's last write
        self.d, self.caught = d, None
        model.classifier.register_forward_hook(self._catch)

    def _catch(self, module: torch.nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self.caught = inputs[0].detach()

    def read(self, index: Tensor) -> Tensor:
        return self.rows.index_select(0, index)

    def write(self, index: Tensor, features: Tensor, keep: Tensor, epoch: int) -> None:
        """``rows[index] = features`` where ``keep``, gathered over processes; no host sync."""
        index, features, keep = self.d.gather(index), self.d.gather(features.float()), self.d.gather(keep)
        self.rows.index_copy_(0, index, torch.where(keep[:, None], features, self.rows.index_select(0, index)))
        self.epoch.index_copy_(0, index, torch.where(keep, epoch, self.epoch.index_select(0, index)))

    def refresh(self, index: Tensor, lam: Tensor, partner: Tensor | None, epoch: int) -> None:
        """After a mixed step: each blend's caught embedding to the row of the sample dominating it."""
        b = index.shape[0]
        pos = torch.arange(b, device=index.device)
        if partner is None:  # own blends only
            target, weight = pos, lam.float()
        else:
            target, weight = torch.cat([pos, partner]), torch.cat([lam.float(), 1.0 - lam.float()])
        win, _ = _lowest_top_bidder(target, weight, weight >= 0.5)  # per position: the winning candidate
        got = win[:b] < target.shape[0]
        self.write(index, self.caught.index_select(0, torch.where(got, win[:b], 0) % b), got, epoch)

    @torch.no_grad()
    def top_up(self, p: Parts, epoch: int, batch_size: int) -> int:
        """A clean forward (eval mode) for the rows not written in ``epoch``; returns how many.

        One host read per epoch (the count). Every process computes the same rows (identical
        weights and bank), so no collective is needed."""
        stale = (self.epoch < epoch).nonzero().squeeze(1)
        for chunk in stale.split(batch_size):
            x = p.ds.x_train.index_select(0, chunk)
            if p.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(p.device.type, dtype=torch.bfloat16, enabled=p.amp):
                self.rows.index_copy_(0, chunk, _clean_features(p, x))
            self.epoch.index_fill_(0, chunk, epoch)
        return int(stale.numel())


def check(cfg: DictConfig) -> None:
    """Every check of ``cfg`` that needs no data and no model: its values (``validate``), its plugins,
    the λ policy's, pairing's and mixer's options (each built once and dropped: their constructors
    check ranges) and the model's option names and types. The command line runs it on every job of a
    sweep before launching any; ``build`` runs it first."""
    validate(cfg)
    import_plugins(cfg.get("plugins"))
    for group, registry, node in (("lam", LAMBDAS, cfg.lam), ("pairing", PAIRINGS, cfg.pairing),
                                  ("mixer", MIXERS, cfg.mixer)):
        with component_errors(group):
            registry.build(node.name, **options(node))  # validates the options; Mix builds its own
    with component_errors("model"):
        MODELS.check(cfg.model.name, **options(cfg.model))
    trainer = cfg.get("trainer") or {}
    if trainer.get("reverse_time") and not reads_time(cfg.lam.name):
        raise ConfigError(f"trainer.reverse_time=true: lambda={cfg.lam.name} does not depend on the training time "
                          f"(nothing to reverse); expected false, or a λ policy that does ({', '.join(timed_policies())})")
    evals = cfg.get("eval") or {}
    for key in ("corruptions", "ood"):
        if not evals.get("test", True) and evals.get(key):
            raise ConfigError(f"eval.{key}={evals[key]!r}: evaluates the test set, but eval.test=false; "
                              f"expected {'false' if key == 'corruptions' else 'null'}")


def build(cfg: DictConfig, d: Dist = Dist()) -> Parts:
    """The run's parts, once ``check`` has passed; ``d`` is this process's place among torchrun's (one
    process by default).

    Random streams (``trainer.streams=separate``): initial weights (and dropout) from ``seed``; batch order
    and augmentation from a generator of their own, seeded by ``seed``; pairing and λ (and a mixer's boxes)
    from another, so that under one seed every λ policy and pairing starts from the same weights and sees
    the same batches in every epoch, whatever it draws. ``trainer.streams=shared`` (how every run before
    it was made) lets pairing and λ draw from the batch-order stream, so policies that draw different
    amounts see different batches from epoch 2 on; it reproduces those runs exactly.

    Several processes: model init, data order, augmentation and the manifold mix point come from
    ``seed`` on every process; dropout and pairing/λ (``trainer.pairing_scope=local``) from a seed
    of each process's own (``Dist.seed``), so the processes draw differently and reproducibly."""
    check(cfg)
    device = resolve_device(cfg.device, d)
    scope = cfg.trainer.get("pairing_scope", "local")
    if scope == "global" and cfg.mixer.name == "manifold":
        raise ConfigError("trainer.pairing_scope='global': not supported with mixer=manifold "
                          "(hidden states are not gathered across processes); expected local")
    torch.manual_seed(cfg.seed)  # model init and dropout
    separate = cfg.trainer.get("streams", "shared") == "separate"
    generators = {
        "data": torch.Generator(device).manual_seed(cfg.seed),  # batch order and augmentation (streams=shared: and
        "layer": torch.Generator().manual_seed(cfg.seed + 1),  # pairing and λ) | manifold mix point: a host int
    }
    if d.world > 1 or separate:  # pairing and λ of this process: "data" stays the same whatever they draw
        generators["mix"] = torch.Generator(device).manual_seed(d.seed(cfg.seed))
    if d.world > 1 and separate and scope == "global":  # pairing and λ over the gathered batch: in step everywhere
        generators["mix_global"] = torch.Generator(device).manual_seed(stream_seed(cfg.seed, "mix_global"))
    with component_errors("data"):
        ds = dataset_from_config(cfg.data, seed=cfg.seed, device=device)
        batches = Batches(ds, batch_size=cfg.data.batch_size, generator=generators["data"],
                          crop_padding=cfg.data.get("crop_padding", 0), hflip=cfg.data.get("hflip", False),
                          rank=d.rank, world_size=d.world)
    detector = bool(getattr(MODELS.get(cfg.model.name), "detects", False))
    if detector != (ds.task == "detection"):
        raise ConfigError(f"model={cfg.model.name}: " + (f"a detector, but data={ds.name} is {ds.task}; expected a "
                                                         "detection data set (fashion_scenes, coco)" if detector else
                                                         f"not a detector, but data={ds.name} has boxes; expected "
                                                         "model=fcos"))
    if detector:
        try:
            import pycocotools  # noqa: F401
            import torchmetrics.detection  # noqa: F401
        except ImportError as e:
            raise ConfigError(f"model={cfg.model.name}: detection's mAP needs torchmetrics and pycocotools ({e}); "
                              "expected `pip install mixlab[detection]`") from None
        for key, bad, why in (("mixer.name", cfg.mixer.name not in ("input",), "expected input (blends whole images; "
                                                                              "the other mixers cut or blend parts of images, not boxes)"),
                              ("data.crop_padding", bool(cfg.data.get("crop_padding", 0)), "expected 0 (crops would "
                                                                                         "move boxes)"),
                              ("data.hflip", bool(cfg.data.get("hflip", False)), "expected false (flips would move boxes)"),
                              ("trainer.features", cfg.trainer.features == "cache", "expected forward (a detector has "
                                                                                   "no classifier to cache from)")):
            if bad:
                value = OmegaConf.select(cfg, key)
                raise ConfigError(f"{key}={value!r}: not supported for detection; {why}")
    if ds.is_text and "vocab_size" not in inspect.signature(MODELS.get(cfg.model.name)).parameters:
        raise ConfigError(f"model={cfg.model.name}: reads numbers, but data={ds.name} gives token ids; expected a text "
                          "model (textcnn)")
    with component_errors("model"):
        model = build_model(cfg.model.name, in_shape=ds.input_shape, num_classes=ds.num_classes, **options(cfg.model),
                            **({"vocab_size": ds.vocab_size} if ds.is_text else {})).to(device)
    if d.world > 1:
        torch.manual_seed(d.seed(cfg.seed))  # dropout: each process its own masks
    channels_last = _auto(cfg.trainer.channels_last, device) and len(ds.input_shape) == 3
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    task = TASKS.build(ds.task)
    classification = task.has_classes
    if getattr(PAIRINGS.get(cfg.pairing.name), "needs_classes", False) and not classification:
        raise ConfigError(f"pairing={cfg.pairing.name!r}: needs class labels, but data={ds.name!r} is regression")
    try:  # the options are checked; what is left is their combination (a λ policy that reads the pair, ...)
        mix = Mix(lam=cfg.lam.name, pairing=cfg.pairing.name, mixer=cfg.mixer.name,
                  num_classes=ds.num_classes if classification else None, lam_kwargs=options(cfg.lam),
                  pairing_kwargs=options(cfg.pairing), mixer_kwargs=options(cfg.mixer),
                  smoothing=cfg.smoothing if classification else 0.0,
                  generator=generators.get("mix", generators["data"]), gather=d.gather if d.world > 1 else None,
                  rank=d.rank, scope=scope if d.world > 1 else "local",
                  shared_generator=generators.get("mix_global", generators["data"]), boxes=task.mixes_boxes,
                  mix_until=cfg.trainer.mix_until, reverse_time=cfg.trainer.reverse_time)
    except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    # A pairing that draws partners from the training set gets it: the tensors the batches are cut from, so a
    # partner's row is what a batch holds for that index (crop/flip augmentation, if any, is not applied to it).
    mix.setup(num_samples=ds.n_train, train_set=(ds.x_train, ds.y_train) if mix.needs_train_set else None)
    with component_errors("mixer"):
        mix.attach(model)  # a learned mixer (a mask generator trained beside the classifier) meets its model
    with component_errors("optim"):
        optimizer, scheduler = build_optimizer(cfg.optim.name, model.parameters(), steps_per_epoch=len(batches),
                                               epochs=cfg.trainer.epochs, **options(cfg.optim))
    manifold = cfg.mixer.name == "manifold"
    inside = bool(getattr(model, "mixes_inside", False))  # text: inputs are mixed after the model's embedding
    needs_images = bool(getattr(MIXERS.get(cfg.mixer.name), "needs_images", False))  # cutmix, fmix, ...: (B, C, H, W)
    if inside and needs_images:
        raise ConfigError(f"mixer={cfg.mixer.name}: needs images, but model={cfg.model.name} embeds token ids; expected "
                          "mixer=input (the embedded sequences, wordMixup) or manifold (a hidden layer, e.g. the "
                          "sentence embedding)")
    unknown = [n for n in getattr(MIXERS.get(cfg.mixer.name), "needs", ()) if n not in SIDE]
    if unknown:
        raise ConfigError(f"mixer={cfg.mixer.name}: needs {unknown}, which the training step does not provide; "
                          f"expected needs among {sorted(SIDE)}")
    if needs_images and len(ds.input_shape) != 3:
        raise ConfigError(f"mixer={cfg.mixer.name}: needs images (C, H, W), but data={ds.name} has inputs of shape "
                          f"{tuple(ds.input_shape)}; expected mixer=input or manifold")
    if inside and scope == "global":
        raise ConfigError(f"trainer.pairing_scope='global': not supported with model={cfg.model.name}, which mixes inside "
                          "the model (embeddings are not gathered across processes); expected local")
    if mix.needs_train_set and scope == "global":
        raise ConfigError(f"trainer.pairing_scope='global': not supported with pairing={cfg.pairing.name} "
                          "pairing.partners=set (partners come from the training set, not the gathered batch); "
                          "expected local")
    if mix.needs_train_set and (manifold or inside):
        where = f"mixer={cfg.mixer.name}" if manifold else f"model={cfg.model.name}"
        raise ConfigError(f"{where}: mixes hidden states, but pairing={cfg.pairing.name} pairing.partners=set fetches "
                          "its partners' inputs from the training set; expected mixer=input or cutmix on a model that "
                          "mixes its inputs, or pairing.partners=batch")
    uses_features = any(getattr(part, "space", "input") == "feature" for part in (mix.lam_policy, mix.pairing))
    forward = torch.compile(model) if cfg.trainer.compile else model
    eval_forward = forward
    if d.world > 1:
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        forward = torch.compile(ddp) if cfg.trainer.compile else ddp
    needs_features = uses_features and not manifold
    bank = FeatureBank(model, ds.n_train, device, d) if needs_features and cfg.trainer.features == "cache" else None
    ood = None
    if (cfg.get("eval") or {}).get("ood") is not None:
        with component_errors("eval"):
            ood = ood_inputs(cfg.eval.ood, ds)
    corrupted, form = None, None
    if (cfg.get("eval") or {}).get("corruptions"):
        with component_errors("eval"):
            ds.require_image_classifier("eval.corruptions=True", "false")
        n = cfg.eval.get("corruption_samples") or ds.n_test
        root = Path(cfg.data.root).expanduser() if cfg.data.get("root") else DEFAULT_ROOT
        # which reference's formulas and severity tables: auto resolves by image kind (grey, 32x32 colour, larger)
        with component_errors("eval"):
            form = resolve_form(cfg.eval.get("corruption_form", "v1"), tuple(ds.x_test[:1].shape))
        corrupted = corrupted_sets(ds.unnormalise(ds.x_test[:n]), root / "corruptions" / ds.name, form=form)
    return Parts(ds, model, forward, eval_forward, mix, batches, optimizer, scheduler, generators, device,
                 _auto(cfg.trainer.amp, device), channels_last, manifold or inside, needs_features, d, bank, task,
                 0 if inside and not manifold else None, ood, corrupted, corruption_form=form)


@torch.no_grad()
def _corruption_table(p: Parts) -> tuple[dict, dict]:
    """Accuracy, NLL and ECE on each corrupted test set ({corruption: [per severity]}), and their means
    over all of them (``test_corruption_acc``, ``_nll``, ``_ece``)."""
    table: dict[str, list[dict]] = {}
    for (name, severity), images in p.corrupted.items():
        x = p.ds.normalise(images.to(p.device).float() / 255)
        m = classification_metrics(torch.cat(_outputs(p, x)).float(), p.ds.y_test[:images.shape[0]])
        table.setdefault(name, []).append({"severity": severity, "acc": m["acc"], "nll": m["nll"], "ece": m["ece"]})
    rows = [r for per in table.values() for r in per]
    return table, {f"test_corruption_{k}": sum(r[k] for r in rows) / len(rows) for k in ("acc", "nll", "ece")}


def loss_per_sample(out: Tensor, target: Tensor, task: Task) -> Tensor:
    """The task's loss of each sample against its mixed target, (B,) (the one place a step computes it)."""
    return task.loss_per_sample(out, target)


def _input_grad(p: Parts, x: Tensor, y: Tensor) -> Tensor:
    """The gradient of the batch's clean loss (each sample against its own target, summed) with respect to
    ``x``: one more forward and backward pass, which leaves the parameters' gradients as they were."""
    xg = x.detach().requires_grad_(True)
    target = p.mix.clean_targets(y)
    loss = loss_per_sample(p.task.forward(p.forward, xg, target), target, p.task).sum()
    (grad,) = torch.autograd.grad(loss, xg)
    return grad.detach()


# what a mixer may need besides the batch (``Mixer.needs``), each computed by the training step
SIDE = {"input_grad": _input_grad, "targets": lambda p, x, y: p.mix.clean_targets(y)}


def train_epoch(p: Parts, epoch: int, epochs: int, *, log_every: int, bar: object | None,
                stop: dict | None = None) -> dict:
    """One pass over the training set. Statistics stay on the device; the host reads them every
    ``log_every`` steps (for the progress bar and the divergence check) and at the end. With
    several processes they are summed over all of them there (one all-reduce, which also carries
    the stop flag, so all processes stop, or diverge, at the same step)."""
    p.model.train()
    dev, steps, d = p.device, len(p.batches), p.dist
    classification = p.task.has_classes
    sums = torch.zeros(4, device=dev, dtype=torch.float64)  # loss, correct, same-class pairs, pair distance
    n = 0  # samples seen: known on the host, so never copied to the device
    lams: list[Tensor] = []
    applied: list[Tensor] = []  # λ with self-pairs at 1: what the strength counts
    images: Tensor | None = None
    boxes: Tensor | None = None  # detection: the blends' boxes, drawn on them
    probe: tuple[Tensor, ...] | None = None  # the first batch's pairs, for λ against distance
    t0 = time.perf_counter()
    for step, (x, y, index) in enumerate(p.batches):
        if p.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        progress = ((epoch - 1) + step / steps) / epochs
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=p.amp):
            features = None
            if p.needs_features:  # feature-space pairing or λ: the clean penultimate embedding
                features = p.bank.read(index) if p.bank is not None and epoch > 1 else _clean_features(p, x)
            if p.manifold:
                at = p.mix_at if p.mix_at is not None else \
                    int(torch.randint(p.model.num_mix_points, (1,), generator=p.generators["layer"]))
                held: dict[str, Tensor] = {}

                def mix_hidden(h: Tensor) -> Tensor:
                    f = features if features is not None else h.flatten(1)
                    h_mix, held["y"] = p.mix(h, y, features=f, index=index, progress=progress)
                    held["h"], held["f"] = h.detach(), f.detach()
                    return h_mix

                out = p.forward(x, mix_at=at, mix=mix_hidden)
                y_mix = held["y"]
            else:
                side = {need: SIDE[need](p, x, y) for need in p.mix.needs}  # what the mixer reads (PuzzleMix: ∇x)
                x_mix, y_mix = p.mix(x, y, features=features, index=index, progress=progress, **side)
                if images is None and epoch == 1:
                    images = x_mix[:32].detach()
                    boxes = y_mix[:32].detach() if p.task.mixes_boxes else None
                out = p.task.forward(p.forward, x_mix, y_mix)
        per_sample = loss_per_sample(out, y_mix, p.task)
        loss = per_sample.mean()
        p.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        p.optimizer.step()
        p.mix.after_step(p.model)  # a learned mixer's own update (its momentum copy of the model)
        p.scheduler.step()
        p.mix.observe(per_sample.detach(), index)
        if p.bank is not None:
            if epoch == 1:
                p.bank.write(index, features, torch.ones_like(index, dtype=torch.bool), epoch)
            else:
                p.bank.refresh(index, p.mix.last.lam, p.mix.last.partner if p.mix.last.pool is None else None, epoch)

        last = p.mix.last
        if step == 0:  # what the λ policy measured distances in: the hidden state, its features, or x
            feature_space = getattr(p.mix.lam_policy, "space", "") == "feature"
            space = (held["f"] if feature_space else held["h"]) if p.manifold else features if feature_space else x
            # (the rows, what partner indexes: the gathered batch under pairing_scope=global, the training set
            # under a set-level pairing, partner, λ, and the batch whose typical distance scales the pairs')
            pool = (last.pool[0] if last.pool is not None else space).detach()
            probe = (space.detach(), pool, last.partner, last.lam.detach(), space.detach() if last.from_set else pool)
        n += y.shape[0]
        px, py = last.pool if last.pool is not None else (x, y)  # the gathered batch, or the training set
        if p.model.mixes_inside:  # token ids have no distance: text's pairs are measured where they are mixed
            pair_d = pair_distance(held["h"], held["h"].index_select(0, last.partner))
        else:
            pair_d = pair_distance(x, px.index_select(0, last.partner))  # input space, (B,)
        zero = pair_d.new_zeros(())
        same = (y == py[last.partner]).sum() if classification else zero
        correct = p.task.correct(out, y_mix)
        sums += torch.stack([loss.detach() * y.shape[0], correct, same, pair_d.sum()]).double()
        lams.append(last.lam.detach())
        # a sample paired with itself made no blend: its strength is 0 whatever λ it drew ("itself": its
        # position in the gathered batch under pairing_scope=global, its dataset index under a set-level pairing)
        applied.append(unmixed_self_pairs(last.lam.detach(), last.partner, last.own))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            if d.world == 1:
                s, seen, stopping = sums.tolist(), n, False  # the one host sync per log interval
            else:
                flags = torch.tensor([n, stop is not None and stop["signal"] is not None], device=dev,
                                     dtype=torch.float64)
                *s, seen, stopping = d.sum(torch.cat([sums, flags])).tolist()
            if not math.isfinite(s[0]):
                raise Diverged(s[0] / seen, epoch, step + 1)
            if bar is not None:
                bar.set_postfix(loss=f"{s[0] / seen:.4f}", acc=f"{s[1] / seen:.3f}" if classification else "-")
            if stopping:
                _interrupted((stop or {}).get("signal"), epoch, step + 1)
        if bar is not None:
            bar.update(1)
        if stop is not None and d.world == 1:  # several processes: the all-reduce above carries the flag
            _check_stop(stop, epoch, step + 1)
    topped_up = p.bank.top_up(p, epoch, p.batches.batch_size) if p.bank is not None else None
    seconds = time.perf_counter() - t0
    row = {"train_loss": s[0] / seen, "train_acc": s[1] / seen if classification else None,
           "pair_same_class": s[2] / seen if classification else None, "pair_distance": s[3] / seen,
           "train_seconds": seconds, "images_per_second": seen / seconds}
    if topped_up is not None:  # trainer.features=cache: the share of rows the end-of-epoch pass refreshed
        row["feature_cache_topped_up"] = topped_up / p.ds.n_train
    row.update(lam_stats(d.gather(torch.cat(lams))))  # the λ drawn
    row.update({k: v for k, v in lam_stats(d.gather(torch.cat(applied))).items() if k.startswith("lam_strength")})
    return {"row": row, "images": images, "boxes": boxes, "lam_vs_distance": _lam_vs_distance(p.mix.lam_policy, *probe)}


def _lam_vs_distance(policy: object, z: Tensor, pool: Tensor, partner: Tensor, lam: Tensor, batch: Tensor,
                     most: int = 256) -> dict:
    """Up to ``most`` pairs of an epoch's first (full) batch for the report's λ-against-distance picture:
    each pair's distance (row i of ``z`` to row partner[i] of ``pool``) as the λ policy saw it — its
    metric and space, divided by its statistic over ``batch`` (``pool``, or the batch itself where ``pool``
    is the training set: ``distance``'s ``normalize``, ``sk``'s all-pairs mean; Euclidean over the mean
    for the others)."""
    metric, how = getattr(policy, "metric", "euclidean"), getattr(policy, "normalize", "mean")
    dist = pair_distance(z, pool.index_select(0, partner), metric)
    if how != "none":
        dist = dist / batch_distance_scale(batch, metric, how).clamp_min(1e-12)
    return {"distance": dist[:most].tolist(), "lam": lam[:most].float().tolist(), "metric": metric,
            "normalize": how, "batch": int(partner.shape[0])}


@torch.no_grad()
def _clean_features(p: Parts, x: Tensor) -> Tensor:
    """Penultimate embeddings of the un-mixed batch, for feature-space pairing and λ: one extra
    forward without gradients, in eval mode so it leaves BatchNorm's running statistics alone."""
    p.model.eval()
    try:
        return p.model.embed(x).float()
    finally:
        p.model.train()


@torch.no_grad()
def evaluate(p: Parts, split: str = "test", *, batch_size: int | None = None) -> dict:
    """Metrics of the model on the ``test`` or ``val`` split, keys prefixed by the split's name.
    Batches of 1000 on an accelerator; of 128 on a CPU, where a batch that fits the caches is faster
    (the small cnn on 5 000 Fashion-MNIST images, one thread: 3.0 s at 128 against 5.6 s at 1000)."""
    x_all, y_all = (p.ds.x_test, p.ds.y_test) if split == "test" else (p.ds.x_val, p.ds.y_val)
    return p.task.metrics(p.task.join(_outputs(p, x_all, batch_size)), y_all, split)


@torch.no_grad()
def _outputs(p: Parts, x_all: Tensor, batch_size: int | None = None) -> list:
    """The model's evaluation outputs for ``x_all``, batch by batch (see :func:`evaluate` for the size)."""
    batch_size = batch_size or (128 if p.device.type == "cpu" else 1000)
    p.model.eval()
    outs = []
    for x in x_all.split(batch_size):  # sequential slices, the last may be short
        if p.stop is not None and p.stop["signal"] is not None:
            raise _EvaluationStopped
        if p.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(p.device.type, dtype=torch.bfloat16, enabled=p.amp):
            outs.append(p.eval_forward(x))
    return outs


def _rng(p: Parts) -> dict | list[dict]:
    """The RNG states to checkpoint: this process's, or with several a list of every process's
    (a collective: all processes call it)."""
    state = rng_state(p.generators)
    return state if p.dist.world == 1 else p.dist.all_objects(state)


def _state(p: Parts, epoch: int, rng: dict | list[dict], config: dict) -> dict:
    return {"epoch": epoch, "config": config, "model": p.model.state_dict(), "optimizer": p.optimizer.state_dict(),
            "scheduler": p.scheduler.state_dict(), "mix": p.mix.state_dict(),
            "rng": rng,
            "features": p.bank.rows if p.bank is not None else None,
            "features_epoch": p.bank.epoch if p.bank is not None else None}


def _restore(p: Parts, ckpt: dict) -> int:
    rng, world = ckpt["rng"], p.dist.world
    saved_streams = sorted((rng[0] if isinstance(rng, list) else rng).get("generators", {}))
    if saved_streams != sorted(p.generators):
        raise ConfigError(f"last.pt holds the random streams {saved_streams} and this run draws from "
                          f"{sorted(p.generators)}; expected a checkpoint of the same mixlab (or a new run directory)")
    saved = len(rng) if isinstance(rng, list) else 1
    if saved != world:
        raise ConfigError(f"last.pt was written by {saved} process(es) and this run has {world}; "
                          f"expected the same number to resume exactly (or a new run directory)")
    p.model.load_state_dict(ckpt["model"])
    p.optimizer.load_state_dict(ckpt["optimizer"])
    p.scheduler.load_state_dict(ckpt["scheduler"])
    p.mix.load_state_dict(ckpt["mix"])
    if p.bank is not None and ckpt.get("features") is not None:
        p.bank.rows.copy_(ckpt["features"])
        p.bank.epoch.copy_(ckpt["features_epoch"])
    set_rng_state(rng[p.dist.rank] if isinstance(rng, list) else rng, p.generators)
    return int(ckpt["epoch"])


def _hydra_group() -> str | None:
    """The run's overrides minus the seed: the W&B group that folds a sweep's seeds together."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = HydraConfig.get().overrides.task
    except Exception:  # noqa: BLE001 - not running under Hydra
        return None
    return ",".join(sorted(o for o in task if not o.lstrip("+~").startswith("seed="))) or "default"


def _logger_options(cfg: DictConfig) -> dict:
    """The logger's options with the run's group and job type. A study's job (``study.run``, set by
    ``python -m mixlab.study``) is grouped by its arm, typed by its phase and tagged with its study and
    plan, so one project holds many studies apart; any other run is grouped by its overrides minus the seed."""
    opts = options(cfg.logger)
    run = OmegaConf.select(cfg, "study.run", default=None)
    if run is None:
        return {**opts, "group": _hydra_group(), "job_type": None}
    if "tags" in opts:  # a logger without tags (none) takes none
        opts["tags"] = [*opts["tags"], f"study:{run.name}", f"plan:{run.plan}"]
    return {**opts, "group": run.arm, "job_type": run.phase}


def _progress_bar(total: int, desc: str, enabled: bool, **kw: object) -> object | None:
    """A tqdm bar on stderr, only where stderr is a terminal: redirected to a file or a log (Hydra's
    mixlab.log, SLURM's output), a bar is a stream of cursor-movement escapes."""
    if not (enabled and sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, dynamic_ncols=True, file=sys.stderr, **kw)


def train(cfg: DictConfig, run_dir: str | Path, *, on_start: Callable[[Path], None] | None = None,
          folder_key: str = "hydra.run.dir") -> float:
    """Train as ``cfg`` says, write the run records to ``run_dir``, return the objective: the final
    validation accuracy (MSE for regression; the test one only with ``data.val_size=0``). A completed
    run is not redone.

    One writer per folder: ``run_dir`` is locked (``RunLock``) for the whole call; a folder another live
    process holds is refused. Raises ``ConfigError`` for a refused folder or a bad configuration, data
    set or checkpoint (found before the first step: nothing is written, a folder made for nothing is
    removed, and a resumed run's records stay as they were), ``Diverged`` for a non-finite loss and
    ``Interrupted`` after SIGTERM/Ctrl-C (also before the run starts, then writing nothing); the last
    two record the status and error in ``summary.json``. ``on_start(run_dir)`` is called once every
    check has passed, right before training (the command line writes Hydra's ``.hydra/`` there).
    ``folder_key`` is what a refusal tells the user to change (``--out`` for ``python -m mixlab.tune``).

    Under ``torchrun`` every process calls this; rank 0's ``run_dir`` is used by all of them, and
    only rank 0 evaluates, prints and writes the records (the others return its result)."""
    d = setup_distributed()
    run_dir = Path(d.broadcast(str(run_dir)))
    with _signals_to_flag() as stop:
        lock = RunLock(run_dir) if d.main else None
        refused = lock.acquire(folder_key) if lock is not None else None
        if d.world > 1:
            refused = d.broadcast(refused)
        if refused:
            raise ConfigError(refused)
        try:
            if stop["signal"] is not None:  # e.g. between a sweep's jobs: this one never starts
                raise Interrupted(f"{stop['signal']} before this run started; nothing of it was written",
                                  stop["signal"])
            tuning = apply_tuned(cfg)  # the tuned hyperparameters are part of what the run is, and of its records
            apply_strength(cfg)
            resolved = OmegaConf.to_container(cfg, resolve=True)
            previous = read_json(run_dir / "summary.json") or {}
            _check_same_run(run_dir, resolved, previous, folder_key)
            if previous.get("status") == "completed":
                if d.main:
                    print(f"mixlab: {run_dir} already completed; skipping (delete summary.json to redo)",
                          file=sys.stderr)
                return previous["objective"]
            if lock is not None:
                lock.announce()
            return _run(cfg, run_dir, resolved, previous, stop, d, tuning, on_start)
        finally:
            if lock is not None:
                lock.release(discard=True)  # a folder holding nothing but the lock was made for nothing


def _checkpoint(path: Path, map_location: object = "cpu") -> dict | None:
    """``load_checkpoint``, a damaged file one ``ConfigError`` line (the run's records untouched)."""
    try:
        return load_checkpoint(path, map_location=map_location)
    except UnreadableCheckpoint as e:
        raise ConfigError(str(e)) from None


def _check_same_run(run_dir: Path, resolved: dict, previous: dict, folder_key: str = "hydra.run.dir") -> None:
    """Refuse a run directory that holds another configuration's records (``summary.json`` or
    ``last.pt``): resuming from them, or skipping as completed, would put that run's results under
    this run's labels. Keys in ``config.VOLATILE`` (device, progress, logger, ...) may differ. A run
    that failed before its first epoch was recorded (a refused setting) leaves nothing to protect: its
    folder takes the corrected configuration. Raised before anything is written, so the other run's
    records stay as they are."""
    stored = previous.get("config")
    where = "summary.json"
    log = run_dir / "metrics.jsonl"
    if previous.get("status") == "failed" and not (run_dir / "last.pt").exists() \
            and not (log.exists() and log.stat().st_size):
        return  # it failed before training anything (a setting refused): nothing to resume or mislabel
    if stored is None and (run_dir / "last.pt").exists():
        stored, where = (_checkpoint(run_dir / "last.pt") or {}).get("config"), "last.pt"
        if stored is None:
            raise ConfigError(f"{run_dir}: last.pt records no configuration (an older mixlab wrote it), so it cannot "
                              f"be resumed safely; expected a new {folder_key}, or delete that folder")
    if stored is None or fingerprint(stored) == fingerprint(resolved):
        return
    diff = config_difference(stored, resolved)
    shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
    raise ConfigError(f"{run_dir} holds a run of another configuration ({where}: {shown}); a folder is resumed "
                      f"only by the same configuration: expected a new {folder_key}, or delete that folder")


def _run(cfg: DictConfig, run_dir: Path, resolved: dict, previous: dict, stop: dict, d: Dist = Dist(),
         tuning: dict | None = None, on_start: Callable[[Path], None] | None = None) -> float:
    started = time.time()
    summary: dict = {"status": "running", "config": resolved, "git": loaded_git() if d.main else None,
                     "versions": versions(), "epochs": cfg.get("trainer", {}).get("epochs")}
    if tuning is not None:
        summary["tuning"] = tuning
    if d.world > 1:
        summary["world_size"] = d.world
    log = MetricsLog(run_dir / "metrics.jsonl")
    logger = None
    training = False  # until the first step: a ConfigError before it writes nothing (the folder's records stay)
    try:
        p = build(cfg, d)
        p.stop = stop
        summary["dataset"] = p.ds.summary()
        summary["lam_dynamic"] = bool(getattr(p.mix.lam_policy, "dynamic", True))  # the report's primary family
        ckpt = _checkpoint(run_dir / "last.pt", map_location=p.device)
        start = _restore(p, ckpt) if ckpt is not None else 0
        wall_before = previous.get("wall_seconds", 0.0) if start else 0.0
        if d.main:
            with component_errors("logger"):
                logger = LOGGERS.build(cfg.logger.name, run_dir=run_dir, config=resolved, **_logger_options(cfg))
        else:
            logger = NoLogger(run_dir=run_dir, config=resolved)
        training = True
        if d.main:
            remove_stale_temps(run_dir)  # of writes killed before their rename; this process holds the folder
            log.truncate(start)
            if on_start is not None:
                on_start(run_dir)
            print(f"mixlab: {ds_line(p.ds)} | model={cfg.model.name} pairing={cfg.pairing.name} "
                  f"lambda={cfg.lam.name} mixer={cfg.mixer.name} | device={p.device}"
                  + (f" x {d.world} processes" if d.world > 1 else "") + f" | records: {run_dir}"
                  + (f" (resuming after epoch {start})" if start else ""), file=sys.stderr)
        epochs, show = cfg.trainer.epochs, cfg.trainer.progress and d.main
        epoch_bar = _progress_bar(epochs, "epochs", show, initial=start)
        for epoch in range(start + 1, epochs + 1):
            t0 = time.perf_counter()
            batch_bar = _progress_bar(len(p.batches), f"epoch {epoch}", show, leave=False)
            result = train_epoch(p, epoch, epochs, log_every=cfg.trainer.log_every, bar=batch_bar, stop=stop)
            if batch_bar is not None:
                batch_bar.close()
            rng = _rng(p)
            recorded = True
            if d.main:  # rank 0 evaluates and writes; the others wait for it at the stop check below
                try:
                    _evaluate_and_record(p, cfg, run_dir, log, logger, epoch, result, rng, resolved, t0, epoch_bar)
                except _EvaluationStopped:
                    recorded = False  # nothing of this epoch written: a re-run replays it from the last checkpoint
            # after every epoch, the last included (a collective: all processes stop if any was signalled)
            signalled = stop["signal"] is not None
            if d.any(signalled) if d.world > 1 else signalled:
                _interrupted(stop["signal"], epoch, evaluating=not recorded)
        if epoch_bar is not None:
            epoch_bar.close()
        if d.main:
            rows = log.rows()
            summary.update(read_json(run_dir / "last_epoch.json") or {})
            summary.update(_final(rows, p.ds, wall_before + time.time() - started), status="completed")
            summary.pop("error", None)
    except (Exception, KeyboardInterrupt) as e:
        if isinstance(e, ConfigError) and not training:
            summary = {}  # refused before the first step: nothing to record, and the folder's records stay
            raise
        status = {Diverged: "diverged", Interrupted: "interrupted", KeyboardInterrupt: "interrupted"}.get(
            type(e), "failed")
        summary.update(status=status, error=f"{type(e).__name__}: {e}", wall_seconds=time.time() - started)
        if isinstance(e, Diverged):
            summary["diverged_at"] = {"epoch": e.epoch, "step": e.step}
        rows = log.rows() if d.main else []
        if rows:
            summary.update({k: v for k, v in _final(rows, None, summary["wall_seconds"]).items()
                            if k not in ("objective", "dataset")})
        raise
    finally:
        if d.main and summary:
            atomic_write_json(run_dir / "summary.json", summary)
        if logger is not None:
            logger.finish({k: v for k, v in summary.items() if k in ("status", "median_last10_acc", "final")})
    # rank 0's result, once summary.json is written: every process returns when the run is recorded
    return d.broadcast(summary.get("objective"))


def _evaluate_and_record(p: Parts, cfg: DictConfig, run_dir: Path, log: MetricsLog, logger: object, epoch: int,
                         result: dict, rng: dict | list[dict], resolved: dict, t0: float,
                         epoch_bar: object | None) -> None:
    """Rank 0 after an epoch: evaluate, then write the epoch's row, extras, image and checkpoint.

    Validation after the last epoch (selection reads it) and every trainer.val_every epochs for curves;
    the test set once, after the last epoch, unless trainer.test_every asks for curves (peeking, if
    anything is chosen from them). Evaluation draws no random numbers, so how often it runs leaves
    training unchanged. A stop request between evaluation batches raises ``_EvaluationStopped`` before
    anything of the epoch is written."""
    epochs = cfg.trainer.epochs
    val = evaluate(p, "val") if p.ds.n_val and _due(epoch, epochs, cfg.trainer.get("val_every", 1)) else {}
    reads_test = (cfg.get("eval") or {}).get("test", True) and _due(epoch, epochs, cfg.trainer.get("test_every", 0))
    test = evaluate(p, "test") if reads_test else {}
    val_logits, test_logits = val.pop("logits", None), test.pop("logits", None)
    extras = {"reliability": test.pop("reliability", None), "val_reliability": val.pop("reliability", None),
              "lam_vs_distance": result["lam_vs_distance"]}
    if val_logits is not None and test_logits is not None:  # calibration with T fitted on validation
        ts = temperature_scaled(val_logits, p.ds.y_val, test_logits, p.ds.y_test)
        extras["reliability_ts"] = ts.pop("reliability")
        test.update({"temperature": ts["temperature"], **{f"test_{k}_ts": ts[k] for k in ("nll", "ece", "brier")}})
    if p.corrupted is not None and test_logits is not None:  # eval.corruptions: the corrupted test sets
        extras["corruptions"], means = _corruption_table(p)
        extras["corruption_form"] = p.corruption_form
        test.update(means)
    if p.ood is not None and test_logits is not None:  # eval.ood: the test set against the OOD set
        ood = ood_metrics(test_logits, p.task.join(_outputs(p, p.ood)))
        test.update({"test_ood_auroc": ood["auroc"], "test_ood_fpr95": ood["fpr95"]})
    row = {"epoch": epoch, **result["row"], **val, **test, "lr": p.optimizer.param_groups[0]["lr"],
           "seconds": time.perf_counter() - t0}
    # Record first, checkpoint second: a kill between the two resumes from epoch - 1, drops this
    # row (MetricsLog.truncate) and replays the epoch to the same row. The other order would lose it.
    log.append(row)
    atomic_write_json(run_dir / "last_epoch.json", extras)
    grid = _grid(result["images"], p.ds, result["boxes"]) if result["images"] is not None and p.ds.is_image else None
    if grid is not None:  # a record too: atomic, and before the checkpoint (a kill replays the epoch)
        atomic_write(run_dir / "mixed_examples.png", lambda f: save_image(grid, f, format="png"))
    save_checkpoint(run_dir / "last.pt", _state(p, epoch, rng, resolved))
    logger.log(row, step=epoch)
    if grid is not None:
        logger.log_images("mixed_examples", grid, step=epoch)
    _epoch_print(_epoch_line(row, epochs), epoch_bar)
    if epoch_bar is not None:
        epoch_bar.update(1)


def _due(epoch: int, epochs: int, every: int) -> bool:
    """Whether an evaluation set every ``every`` epochs (0: none but the last) is read after ``epoch``."""
    return epoch == epochs or bool(every and epoch % every == 0)


def _final(rows: list[dict], ds: Dataset | None, wall: float) -> dict:
    """The summary's results: ``final`` (the test metrics after the last epoch, if it got that far),
    ``final_val`` (the last validation metrics) and ``objective``, what sweepers and tuning optimise:
    the validation accuracy (MSE for regression), the test one only where there is no validation split."""
    last = rows[-1]
    final = {k: last[k] for k in last if k.startswith("test_") or k == "temperature"}
    final_val = {k: last[k] for k in last if k.startswith("val_")}
    split = "val_" if final_val else "test_"  # accuracy, mAP (detection) or MSE, whichever the task records
    key = split + next((m for m in ("acc", "map") if last.get(split + m) is not None), "mse")
    tests = [r["test_acc"] for r in rows if r.get("test_acc") is not None]
    vals = [r["val_acc"] for r in rows if r.get("val_acc") is not None]
    ips = [r["images_per_second"] for r in rows]
    out = {"final": final, "final_val": final_val, "epochs_done": last["epoch"], "wall_seconds": wall,
           # OpenMixup's protocol: the median of the last 10 of at least 20 epochs, each with a test
           # evaluation (trainer.test_every=1); shorter runs have none (it would just echo the end)
           "median_last10_acc": median_last(tests, 10) if len(tests) >= 20 else None,
           "median_last10_val_acc": median_last(vals, 10) if len(vals) >= 20 else None,
           "images_per_second": sorted(ips)[len(ips) // 2],
           "objective": last.get(key), "objective_key": key}
    if ds is not None:
        out["dataset"] = ds.summary()
    return out


def _epoch_print(line: str, bar: object | None) -> None:
    """Epoch lines go to stdout, bars or not (through tqdm's writer, which moves a live bar out of the way)."""
    if bar is None:
        print(line, flush=True)
    else:
        bar.write(line, file=sys.stdout)


def ds_line(ds: Dataset) -> str:
    return f"data={ds.name} ({ds.n_train} train / {ds.n_val} val / {ds.n_test} test)"


def _epoch_line(row: dict, epochs: int) -> str:
    parts = []
    for split in ("val", "test"):
        if row.get(f"{split}_acc") is not None:
            parts.append(f"{split}_acc {row[f'{split}_acc']:.4f}  {split}_ece {row[f'{split}_ece']:.4f}")
        elif row.get(f"{split}_map") is not None:
            parts.append(f"{split}_map {row[f'{split}_map']:.4f}  {split}_map50 {row[f'{split}_map50']:.4f}")
        elif row.get(f"{split}_mse") is not None:
            parts.append(f"{split}_mse {row[f'{split}_mse']:.4f}")
    return (f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  {'  '.join(parts)}  "
            f"lam {row['lam_mean']:.3f}±{row['lam_std']:.3f}  {row['seconds']:.1f}s")


BOX_COLOURS = ("#ff3b30", "#34aadc")  # a blend's own boxes (weight λ), its partner's (1 − λ)


def _grid(x: Tensor, ds: Dataset, boxes: Tensor | None = None) -> Tensor:
    """Un-normalised (C, H, W) grid of images in [0, 1]; with ``boxes`` (detection's mixed targets,
    (B, 2K, 6)), each blend's boxes of non-zero weight drawn on it: its own, then its partner's."""
    x = ds.unnormalise(x)
    if boxes is not None:
        from torchvision.utils import draw_bounding_boxes

        half = boxes.shape[1] // 2
        drawn = []
        for img, b in zip(x.cpu(), boxes.cpu(), strict=True):
            keep = b[:, 5] > 0
            colours = [BOX_COLOURS[int(k >= half)] for k in torch.nonzero(keep).flatten().tolist()]
            rgb = (img.expand(3, -1, -1) * 255).round().to(torch.uint8)
            drawn.append(draw_bounding_boxes(rgb, b[keep, :4], colors=colours, width=1).float() / 255)
        x = torch.stack(drawn)
    return make_grid(x, nrow=8)
