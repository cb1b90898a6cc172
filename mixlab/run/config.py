"""Validation of the composed config at the boundary, before anything is built or trained.

Top-level, loop, data, optimiser and logger keys are checked here against a table of rules;
each component's own options (``lam.alpha``, ``model.depth``, ...) are type-checked against
its constructor's annotations by ``Registry.build`` and range-checked by the constructor, and
``component_errors`` prefixes those messages with the config group. Every failure is one
line: ``<key>=<value>: expected <what is allowed>`` (``tests/test_fuzz_config.py`` fuzzes every key).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import DictConfig, OmegaConf

from ..engine.registry import is_number as _is_num
from .loggers import WANDB_MODES
from .optim import SCHEDULES


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the Hydra configs, shipped in the package (conf/ links here)


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the key, the value and what is allowed."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_list(v: Any, length: int | None = None) -> bool:
    return isinstance(v, list) and (length is None or len(v) == length)


Rule = tuple[str, Callable[[Any], bool]]
STUDY_PHASES = ("tuning", "comparison", "control")


def _is_study_run(v: Any) -> bool:
    return (isinstance(v, dict) and set(v) == {"name", "plan", "phase", "arm"}
            and all(isinstance(x, str) and x for x in v.values()) and v["phase"] in STUDY_PHASES)


def _one_of(*names: str) -> Rule:
    return " | ".join(names), lambda v: v in names


BOOL: Rule = ("true | false", lambda v: isinstance(v, bool))
AUTO_BOOL: Rule = ("auto | true | false", lambda v: v == "auto" or isinstance(v, bool))
RULES: dict[str, Rule] = {
    "study.reference": ("a lam.name, e.g. beta", lambda v: isinstance(v, str) and v != ""),
    "study.metric": _one_of("test_acc", "test_nll", "test_ece", "test_brier", "test_mse", "test_mae",
                            "test_nll_ts", "test_ece_ts", "median_last10_acc", "test_map", "test_map50", "test_map75"),
    "study.matched": _one_of("primary", "exploratory"),
    "study.arms": ("a list of arms: λ policies, a pairing after + (beta+label_kernel), a mixer after @ (beta@cutmix)",
                   lambda v: _is_list(v) and all(isinstance(a, str) and re.fullmatch(r"\w+(\+\w+)?(@\w+)?", a)
                                                 for a in v)),
    "study.trials": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "study.tuning_seeds": ("a non-empty list of distinct integers >= 0",
                           lambda v: _is_list(v) and v and all(_is_int(s) and s >= 0 for s in v) and len(set(v)) == len(v)),
    "study.eval_seeds": ("a non-empty list of distinct integers >= 0",
                         lambda v: _is_list(v) and v and all(_is_int(s) and s >= 0 for s in v) and len(set(v)) == len(v)),
    "study.sampler": _one_of("random", "tpe"),
    "study.search_seed": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "study.storage": ("null or an Optuna storage: an RDB URL (sqlite:///PATH, postgresql://...) or journal:PATH",
                      lambda v: v is None or (isinstance(v, str) and ("://" in v or (v.startswith("journal:")
                                                                                    and len(v) > 8)))),
    "study.stale_after_s": ("null, or seconds (a number >= 10) after which a claim from another host with no beat is "
                            "taken over", lambda v: v is None or (_is_num(v) and not isinstance(v, bool) and v >= 10)),
    "study.go": _one_of("reference_beats_none", "always"),
    # a mapping arm -> its controls (strength | reversed | stop_late); an arm it leaves out: strength if dynamic
    "study.controls": ("null, or a mapping from arms to lists of controls (strength | reversed | stop_late), e.g. "
                       "{schedule: [strength, reversed], beta: [stop_late]}",
                       lambda v: v is None or isinstance(v, dict) and all(_is_list(k) and set(k) <= {"strength", "reversed",
                                                                                       "stop_late"}
                                                             and len(set(k)) == len(k) for k in v.values())),
    # an arm's own settings beyond its λ policy, pairing and mixer (a mixer's option, a policy's fixed key)
    "study.arm_overrides": ("null, or a mapping from arms to lists of key=value settings every run of the arm adds, "
                            "e.g. {beta@mixblock: [mixer.momentum=0.99]}",
                            lambda v: v is None or isinstance(v, dict) and all(
                                _is_list(o) and all(isinstance(x, str) and re.fullmatch(r"\w+(\.\w+)+=.+", x) for x in o)
                                for o in v.values())),
    "study.stop_late_at": ("a number in (0, 1): the fraction of training after which the stop_late control stops "
                           "mixing", lambda v: _is_num(v) and not isinstance(v, bool) and 0 < v < 1),
    "study.control_kind": ("null, or which control this run is: strength | reversed | stop_late (python -m mixlab.study)",
                           lambda v: v in (None, "strength", "reversed", "stop_late")),
    "study.control_of": ("null, or the lam config this run is the strength-matched control of (python -m mixlab.controls)",
                         lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("name"), str))),
    "study.control_of_pairing": ("null, or the pairing config of the method a random-pairing control matches "
                                 "(python -m mixlab.controls)",
                                 lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("name"), str))),
    # set by the study command on each of its jobs (+study.run=...): names the W&B group, job type and tags
    "study.run": ("null, or {name, plan, phase, arm} as strings, phase one of tuning | comparison | control "
                  "(python -m mixlab.study)", lambda v: v is None or _is_study_run(v)),
    "tuned": ("null or the path of a tuned.yaml (python -m mixlab.tune)", lambda v: v is None or isinstance(v, str)),
    "tuned_transfer": BOOL,
    "plugins": ("a list of importable module names", lambda v: _is_list(v) and all(isinstance(m, str) and m for m in v)),
    # torch seeds take 0..2**64-1, and the loop seeds a second generator with seed + 1
    "seed": ("an integer in [0, 2**63)", lambda v: _is_int(v) and 0 <= v < 2**63),
    "device": ("auto | cpu | cuda | cuda:N", lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v)),
    "smoothing": ("a number in [0, 1)", lambda v: _is_num(v) and 0 <= v < 1),
    "trainer.epochs": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "trainer.amp": AUTO_BOOL,
    "trainer.channels_last": AUTO_BOOL,
    "trainer.compile": BOOL,
    "trainer.log_every": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "trainer.progress": BOOL,
    "trainer.pairing_scope": _one_of("local", "global"),
    "trainer.features": _one_of("forward", "cache"),
    "trainer.streams": _one_of("separate", "shared"),
    "trainer.test_every": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "trainer.val_every": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "trainer.mix_until": ("a number in (0, 1] (1: mix throughout)",
                          lambda v: _is_num(v) and not isinstance(v, bool) and 0 < v <= 1),
    "trainer.reverse_time": BOOL,
    "eval.test": BOOL,
    "eval.corruptions": BOOL,
    "eval.corruption_samples": ("null or an integer >= 1", lambda v: v is None or (_is_int(v) and v >= 1)),
    # the severity tables and formulas of the corrupted sets (mixlab/data/corruptions.py): auto by image kind
    "eval.corruption_form": _one_of("auto", "mnist_c", "cifar10_c", "imagenet_c", "v1"),
    "eval.ood": ("null or digits (sklearn's handwritten digits, resized: far out-of-distribution for images)",
                 lambda v: v is None or v == "digits"),
    "data.batch_size": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "data.train_subset": ("null or an integer >= 1", lambda v: v is None or (_is_int(v) and v >= 1)),
    "data.val_size": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "data.split_seed": ("an integer in [0, 2**63)", lambda v: _is_int(v) and 0 <= v < 2**63),
    "data.subset_per_seed": BOOL,
    "data.crop_padding": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "data.seq_len": ("an integer in 8..100000 (tokens per passage)", lambda v: _is_int(v) and 8 <= v <= 100_000),
    "data.vocab_size": ("an integer in 3..10000000 (words kept, padding and <unk> included)",
                        lambda v: _is_int(v) and 3 <= v <= 10_000_000),
    "data.canvas": ("an integer in 64..1024 (canvas side, px)", lambda v: _is_int(v) and 64 <= v <= 1024),
    "data.max_objects": ("an integer in 1..50", lambda v: _is_int(v) and 1 <= v <= 50),
    "data.train_scenes": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "data.test_scenes": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "data.held_out_objects": ("an integer in 1..59999", lambda v: _is_int(v) and 1 <= v <= 59_999),
    "data.channels": ("1 or 3 (grey or RGB)", lambda v: _is_int(v) and v in (1, 3)),
    **{f"data.{k}": ("a non-empty path relative to data.root", lambda v: isinstance(v, str) and bool(v))
       for k in ("train_annotations", "train_images", "test_annotations", "test_images")},
    "data.hflip": BOOL,
    "data.download": BOOL,
    "data.root": ("null or a path", lambda v: v is None or isinstance(v, str)),
    "optim.schedule": _one_of(*SCHEDULES),
    "optim.lr": ("a number > 0", lambda v: _is_num(v) and v > 0),
    "optim.weight_decay": ("a number >= 0", lambda v: _is_num(v) and v >= 0),
    "optim.momentum": ("a number in [0, 1)", lambda v: _is_num(v) and 0 <= v < 1),
    "optim.nesterov": BOOL,
    "optim.betas": ("two numbers in [0, 1)", lambda v: _is_list(v, 2) and all(_is_num(b) and 0 <= b < 1 for b in v)),
    "optim.warmup_epochs": ("a number >= 0", lambda v: _is_num(v) and v >= 0),
    "optim.gamma": ("a number in (0, 1]", lambda v: _is_num(v) and 0 < v <= 1),
    "optim.milestones": ("a list of fractions in (0, 1)",
                         lambda v: _is_list(v) and all(_is_num(m) and 0 < m < 1 for m in v)),
    # The logger is built after the data and model, so its options are checked here, before anything is built.
    "logger.project": ("a string", lambda v: isinstance(v, str)),
    "logger.entity": ("null or a string", lambda v: v is None or isinstance(v, str)),
    "logger.mode": _one_of(*WANDB_MODES),
    "logger.tags": ("a list of strings", lambda v: _is_list(v) and all(isinstance(t, str) for t in v)),
    "logger.images": BOOL,
    # sk's warp (engine.lam.SK_WARPS; the constructor checks it too): before anything is built, in one line
    "lam.warp": _one_of("inverse_cdf", "cdf"),
    # how a text model reads a blend's padding (models.text.MASK_MIXES; the constructor checks it too)
    "model.mask_mix": _one_of("soft", "union"),
    # where label_kernel's partners come from (engine.pairing.LABEL_KERNEL_PARTNERS; the constructor checks it too)
    "pairing.partners": _one_of("batch", "set"),
}


CLOSED = ("data", "trainer", "study", "eval")  # nodes read key by key: an unknown key in them would be ignored silently


def validate(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for the first key that breaks its rule (absent keys are skipped), or for
    a key in ``data``/``trainer`` that nothing reads (``+data.batchsize=64``; the components' own
    nodes reject unknown options when they are built)."""
    for node in CLOSED:
        known = {k.split(".", 1)[1] for k in RULES if k.startswith(f"{node}.")} | {"name"}
        for key in OmegaConf.select(cfg, node, default=None) or {}:
            if key not in known:
                raise ConfigError(f"{node}.{key}={OmegaConf.select(cfg, f'{node}.{key}')!r}: unknown key; "
                                  f"expected one of {sorted(known)}")
    for key in RULES:
        value = OmegaConf.select(cfg, key, default="<absent>")
        if value == "<absent>":
            continue
        check_rule(key, OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def check_rule(key: str, value: Any) -> None:
    """Raise ``ConfigError`` where ``value`` breaks the rule of ``key`` in ``RULES``."""
    allowed, ok = RULES[key]
    try:
        good = bool(ok(value))
    except TypeError:
        good = False
    if not good:
        raise ConfigError(f"{key}={value!r}: expected {allowed}")


def apply_tuned(cfg: DictConfig) -> dict | None:
    """With ``tuned=<tuned.yaml>`` (written by ``python -m mixlab.tune``), set this run's λ-policy
    hyperparameters to what tuning chose for ``cfg.lam.name``, in place, before anything is recorded:
    the run's resolved config, and so its records, show the values it used. Returns what the run's
    summary keeps of the tuning (the file, the chosen values and, from the ``tuning.json`` beside it,
    the budget, search seed, search space, objective and the chosen trial's score), so a report can
    state them from the run records alone; None without ``tuned``."""
    path = cfg.get("tuned")
    if not path:
        return None
    import yaml

    try:
        chosen = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"tuned={path!r}: cannot be read ({e.strerror or e}); expected a tuned.yaml "
                          "written by python -m mixlab.tune") from None
    # the entry tuned for this λ policy under this pairing and mixer where there is one (a study's arm:
    # ``beta+label_kernel``, ``beta@cutmix``, ``schedule+nearest@fmix``), else under this pairing, else the policy's
    # own (tuned under the pairing and mixer the tuning ran with, and so transferred to this one)
    pairing, mixer = cfg.pairing.name, OmegaConf.select(cfg, "mixer.name", default="input")
    paired = cfg.lam.name if pairing == "random" else f"{cfg.lam.name}+{pairing}"
    arms = list(dict.fromkeys([paired + ("" if mixer == "input" else f"@{mixer}"), paired, cfg.lam.name]))
    name = next((a for a in arms if isinstance(chosen, dict) and a in chosen), None)
    if name is None:
        if isinstance(chosen, dict) and _nothing_to_tune(cfg.lam.name):
            return None  # none, automix: no search space, so nothing tuning could have chosen
        have = sorted(chosen) if isinstance(chosen, dict) else []
        nor = f" (nor {', '.join(arms[:-1])})" if arms[:-1] else ""
        raise ConfigError(f"tuned={path!r}: has no entry for lambda={cfg.lam.name}{nor}; expected one of {have}")
    for key, value in (chosen[name] or {}).items():
        if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            raise ConfigError(f"tuned={path!r}: {key} is not a key of the config of lambda={cfg.lam.name} "
                              f"pairing={cfg.pairing.name}")
        OmegaConf.update(cfg, key, value, merge=False)
    record: dict[str, Any] = {"file": str(path), "lambda": name, "chosen": chosen[name] or {}}
    try:
        log = json.loads((Path(path).parent / "tuning.json").read_text(encoding="utf-8"))
        mine = [t for t in log.get("trials_run", []) if t.get("lambda") == name]
        best = next((t for t in mine if t.get("trial") == (log.get("chosen") or {}).get(name)), {})
        record.update(trials=log.get("trials"), trials_run=len(mine), search_seed=log.get("seed"),
                      space=(log.get("spaces") or {}).get(name, {}), overrides=log.get("overrides"),
                      objective_key=best.get("objective_key"), best_objective=best.get("objective"))
    except (OSError, ValueError):
        # a tuned.yaml written by hand: the values are known, the budget and the settings are not
        record.update(trials=None, transferred=None)
        return record
    # a study tunes each arm under its own mixer and settings (tuning.json's settings_by_arm); older files: one
    record["transferred"] = _transferred(cfg, path, (log.get("settings_by_arm") or {}).get(name, log.get("settings")))
    return record


