"""The command line around Hydra: user errors in one line, the command that resumes, mixlab's ``--help``.

``check_args`` reads the command line before Hydra does. A misspelled config group option
(``lambda=distnace``) or key (``lam.temprature=0.5``) is reported as one line naming it, with the
closest valid names, and exit status 2, the way ``mixlab.run.config.validate`` reports a bad value;
Hydra's own messages for these are several lines and exit 1. Whatever it accepts goes to Hydra unchanged.

After SIGINT/SIGTERM, ``interrupted`` prints the command that resumes the run: with the default
timestamped run folder, the same command would start from scratch in a new folder.

``--help`` is Hydra's, with the template in ``conf/config.yaml``; its list of group options comes
from the ``mixlab.help_groups`` resolver, which reads each option's YAML file at run time.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import io
import json
import os
import re
import shlex
import shutil
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override, OverrideType
from hydra.errors import OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

USAGE = 2  # exit status of a user error, as for a bad value (``mixlab: error: ...``)
EXIT = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal number, as a shell reports a process killed by it


class UsageError(ValueError):
    """A command-line mistake; the message is one line naming the override."""


# ----------------------------------------------------------------------------- the config folders

def _roots(entries: Iterable[str]) -> list[Any]:
    """The folders (``Path`` or package ``Traversable``) of search-path entries such as ``file://dir``,
    ``pkg://module`` or a plain path; other schemes (``structured://``) hold no files."""
    out = []
    for entry in entries:
        scheme, _, path = entry.rpartition("://")
        if scheme in ("", "file"):
            out.append(Path(path))
        elif scheme == "pkg":
            with contextlib.suppress(ImportError, TypeError):
                out.append(resources.files(path.replace("/", ".")))
    return out


def group_options(roots: list[Any], group: str) -> dict[str, Any]:
    """Each option of ``group`` (a YAML file in its folder under any root) -> its file. The first
    root that has an option wins, as in Hydra's search path."""
    found: dict[str, Any] = {}
    for root in roots:
        folder = root.joinpath(*group.split("/"))
        if folder.is_dir():
            for f in sorted(folder.iterdir(), key=lambda f: f.name):
                if f.name.endswith(".yaml") and f.is_file():
                    found.setdefault(f.name[:-5], f)
    return found


def groups(roots: list[Any]) -> list[str]:
    """The top-level config groups (folders holding YAML files), Hydra's own ``hydra/`` aside."""
    names = {d.name for r in roots if r.is_dir() for d in r.iterdir() if d.is_dir() and d.name != "hydra"}
    return sorted(n for n in names if group_options(roots, n))


def describe(text: str) -> str:
    """An option's description: the first sentence of the comment block at the top of its YAML file
    (``# @package`` aside), its lines joined, never cut inside the sentence; else its keys and default values."""
    block = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#") and not re.match(r"#\s*@package\b", s):
            block.append(s.lstrip("#").strip())
        elif s.startswith("#") and not block:
            continue
        else:
            break
    if block:
        joined = " ".join(b for b in block if b)
        return re.split(r"(?<=[.!?])\s+(?=[A-Z])", joined, maxsplit=1)[0]
    values = OmegaConf.to_container(OmegaConf.create(text or "{}"))
    return " ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()
                    if k not in ("name", "defaults"))


def _package(text: str, group: str) -> str:
    """Where an option's keys land: its ``# @package`` header, else the group's path."""
    m = re.search(r"^#\s*@package\s+(\S+)", text, re.M)
    package = m.group(1) if m else "_group_"
    return group.replace("/", ".") if package == "_group_" else package


# ----------------------------------------------------------------------------- checking the overrides

def _hydra_args(argv: list[str]) -> Any | None:
    """``argv`` as Hydra's own argument parser reads it; None where it rejects the flags (Hydra then
    reports them itself) or where ``--version`` would print and exit."""
    from hydra._internal.utils import get_args_parser  # the parser hydra.main uses

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return get_args_parser().parse_args(argv)
        except SystemExit:
            return None


def _values(o: Override, options: dict[str, Any]) -> list[str | None]:
    """A group override's option names: each value of a sweep, the options a ``glob(...)`` matches."""
    value = o.value()
    if isinstance(value, Glob):
        return value.filter(sorted(options))
    if o.is_sweep_override():
        return list(o.sweep_string_iterator())
    return [None if value is None else o.get_value_element_as_str()]


