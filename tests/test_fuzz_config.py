"""Bad configuration never reaches training: every leaf key of every config option, fuzzed.

Each option of each group is composed in turn (``lambda=distance``, ``model=wrn``, ...) on the
small digits setup, and its leaf keys (all but ``name``) become targets, with the keys outside
the option groups (``seed``, ``trainer.*``, ``data.*``) once. ``SPEC`` says what each key
accepts; hypothesis throws values it does not accept: wrong types (strings, booleans, lists,
null where it is not allowed, floats for integers), NaN, +-inf, 10**400, numbers just and far
outside the range, unknown or mis-cased choice names, lists with a bad element or of the wrong
length. Each goes the way training goes, ``validate(cfg)`` then ``build(cfg)``, and must stop
there with a ``ConfigError`` of one line, ``<key>=<value>: ... expected ...``; two random ones go
through ``python -m mixlab`` and must print exactly that one line on stderr and exit 2.

Coverage (``test_every_leaf_key_is_fuzzed`` prints it, and fails on a leaf key no target covers): the
(option, key) targets, the distinct keys, ``EXAMPLES`` invalid values each, plus 2 through the CLI.
That every option's valid defaults build is ``tests/test_config.py``'s
``test_every_option_of_every_group_builds``.
"""
from __future__ import annotations

import atexit
import functools
import math
import re
import shutil
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from mixlab.run.config import ConfigError, validate
from mixlab.data import DATASETS
from mixlab.engine.pairing import METRICS, SPACES
from mixlab.run.train import build

from .test_config import (CONF, DETECTION_OPTIONS, GROUPS, KEY, TEXT_OPTIONS, TINY, compose_cfg, options_of, run_cli,
                          coco_base, scenes_base, text_base)

EXAMPLES = 15  # invalid values per target; ~1100 builds in all keeps the file under a minute


# --------------------------------------------------------------------------- what each key accepts
@dataclass(frozen=True)
class Spec:
    kind: type  # int, float, bool, str or list
    lo: float | None = None  # numbers: lo <= v <= hi, with "lo"/"hi" in ``open`` for a strict bound
    hi: float | None = None
    open: str = ""
    strings: str | None = None  # regex of the valid strings; None: no string is valid
    null: bool = False  # null is valid
    item: Spec | None = None  # a list's elements
    extra: tuple = ()  # more invalid values: a depth that does not fit, a list of the wrong length


def number(lo: float | None = None, hi: float | None = None, open: str = "", **kw: Any) -> Spec:
    return Spec(float, lo, hi, open, **kw)


def integer(lo: int | None = None, hi: int | None = None, **kw: Any) -> Spec:
    return Spec(int, lo, hi, **kw)


def choice(*names: str) -> Spec:
    return Spec(str, strings="|".join(map(re.escape, names)))


def list_of(item: Spec, **kw: Any) -> Spec:
    return Spec(list, item=item, **kw)


BOOL, AUTO_BOOL = Spec(bool), Spec(bool, strings="auto")
STRING, STRING_OR_NULL = Spec(str, strings=".*"), Spec(str, strings=".*", null=True)