def _transferred(cfg: DictConfig, path: str, settings: Any) -> list[str] | None:
    """How this run's settings differ from those ``tuning.json`` says its trials ran under (``key: tuned ->
    this run``), after refusing the difference unless ``tuned_transfer``: values chosen on 15 epochs of
    digits need not be good ones for 100 epochs of Fashion-MNIST. None where the file predates the record."""
    if not isinstance(settings, dict):
        return None  # an older tuning.json: under what settings its trials ran is unknown
    transfer = cfg.get("tuned_transfer", False)
    check_rule("tuned_transfer", transfer)  # read before validate() runs: a bad value must not pass for false
    # keys added since (ADDED) read as their old behaviour, as in fingerprint()
    old = {k: v for k, v in with_added(settings).items() if not _under(k, VOLATILE + TUNING_FREE)}
    diff = differences(old, tuning_settings(_resolved(cfg)))
    if diff and not transfer:
        shown = "; ".join(diff[:3]) + (f"; and {len(diff) - 3} more" if len(diff) > 3 else "")
        raise ConfigError(f"tuned={path!r}: made under other settings ({shown}); expected a run under the same "
                          "settings, or tuned_transfer=true to use it anyway")
    return diff


def _resolved(cfg: DictConfig) -> dict:
    """The task config, resolved, without Hydra's node (the command line checks a config that has one,
    whose ``${now:...}``/``${hydra:...}`` need a running Hydra)."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    return OmegaConf.to_container(OmegaConf.create(plain), resolve=True)


def _spaces_file(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def search_spaces(path: Path = CONF_DIR / "search_spaces.yaml") -> dict[str, dict[str, dict]]:
    """Each λ policy's search space for ``python -m mixlab.tune`` (``conf/search_spaces.yaml``)."""
    return {k: v for k, v in _spaces_file(path).items() if k != "pairing"}