def _keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a plain dict, its nodes and its leaves (list items are not listed)."""
    out: list[str] = []
    for k, v in (node.items() if isinstance(node, dict) else ()):
        out += [f"{prefix}{k}", *_keys(v, f"{prefix}{k}.")]
    return out


def _near(word: str, names: Iterable[str], contains: bool = False) -> list[str]:
    """Up to three names close to ``word``, those nearly as close as the closest; a parent of ``word``
    aside (``trainer`` is no fix for ``trainer.epoch``). With ``contains``, a name holding ``word`` whole
    counts as close as any (``mnist``: ``fashion_mnist`` as well as ``rcf_mnist``)."""
    scored = sorted(((1.0 if contains and len(word) >= 3 and word in n else difflib.SequenceMatcher(None, word, n).ratio(), n)
                     for n in names if not word.startswith(n + ".")), key=lambda t: -t[0])
    best = scored[0][0] if scored else 0.0
    return [n for r, n in scored[:3] if r >= max(0.6, best - 0.1)]


def _short(text: str, most: int = 60) -> str:
    """``text`` up to its first colon or semicolon, at most ``most`` characters (cut at a word, with …)."""
    text = re.split(r"[:;]\s| \(", text, maxsplit=1)[0].rstrip(".")
    return text if len(text) <= most else text[:most].rsplit(" ", 1)[0] + " …"


def _did_you_mean(near: list[str], sep: str = "; ") -> str:
    return f"{sep}did you mean {' or '.join(near)}?" if near else ""


def check_args(argv: list[str], conf_dir: str, config_name: str = "config") -> None:
    """Raise ``UsageError`` for the first group override naming no option of its group (every value
    of a sweep is checked) or key override naming no key of the config composed with the command's
    group choices (a sweep's first value). ``+key=`` adds and ``++key=`` are allowed; ``~key``
    must exist. ``hydra.*`` and ``hydra/...`` overrides are Hydra's to check. Option files are looked
    up in ``conf_dir``, ``--config-dir`` and ``hydra.searchpath``. Costs one compose."""
    args = _hydra_args(argv)
    if args is None or args.shell_completion or args.experimental_rerun or args.config_path:
        return  # no overrides to check, or a primary config elsewhere: Hydra's to handle
    config_name = args.config_name or config_name
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except OverrideParseException as e:
        raise UsageError(f"{e.override}: {e.message.splitlines()[0]}; see "
                         f"https://hydra.cc/docs/advanced/override_grammar/basic/") from None
    extra = _searchpath(overrides, args.config_dir, Path(conf_dir) / f"{config_name}.yaml")
    if extra is None:
        return  # a malformed hydra.searchpath: Hydra says so
    roots = _roots([conf_dir, *extra])
    user = [o for o in overrides if not re.match(r"hydra($|[./])", o.key_or_group)]
    chosen = [choice for o in user if group_options(roots, o.key_or_group) for choice in _check_group(o, roots)]
    keyed = [o for o in user if not group_options(roots, o.key_or_group) and o.type != OverrideType.FORCE_ADD]
    if not keyed:
        return
    try:
        with warnings.catch_warnings(), initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
            warnings.simplefilter("ignore")  # Hydra warns again itself, once
            sp = [f"hydra.searchpath=[{','.join(json.dumps(p) for p in extra)}]"] if extra else []
            cfg = compose(config_name=config_name, overrides=[*chosen, *sp], return_hydra_config=True)
    except Exception:  # noqa: BLE001 - a composition error is Hydra's to report, in its words
        return
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra")
    known, added = set(_keys(plain)), set()
    for o in keyed:
        key = o.key_or_group
        if o.type == OverrideType.ADD:
            added.add(key)
        elif not (key in known or any(key == a or key.startswith(a + ".") for a in added)
                  or OmegaConf.select(cfg, key, default=UsageError, throw_on_resolution_failure=False)
                  is not UsageError):  # list items (``optim.betas.0``)
            raise UsageError(_no_such_key(key, known, cfg, roots))


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def check_jobs(argv: list[str], conf_dir: str, config_name: str = "config") -> bool:
    """Raise ``UsageError`` for the first job of the command whose configuration ``train.check`` refuses
    (a bad value, an unknown option of a component, a missing ``tuned=`` file), before anything is
    written: a single run's config, or every job of a sweep (``-m``, or an experiment that sets
    ``hydra.mode: MULTIRUN``; the job list as Hydra's basic sweeper makes it, ``hydra.sweeper.params``
    included). Returns whether the command is a sweep. Each distinct set of group choices is composed
    once (about 0.1 s); the jobs' key overrides are applied to a copy of it. Other sweepers (a search
    that draws its own values) are left to check each job as it starts."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    from .config import ConfigError, apply_strength, apply_tuned
    from .train import check

    args = _hydra_args(argv)
    if args is None or args.help or args.hydra_help or args.cfg or args.info or args.shell_completion \
            or args.experimental_rerun or args.config_path:
        return bool(args is not None and args.multirun)
    config_name = args.config_name or config_name
    parser = OverridesParser.create()
    try:
        overrides = parser.parse_overrides(args.overrides)
    except OverrideParseException:
        return bool(args.multirun)  # check_args has said so already; Hydra's to report otherwise
    extra = _searchpath(overrides, args.config_dir, Path(conf_dir) / f"{config_name}.yaml") or []
    roots = _roots([conf_dir, *extra])
    sp = [f"hydra.searchpath=[{','.join(json.dumps(p) for p in extra)}]"] if extra else []
    composed: dict[tuple[str, ...], DictConfig] = {}

    def compose_groups(groups_: list[str], hydra_too: bool = False) -> DictConfig | None:
        key = (*groups_, str(hydra_too))
        if key not in composed:
            try:
                with warnings.catch_warnings(), initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
                    warnings.simplefilter("ignore")
                    composed[key] = compose(config_name=config_name, overrides=[*groups_, *sp],
                                            return_hydra_config=hydra_too)
            except Exception:  # noqa: BLE001 - a composition error is Hydra's to report, in its words
                composed[key] = None
        return composed[key]

    def is_group(o: Override) -> bool:
        return bool(group_options(roots, o.key_or_group)) or re.match(r"hydra/", o.key_or_group) is not None

    fixed = [o for o in overrides if not o.is_sweep_override()]
    base = compose_groups([o.input_line for o in fixed if is_group(o) or o.key_or_group.startswith("hydra.")], True)
    if base is None:
        return bool(args.multirun)
    multirun = bool(args.multirun) or base.hydra.mode == RunMode.MULTIRUN
    if multirun:
        if OmegaConf.select(base, "hydra.sweeper._target_") != BASIC_SWEEPER:
            return True
        params = base.hydra.sweeper.get("params") or {}
        every = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + list(args.overrides))
        jobs = [parser.parse_overrides(job) for job in BasicSweeper.split_arguments(every, None)[0]]
    else:
        jobs = [overrides]
    for i, job in enumerate(jobs):
        user = [o for o in job if not re.match(r"hydra($|[./])", o.key_or_group)]
        cfg = compose_groups([o.input_line for o in user if is_group(o)], True)
        if cfg is None:
            return multirun
        cfg = copy.deepcopy(cfg)
        where = f" (job {i + 1} of {len(jobs)}: {' '.join(o.input_line for o in user)}; no job was started)" \
            if multirun else ""
        try:
            for o in user:
                if not is_group(o):
                    ConfigLoaderImpl._apply_overrides_to_config([o], cfg)
        except Exception:  # noqa: BLE001 - a key this job's choices do not have (a sweep of lambda= with lam.alpha=)
            known = {k for k in _keys(OmegaConf.to_container(cfg, resolve=False)) if not k.startswith("hydra")}
            raise UsageError(_no_such_key(o.key_or_group, known, cfg, roots) + where) from None
        try:
            apply_tuned(cfg)
            apply_strength(cfg)
            check(cfg)
        except ConfigError as e:
            raise UsageError(f"{e}{where}") from None
    return multirun