SPEC: dict[str, Spec] = {
    "seed": integer(0, 2**63 - 1),
    "device": Spec(str, strings=r"auto|cpu|cuda(:\d+)?"),
    "plugins": list_of(STRING),
    "tuned": STRING_OR_NULL,
    "tuned_transfer": BOOL,
    "study.reference": Spec(str, strings=".+"),
    "study.metric": choice("test_acc", "test_nll", "test_ece", "test_brier", "test_mse", "test_mae", "test_nll_ts",
                           "test_ece_ts", "median_last10_acc", "test_map", "test_map50", "test_map75"),
    "study.matched": choice("primary", "exploratory"),
    "study.arms": list_of(Spec(str, strings=r"\w+(\+\w+)?(@\w+)?")),
    "study.trials": integer(1),
    "study.tuning_seeds": list_of(integer(0), extra=([], [1, 1])),
    "study.eval_seeds": list_of(integer(0), extra=([], [100, 100])),
    "study.sampler": choice("random", "tpe"),
    "study.search_seed": integer(0),
    "study.storage": Spec(str, strings=r"(?s)(.*://.*|journal:.+)", null=True),
    "study.go": choice("reference_beats_none", "always"),
    "study.controls": Spec(dict, null=True, extra=({"schedule": ["later"]}, {"schedule": "strength"},
                                                   {"beta": ["stop_late", "stop_late"]})),
    "study.arm_overrides": Spec(dict, null=True, extra=({"beta": "mixer.cells=2"}, {"beta": ["cells=2"]},
                                                        {"beta": ["mixer.cells"]}, {"beta": [2]})),
    "study.stop_late_at": number(0, 1, open="lohi"),
    "study.stale_after_s": number(10, null=True),
    "trainer.mix_until": number(0, 1, open="lo"),
    "trainer.reverse_time": BOOL,
    "eval.test": BOOL,
    "trainer.streams": choice("separate", "shared"),
    "data.val_size": integer(0),
    "data.split_seed": integer(0, 2**63 - 1),
    "data.subset_per_seed": BOOL,
    "trainer.val_every": integer(0),
    "eval.ood": Spec(str, strings="digits", null=True),
    "eval.corruptions": BOOL,
    "eval.corruption_samples": integer(1, null=True),
    "eval.corruption_form": choice("auto", "mnist_c", "cifar10_c", "imagenet_c", "v1"),
    "trainer.test_every": integer(0),  # names that do not import fail too, one line (tests/test_readme.py)
    "smoothing": number(0, 1, open="hi"),
    "trainer.epochs": integer(1),
    "trainer.amp": AUTO_BOOL,
    "trainer.channels_last": AUTO_BOOL,
    "trainer.compile": BOOL,
    "trainer.log_every": integer(1),
    "trainer.progress": BOOL,
    "trainer.pairing_scope": choice("local", "global"),
    "trainer.features": choice("forward", "cache"),
    "data.root": STRING_OR_NULL,
    "data.download": BOOL,
    "data.batch_size": integer(1),
    "data.train_subset": integer(1, 1437, null=True),  # digits has 1437 training examples
    "data.crop_padding": integer(0, 8),  # at most the side of digits' 8x8 images
    "data.hflip": BOOL,
    "model.hidden": list_of(integer(1, 65536), extra=([],)),
    "model.dim": integer(1, 1024),
    "model.filters": integer(1, 65536),
    "model.widths": list_of(integer(1, 32), extra=([],)),
    "model.layers": integer(1, 1000),
    "model.heads": integer(1, 1024, extra=(3, 5, 7, 96)),  # transformer's dim (128) must be a multiple
    "model.ff": integer(1, 65536),
    "model.mask_mix": choice("soft", "union"),
    "data.seq_len": integer(8, 100_000),
    "data.canvas": integer(64, 1024),
    "data.max_objects": integer(1, 50),
    "data.train_scenes": integer(1),
    "data.test_scenes": integer(1),
    "data.held_out_objects": integer(1, 59_999),
    "data.channels": integer(1, 3, extra=(2,)),
    "data.train_annotations": Spec(str, strings=".+"),
    "data.train_images": Spec(str, strings=".+"),
    "data.test_annotations": Spec(str, strings=".+"),
    "data.test_images": Spec(str, strings=".+"),
    "model.backbone": choice("small", "resnet18"),
    "model.channels": integer(32, 4096, extra=(33, 48, 100, 4064 + 1)),  # multiples of 32
    "model.head_convs": integer(1, 16),
    "model.pretrained": Spec(bool, extra=(True,)),  # true needs backbone=resnet18 (small has no weights)
    "model.score_thresh": number(0, 1),
    "model.detections_per_img": integer(1, 100_000),
    "data.vocab_size": integer(3, 10_000_000),
    "model.dropout": number(0, 1, open="hi"),
    "model.width": integer(1, 1024),
    "model.depth": integer(10, 1000, extra=(11, 15, 20, 30, 998)),  # (depth - 4) % 6 != 0
    "model.widen": integer(1, 64),
    "pairing.metric": choice(*METRICS),
    "pairing.space": choice(*SPACES),
    "pairing.solver": choice("auto", "exact", "sinkhorn"),
    "pairing.per_sample": BOOL,
    "pairing.sigma": number(0, open="lo"),
    "pairing.partners": choice("batch", "set"),
    "mixer.decay_power": number(0),
    "mixer.scale": list_of(number(0, 1, open="lo"), null=True, extra=([0.1], [0.1, 0.5, 0.8], [0.8, 0.1], [])),
    "mixer.sigma": number(0, 1),
    "mixer.cells": integer(1, 64),
    "mixer.block_num": list_of(integer(1, 64), extra=([],)),
    "mixer.beta": number(0),
    "mixer.gamma": number(0, 1),  # above 1 the smoothness may not be submodular (the cut would not be exact)
    "mixer.eta": number(0),
    "mixer.neigh_size": integer(1),
    "mixer.transport": Spec(bool, extra=(True,)),  # the transport step is not implemented
    "mixer.stage": integer(0, null=True),  # mixblock: a mix point; one past the model's is refused at attach
    "mixer.lr": number(0, open="lo"),
    "mixer.weight_decay": number(0),
    "mixer.momentum": number(0, 1),
    "mixer.lr_min": number(0, 0.1, null=True),  # at most lr (0.1 by default)
    "mixer.momentum_end": number(0.999, 1, null=True),  # at least momentum (0.999 by default)
    "mixer.momentum_from": number(0, 1),
    "mixer.lam_loss": number(0),
    "mixer.lam_loss_margin": number(0, 1, open="hi"),
    "mixer.mixup_margin": number(0, 0.5),
    "lam.alpha": number(0.01, 1000),
    "lam.alpha_start": number(0.01, 1000),
    "lam.alpha_end": number(0.01, 1000),
    "lam.per_sample": BOOL,
    "lam.value": number(0, 1),
    "lam.strength": number(0.01, 0.49, null=True),
    "lam.metric": choice(*METRICS),
    "lam.map": choice("exp", "inverse", "gaussian"),  # loss takes inverse | exp: its gaussian goes untried
    "lam.temperature": number(0, open="lo"),
    "lam.normalize": choice("mean", "median", "none"),
    "lam.space": choice(*SPACES),
    "lam.momentum": number(0, 1, open="hi"),
    "lam.init_loss": number(0, null=True),
    "lam.signal": choice("excess", "ce"),
    "lam.shape": choice("linear", "cosine"),
    "lam.tau_max": number(0, open="lo"),
    "lam.tau_std": number(0, open="lo"),
    "lam.warp": choice("inverse_cdf", "cdf"),
    "optim.lr": number(0, open="lo"),
    "optim.betas": list_of(number(0, 1, open="hi"), extra=([0.9], [0.9, 0.99, 0.999])),
    "optim.momentum": number(0, 1, open="hi", extra=(0, 0.0)),  # sgd's nesterov=true needs momentum > 0
    "optim.nesterov": BOOL,
    "optim.weight_decay": number(0),
    "optim.schedule": choice("cosine", "step", "constant"),
    "optim.warmup_epochs": number(0, 2),  # at most trainer.epochs, 2 in conf/config.yaml
    "optim.milestones": list_of(number(0, 1, open="lohi")),
    "optim.gamma": number(0, 1, open="lo"),
    "logger.project": STRING,
    "logger.entity": STRING_OR_NULL,
    "logger.mode": choice("auto", "online", "offline", "disabled"),
    "logger.tags": list_of(STRING),
    "logger.images": BOOL,
}