def pairing_spaces(path: Path = CONF_DIR / "search_spaces.yaml") -> dict[str, dict[str, dict]]:
    """The search spaces of the pairings with knobs of their own (``pairing:`` in ``conf/search_spaces.yaml``)."""
    return _spaces_file(path).get("pairing") or {}


def _nothing_to_tune(name: str) -> bool:
    spaces = search_spaces()
    return name in spaces and not spaces[name]


def apply_strength(cfg: DictConfig) -> None:
    """``lambda=beta lam.strength=s``: set ``lam.alpha`` to the α* that strength implies
    (``lam.beta_alpha_for_strength``), in place, so the run's records show the α it drew from."""
    if cfg.lam.get("name") != "beta" or cfg.lam.get("strength") is None:
        return
    from ..engine.lam import beta_alpha_for_strength

    try:
        alpha = beta_alpha_for_strength(cfg.lam.strength)
    except ValueError as e:
        raise ConfigError(f"lam.{e}") from None
    OmegaConf.update(cfg, "lam.alpha", alpha, merge=False)


def import_plugins(modules: list[str] | None) -> None:
    """Import the user's modules named by ``plugins`` (before anything is built), so that their
    ``@LAMBDAS.register(...)``-style registrations exist. Not found or failing: one ``ConfigError`` line."""
    for name in modules or []:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any failure inside the user's module is reported as theirs
            first = str(e).splitlines()[0] if str(e) else ""
            raise ConfigError(f"plugins={list(modules)!r}: importing {name!r} failed ({type(e).__name__}: {first}); "
                              "expected modules importable from the current directory or PYTHONPATH") from None