def keep_earlier_launch(argv: list[str], conf_dir: str) -> None:
    """A sweep launched into a folder that already holds another launch's ``multirun.yaml`` (Hydra
    rewrites it at every launch) keeps that one as ``multirun.<n>.yaml``; a re-launch of the same
    command (a resume) changes nothing worth keeping."""
    args = _hydra_args(argv)
    if args is None:
        return
    try:
        given = [o for o in OverridesParser.create().parse_overrides(args.overrides)
                 if o.key_or_group == "hydra.sweep.dir"]
    except OverrideParseException:
        return
    if not given or "${" in str(given[-1].value()):
        return  # the default folder is new for every launch (a timestamp)
    folder = Path(str(given[-1].value()))
    old = folder / "multirun.yaml"
    if not old.is_file():
        return
    try:
        before = OmegaConf.select(OmegaConf.load(old), "hydra.overrides.task") or []
    except Exception:  # noqa: BLE001 - an unreadable record is kept as it is
        before = None
    mine = [o.input_line for o in OverridesParser.create().parse_overrides(args.overrides)
            if not re.match(r"hydra($|[./])", o.key_or_group)]
    if before is not None and sorted(map(str, before)) == sorted(mine):
        return
    n = 1
    while (folder / f"multirun.{n}.yaml").exists():
        n += 1
    os.replace(old, folder / f"multirun.{n}.yaml")