# No $ { } ? \ or quotes: those are OmegaConf interpolation, MISSING and Hydra override syntax.
TEXT = st.text(string.ascii_letters + string.digits + " -_./:é", max_size=12)


def invalid(s: Spec) -> st.SearchStrategy:
    """Values ``s`` does not accept; each source below lies wholly outside what it allows."""
    bad: list[st.SearchStrategy] = [] if s.null else [st.none()]
    if s.kind is not bool:
        bad.append(st.booleans())
    if s.kind is not list:
        bad.append(st.lists(st.integers(0, 9), max_size=3))
    if s.kind in (bool, str, list, dict):
        bad.append(st.integers())
    if s.kind is not float:
        bad.append(st.floats())  # an integer key takes no float, not even 2.0
    else:
        bad.append(st.sampled_from([math.nan, math.inf, -math.inf, 10**400]))
    if s.lo is not None:
        bad.append(st.integers(max_value=math.floor(s.lo) if "lo" in s.open else math.ceil(s.lo) - 1))
        if s.kind is float:
            bad.append(st.floats(max_value=s.lo, exclude_max="lo" not in s.open))
    if s.hi is not None:
        bad.append(st.integers(min_value=math.ceil(s.hi) if "hi" in s.open else math.floor(s.hi) + 1))
        if s.kind is float:
            bad.append(st.floats(min_value=s.hi, exclude_min="hi" not in s.open))
    if s.strings != ".*":
        valid = re.compile(s.strings or "(?!)")  # (?!) matches nothing
        names = [w.upper() for w in (s.strings or "").split("|") if w.isidentifier()]  # "COSINE": wrong case
        text = TEXT | st.sampled_from(names) if names else TEXT
        bad.append(text.filter(lambda t: not valid.fullmatch(t)))
    if s.item is not None:
        bad.append(st.lists(invalid(s.item), min_size=1, max_size=3))
    if s.extra:
        bad.append(st.sampled_from(s.extra))
    return st.one_of(bad)