@contextmanager
def component_errors(group: str) -> Iterator[None]:
    """Turn a component constructor's ``ValueError``/``TypeError`` into a ``ConfigError`` for ``group``."""
    try:
        yield
    except (ValueError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if msg.startswith((f"{group}.", f"{group}=")):  # it named the full key itself (data.train_subset=..., data=...)
            prefix = ""
        else:
            prefix = f"{group}." if re.match(r"^\w+=", msg) else f"{group}: "
        raise ConfigError(prefix + msg) from None


def options(node: DictConfig) -> dict:
    """A component's options: its config node without ``name``, as plain Python values."""
    opts = OmegaConf.to_container(node, resolve=True)
    opts.pop("name", None)
    return opts


# ----------------------------------------------------------------------------- run identity

# Keys that change how a run executes or is logged, not what it computes. A run directory may be
# resumed, or a completed run reused, with other values of these; any other difference is another
# run. (The report groups runs by the rest minus the seed.)
VOLATILE = ("device", "trainer.progress", "trainer.log_every", "logger", "data.root", "data.download", "study")


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"lam": {"name": "beta"}} → {"lam.name": "beta"}; lists become JSON text so they can be compared."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


# Keys added after records were first written, with the value that behaves as their absence did: a record
# without one is the same run as a config that sets it so (and only so), e.g. when a sweep is extended.
ADDED = {"trainer.val_every": 1, "eval.ood": None, "eval.corruptions": False, "eval.corruption_samples": None,
         "data.crop_padding": 0, "data.hflip": False,  # now defaults of every data set (text had none)
         "trainer.streams": "shared", "eval.test": True,  # records made before the streams were separated drew pairing and λ from data order
         "tuned_transfer": False,
         "eval.corruption_form": "v1",  # records made before the reference forms used mixlab's first mix
         "model.mask_mix": "union",  # text runs before it read a blend's padding as the OR of the masks
         "lam.warp": "inverse_cdf",  # sk runs before the option warped through the inverse Beta CDF (its default)
         "pairing.partners": "batch",  # label_kernel runs before the option drew partners from the batch
         "trainer.mix_until": 1.0, "trainer.reverse_time": False,  # runs before the clock switches mixed throughout
         # Mix Block runs before its schedules held lr and momentum constant (momentum_from then changed nothing)
         "mixer.lr_min": None, "mixer.momentum_end": None, "mixer.momentum_from": 0.1}