def _searchpath(overrides: list[Override], config_dir: str | None, primary: Path) -> list[str] | None:
    """The search-path entries besides the config folder, as Hydra takes them: ``hydra.searchpath``
    from the command line (else from the primary config), then ``--config-dir``. None if malformed."""
    paths = next((o.value() for o in overrides if o.key_or_group == "hydra.searchpath"), None)
    if paths is None and primary.is_file():
        paths = OmegaConf.select(OmegaConf.load(primary), "hydra.searchpath")
    paths = [] if paths is None else paths
    if not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
        return None
    return [*paths, *([f"file://{os.path.abspath(config_dir)}"] if config_dir else [])]


def _check_group(o: Override, roots: list[Any]) -> list[str]:
    """Raise ``UsageError`` if a value of the group override ``o`` names no option; else return
    the override to compose with (its first value), if any."""
    group, options = o.key_or_group, group_options(roots, o.key_or_group)
    values = _values(o, options)
    for v in values:
        if v is not None and v not in options and not any(  # an option in a subfolder: group=sub/name
                r.joinpath(*group.split("/"), f"{v}.yaml").is_file() for r in roots):
            near = _near(v, options, contains=group == "data")
            own = ""
            if group == "data":  # each near data set with what it is (mnist: fashion_mnist images, rcf_mnist regression)
                near = [f"{n} ({_short(describe(options[n].read_text()))})" for n in near]
                own = " A data set of your own: README, 'Your own data'."
            # "Available options" as in Hydra's own message, which scripts may look for
            raise UsageError(f"{group}={v}: no such option{_did_you_mean(near) or ';'} "
                             f"Available options: {', '.join(sorted(options))}.{own}")
    if not values or (o.type == OverrideType.DEL and values[0] is None):
        return []
    prefix = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++", OverrideType.DEL: "~"}.get(o.type, "")
    return [f"{prefix}{group}={'null' if values[0] is None else values[0]}"]


def _no_such_key(key: str, known: set[str], cfg: DictConfig, roots: list[Any]) -> str:
    """``lam.temprature: no such key for lambda=distance; did you mean lam.temperature?``. Where the
    key's node is a group's (``lam`` is lambda's), the other options of that group are searched too."""
    node, _, rest = key.partition(".")
    for group, choice in cfg.hydra.runtime.choices.items():
        options = group_options(roots, group) if choice is not None and not re.match(r"hydra($|/)", group) else {}
        if choice not in options:
            continue
        package = _package(options[choice].read_text(), group)
        if node not in (group, package):
            continue
        have: dict[str, list[str]] = {}  # each key of the group's options -> the options that have it
        for name, f in options.items():
            for k in _keys(OmegaConf.to_container(OmegaConf.create(f.read_text()))):
                have.setdefault(f"{package}.{k}", []).append(f"{group}={name}")
        if node != package:  # lambda.alpha: the group's options land elsewhere (lambda's at lam)
            if f"{package}.{rest}" in known | have.keys():
                return f"{key}: no such key; did you mean {package}.{rest}? ({group} options land at {package})"
            continue
        if key in have:
            return f"{key}: no such key for {group}={choice}; {' and '.join(have[key])} " \
                   f"{'has' if len(have[key]) == 1 else 'have'} it"
        near = _near(key, known) or [f"{k} ({', '.join(have[k])})" for k in _near(key, have)]
        return f"{key}: no such key for {group}={choice}{_did_you_mean(near)}"
    return f"{key}: no such key{_did_you_mean(_near(key, known | set(groups(roots))))}"


# ----------------------------------------------------------------------------- interrupted runs

def signal_of(e: BaseException) -> str | None:
    """SIGINT or SIGTERM for train's ``Interrupted`` (its ``signal``) or a
    ``KeyboardInterrupt`` (a second Ctrl-C); None for a signal sent to another process."""
    if isinstance(e, KeyboardInterrupt):
        return "SIGINT"
    name = getattr(e, "signal", None)
    return name if name in EXIT else None