# --------------------------------------------------------------------------- the keys
@functools.cache
def composed(*overrides: str) -> DictConfig:
    return compose_cfg(*overrides)  # composing is the slow part: once per option


MAPPINGS = {"study.controls", "study.arm_overrides"}  # keys whose value is itself a mapping (arm -> controls): one key, fuzzed whole


def leaf_keys(node: dict, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for k, v in node.items():
        if isinstance(v, dict) and prefix + k not in MAPPINGS:
            keys += leaf_keys(v, f"{prefix}{k}.")
        elif k != "name":  # the group option itself: Hydra checks it against the files
            keys.append(prefix + k)
    return keys


def keys_of(overrides: tuple[str, ...]) -> list[str]:
    return leaf_keys(OmegaConf.to_container(composed(*overrides)))


def targets() -> list[tuple[tuple[str, ...], str]]:
    """(overrides, key): each group option's own keys, and the keys outside the groups once.

    Data keys come from digits only: every data option has the same keys, and the others download."""
    nodes = {KEY.get(g, g) for g in GROUPS if g != "data"}
    out = [(TINY, k) for k in keys_of(TINY) if k.split(".")[0] not in nodes]
    for group in sorted(GROUPS.keys() - {"data"}):
        for option in options_of(group):
            if (group, option) in TEXT_OPTIONS:
                overrides = (*TEXT_BASE, f"{group}={option}")
            elif (group, option) in DETECTION_OPTIONS:
                overrides = (*SCENES_BASE, f"{group}={option}")
            else:
                overrides = (*(o for o in TINY if not o.startswith(f"{group}=")), f"{group}={option}")
            out += [(overrides, k) for k in keys_of(overrides) if k.startswith(f"{KEY.get(group, group)}.")]
    # the text data set's own keys, on the synthetic corpus
    text = (*TEXT_BASE, "model=textcnn")
    out += [(text, k) for k in keys_of(text) if k.startswith("data.") and k not in keys_of(TINY)]
    # the detection scenes' own keys, on made-up items
    scenes = (*SCENES_BASE, "model=fcos")
    out += [(scenes, k) for k in keys_of(scenes) if k.startswith("data.") and k not in keys_of(TINY)]
    coco = (*COCO_BASE, "model=fcos")  # data=coco's own keys (its canvas is the scenes' key, fuzzed there)
    out += [(coco, k) for k in keys_of(coco) if k.startswith("data.") and k not in keys_of(TINY) + keys_of(scenes)]
    return out


_CORPUS = tempfile.mkdtemp(prefix="mixlab-fuzz-")
atexit.register(shutil.rmtree, _CORPUS, True)
TEXT_BASE = text_base(Path(_CORPUS))
SCENES_BASE = scenes_base(Path(_CORPUS))
COCO_BASE = coco_base(Path(_CORPUS))


TARGETS = targets()


def yaml_leaf_keys() -> set[str]:
    """Every leaf key the YAML files define, read without Hydra: the floor the targets must reach."""
    root = OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml"))
    keys = set(leaf_keys({k: v for k, v in root.items() if k not in ("defaults", "hydra")}))
    for group in GROUPS:
        for path in (CONF / group).glob("*.yaml"):
            keys |= set(leaf_keys(OmegaConf.to_container(OmegaConf.load(path)), f"{KEY.get(group, group)}."))
    for option in options_of("experiment"):
        keys |= set(keys_of((f"experiment={option}",)))
    return keys


@pytest.fixture(scope="module", autouse=True)
def digits_read_once():
    # Reading and splitting the digits is 3/4 of a build; load_dataset still subsets and normalises.
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(DATASETS._entries, "digits", functools.cache(DATASETS.get("digits")))
        yield


# --------------------------------------------------------------------------- the tests
def test_every_leaf_key_is_fuzzed():
    fuzzed = {key for _, key in TARGETS}
    assert not fuzzed - SPEC.keys(), f"add a SPEC entry for {sorted(fuzzed - SPEC.keys())}"
    assert fuzzed == yaml_leaf_keys()  # the floor: every key some YAML file defines
    print(f"\nconfig fuzz: {len(TARGETS)} (option, key) targets over {len(fuzzed)} keys, {EXAMPLES} invalid "
          f"values each = {len(TARGETS) * EXAMPLES} invalid values")


def assert_one_clean_line(message: str, key: str, value: object) -> None:
    assert "\n" not in message and message.startswith(f"{key}={value!r}:") and "expected" in message, message


@pytest.mark.parametrize("overrides,key", TARGETS, ids=[f"{'base' if o == TINY else o[-1]}-{k}" for o, k in TARGETS])
@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_invalid_value_stops_before_training_with_one_line(overrides, key, data):
    value = data.draw(invalid(SPEC[key]), label=key)
    cfg = composed(*overrides)
    default = OmegaConf.select(cfg, key)
    OmegaConf.update(cfg, key, value, merge=False)
    try:  # set and put back: a deep copy per example would cost a third of the build
        with pytest.raises(ConfigError) as err:
            validate(cfg)
            build(cfg)
    finally:
        OmegaConf.update(cfg, key, default, merge=False)
    assert_one_clean_line(str(err.value), key, value)


def hydra_literal(v: object) -> str:
    """``v`` as a Hydra override value (TEXT has no characters that need escaping)."""
    if v is None or isinstance(v, bool):
        return "null" if v is None else str(v).lower()
    if isinstance(v, str):
        return f"'{v}'"
    if isinstance(v, list):
        return "[" + ",".join(map(hydra_literal, v)) + "]"
    return repr(v)  # ints, and floats: Hydra parses 1e-05, inf, -inf and nan as such


@settings(max_examples=2, deadline=None)
@given(data=st.data())
def test_cli_prints_one_line_and_exits_2(data):
    overrides, key = data.draw(st.sampled_from(TARGETS), label="target")
    value = data.draw(invalid(SPEC[key]), label=key)
    with tempfile.TemporaryDirectory() as tmp:
        r = run_cli(*overrides, f"{key}={hydra_literal(value)}", f"hydra.run.dir={tmp}", cwd=Path(tmp))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"mixlab: error: {key}=") and "Traceback" not in r.stderr, r.stderr