# a component's option ADDED: only the components that take it (an image model has no ``mask_mix``)
ADDED_FOR = {"model.mask_mix": ("model.name", ("textcnn", "transformer")), "lam.warp": ("lam.name", ("sk",)),
             "pairing.partners": ("pairing.name", ("label_kernel",)),
             **{k: ("mixer.name", ("mixblock",)) for k in ("mixer.lr_min", "mixer.momentum_end", "mixer.momentum_from")}}


def with_added(flat: dict[str, Any]) -> dict[str, Any]:
    """A flat config with the ``ADDED`` keys it lacks, at their old values (a component's option only where
    the run's component takes it)."""
    def applies(key: str) -> bool:
        if key not in ADDED_FOR:
            return True
        name, takers = ADDED_FOR[key]
        return flat.get(name) in takers

    return {**{k: v for k, v in ADDED.items() if applies(k)}, **flat}


# keys that change nothing while their switch is off: not part of a run's identity then
INERT_UNLESS = {"eval.corruption_form": "eval.corruptions"}


def fingerprint(resolved: dict) -> dict[str, Any]:
    """What identifies a run: the resolved config, flattened, without the ``VOLATILE`` keys and the keys
    whose switch is off (``INERT_UNLESS``); ``ADDED`` keys a record predates count as their old behaviour."""
    flat = with_added(flatten(resolved))
    return {k: v for k, v in flat.items()
            if not _under(k, VOLATILE) and (k not in INERT_UNLESS or flat.get(INERT_UNLESS[k]))}