def _interpreter() -> str:
    """This Python as the user would type it: its name where PATH finds that name, else its path."""
    name = os.path.basename(sys.executable)
    return name if shutil.which(name) else sys.executable


def _hydra_value(path: str) -> str:
    """``path`` as a Hydra override value: quoted where it holds characters the grammar reads (``,`` sweeps)."""
    if re.fullmatch(r"[\w/.\-+@%:]+", path):
        return path
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def resume_command(argv: list[str], folder: str, multirun: bool) -> str:
    """The shell command that resumes a run (a sweep): ``argv`` with ``hydra.run.dir``
    (``hydra.sweep.dir``) set to ``folder``, replacing the value given before, if any.
    Under torchrun it is torchrun with as many processes (last.pt resumes only with as many)."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    rel = os.path.relpath(folder)
    folder = folder if rel.startswith("..") else rel
    kept = [a for a in argv if a.lstrip("+").split("=", 1)[0] != key]
    if "hydra/sweeper=study" in kept:  # a study: the command its user typed
        rest = [a for a in kept if a not in ("-m", "--multirun", "hydra/sweeper=study")]
        return shlex.join([_interpreter(), "-m", "mixlab.study", folder, *rest])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = ["torchrun", "--standalone", f"--nproc_per_node={world}"] if world > 1 else [_interpreter()]
    return shlex.join([*launcher, "-m", "mixlab", *kept, f"{key}={_hydra_value(folder)}"])


def interrupted(e: BaseException, folder: str, multirun: bool, resumable: bool = True) -> int:
    """Report a stop by SIGINT/SIGTERM and the command that resumes it (``resumable``: where the folder
    is known); return the exit status (130 for SIGINT, 143 for SIGTERM, as a shell reports a process
    those signals killed)."""
    name = signal_of(e)
    # train's message ends in "re-run the same command to resume": not so with a timestamped run folder
    what = str(e).split("; re-run the same command")[0] if not isinstance(e, KeyboardInterrupt) \
        else "SIGINT (a second Ctrl-C: stopped at once)"
    print(f"mixlab: interrupted: {what}", file=sys.stderr)
    if resumable and int(os.environ.get("RANK", "0")) == 0:
        print(f"mixlab: to resume from the last finished epoch: {resume_command(sys.argv[1:], folder, multirun)}",
              file=sys.stderr)
    return EXIT.get(name, 143)  # another process signalled: most likely a pre-emption (SIGTERM)


# ----------------------------------------------------------------------------- --help

def help_groups(*, _root_: DictConfig) -> str:
    """The group section of ``--help`` (``${mixlab.help_groups:}`` in ``hydra.help.template``): each
    group, each option with its one-line description, ``*`` at this command's choice. Read from the
    files in the run's config search path, so an option added there (or in a user config folder)
    shows up by itself."""
    runtime = _root_.hydra.runtime
    roots = _roots(f"{s.schema}://{s.path}" for s in runtime.config_sources)
    lines = []
    for group in groups(roots):
        options = group_options(roots, group)
        lines.append(f"{group}:")
        width = max(map(len, options))
        for name, f in sorted(options.items()):
            mark = "*" if runtime.choices.get(group) == name else " "
            lines += _wrapped(f"  {name:<{width}} {mark} ", describe(f.read_text()))
    return "\n".join(lines).replace("$", "$$")  # Hydra fills the template with string.Template


def _wrapped(head: str, text: str, width: int = 110) -> list[str]:
    """``head`` then ``text`` wrapped at ``width``, the next lines indented under the text."""
    import textwrap

    return textwrap.wrap(text, width, initial_indent=head, subsequent_indent=" " * len(head),
                         break_on_hyphens=False) or [head.rstrip()]


def help_keys(*, _root_: DictConfig) -> str:
    """The ``--help`` section of every checked key and the values it takes (``config.RULES``, what
    ``validate`` holds a value to), in the config's order."""
    from .config import RULES

    width = max(map(len, RULES))
    lines = [line for key, (allowed, _) in RULES.items() for line in _wrapped(f"  {key:<{width}}  ", allowed)]
    return "\n".join(lines).replace("$", "$$")


for _name, _fn in (("mixlab.help_groups", help_groups), ("mixlab.help_keys", help_keys)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