def config_difference(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every key whose value differs between two resolved configs (volatile keys aside)."""
    return differences(fingerprint(old), fingerprint(new))


def differences(a: dict, b: dict) -> list[str]:
    """``key: a -> b`` for every key whose value differs between two flat configs, in key order."""
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k, "(absent)") != b.get(k, "(absent)")]


# What may differ between a tuning trial and a run that uses its result: the values tuned (lam.*, and a
# pairing's knobs), the seeds, where the values came from, and the evaluations after training (a trial
# never reads the test set; no eval.* key changes the validation split, which lives under data.*).
# what a tuning trial and a run using its result may differ in: the arm's own keys, the seed, what is evaluated
# and how often (validation and test evaluations read the model; they do not change its training)
TUNING_FREE = ("lam", "pairing", "seed", "tuned", "tuned_transfer", "eval", "hydra", "trainer.val_every",
               "trainer.test_every")


def tuning_settings(resolved: dict) -> dict[str, Any]:
    """The settings a tuning result depends on: the run's ``fingerprint`` less ``TUNING_FREE``. A
    ``tuned.yaml`` applies as it is only to a run under the same ones (``apply_tuned``)."""
    return {k: v for k, v in fingerprint(resolved).items() if not _under(k, TUNING_FREE)}


FIRST_IN_JOB_DIR = ("lambda", "lam", "pairing", "mixer", "seed")  # what tells a sweep's jobs apart, first


def job_dir(overrides: Any) -> str:
    """A sweep job's folder name from its overrides, so that a job's folder is keyed by what it runs,
    not by its position in the job list: ``lambda=beta,seed=0,data=digits``. Volatile keys are left
    out; the λ policy, pairing, mixer and seed come first, the rest in alphabetical order (so the
    order on the command line does not matter); a ``/`` in a value becomes ``%2F``; a name over 120
    characters keeps its first 80 and a hash of the whole. Used as Hydra's
    ``hydra.sweep.subdir: ${mixlab.job_dir:${hydra.overrides.task}}``."""
    def key(o: str) -> str:
        return o.lstrip("+~").split("=", 1)[0]

    def rank(o: str) -> tuple:
        top = next((i for i, p in enumerate(FIRST_IN_JOB_DIR) if _under(key(o), (p,))), len(FIRST_IN_JOB_DIR))
        return top, o

    kept = sorted((o for o in map(str, overrides or []) if not _under(key(o), VOLATILE)), key=rank)
    name = ",".join(kept).replace("/", "%2F") or "default"
    if len(name) > 120:
        name = f"{name[:80]}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name


if not OmegaConf.has_resolver("mixlab.job_dir"):
    OmegaConf.register_new_resolver("mixlab.job_dir", job_dir)
