"""The declared types and ranges of train.py's config: the one place a config value is checked.

Each entry of SCHEMA is one key: a new key is one more line. Keys the schema does not name are
left to the code that reads them. `validate` checks a composed config before a job does anything;
`check_section` and `check_keys` check the same keys for values given in code (`ICHDataModule`,
`BatchAugment`, `make_splits`, ...), with the same line; `check_fold` is the fold's rule, which
depends on `data.n_folds`.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ichseg.errors import IchsegError, first_line
from ichseg.seeds import MAX_SEED

# Inside fp32 matmuls and cuDNN convolutions: "high" and "medium" allow TF32, "highest" does not.
FLOAT32_MATMUL_PRECISIONS = ("highest", "high", "medium")
# "auto" (ichseg's choice per device) and the precision strings Lightning accepts.
PRECISIONS = (
    "auto",
    16,
    32,
    64,
    "32-true",
    "32",
    "64-true",
    "64",
    "16-mixed",
    "16",
    "bf16-mixed",
    "bf16",
    "16-true",
    "bf16-true",
    "transformer-engine",
    "transformer-engine-float16",
)
# The folder layouts the phantom writes, each that of the data source of the same name
# (`ichseg.data.sources.LAYOUT_SOURCES` maps them to the classes that read them).
PHANTOM_LAYOUTS = ("physionet", "instance22", "bhsd", "nnunet_raw")
# In-plane pixels the phantom draws: below 16 the head has no room for a bleed; the CT-ICH
# release is 512², and each slice is drawn as size² float64 arrays (2048²: 32 MiB each).
PHANTOM_MIN_SIZE = 16
PHANTOM_MAX_SIZE = 2048


def _bound(value: float) -> str:
    """A bound as written: 4294967295 in full, 0.5 as itself."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Rule:
    """What one key may hold: a type, bounds (`gt`/`ge`/`lt`/`le`), a set of choices, or null;
    `also` names values outside the bounds that mean something else (-1: no limit); a string's
    `pattern` (a full match) is described by `shape`."""

    kind: type
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    also: tuple[tuple[object, str], ...] = ()
    pattern: str | None = None
    shape: str = ""

    def allowed(self) -> str:
        """The rule as a phrase: 'an integer >= 1', 'one of auto, 32-true', ..."""
        if self.choices is not None:
            # Once each as written: Lightning accepts both 16 and "16", which read the same.
            text = "one of " + ", ".join(dict.fromkeys(str(c) for c in self.choices))
        else:
            text = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[
                self.kind
            ]
            bounds = [
                f"{op} {_bound(value)}"
                for op, value in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
                if value is not None
            ]
            if bounds:
                text += " " + " and ".join(bounds)
            if self.shape:
                text += f" {self.shape}"
        text += "".join(f" or {value} ({meaning})" for value, meaning in self.also)
        return text + (" (or null)" if self.nullable else "")

    def accepts(self, value: object) -> bool:
        """True when `value` has the rule's type and lies within its bounds or choices."""
        if value is None:
            return self.nullable
        if any(value == v and type(value) is type(v) for v, _ in self.also):
            return True
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) != (self.kind is bool):
            return False
        if self.kind is float:
            if not isinstance(value, numbers.Real) or not math.isfinite(value):
                return False
        elif not isinstance(value, numbers.Integral if self.kind is int else self.kind):
            return False
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return False
        checks = (
            (self.gt, lambda b: value > b),
            (self.ge, lambda b: value >= b),
            (self.lt, lambda b: value < b),
            (self.le, lambda b: value <= b),
        )
        return all(bound is None or ok(bound) for bound, ok in checks)


POSITIVE_INT = Rule(int, ge=1)
PROBABILITY = Rule(float, ge=0, le=1)
NON_NEGATIVE = Rule(float, ge=0)
BOOL = Rule(bool)
# What Lightning's seed_everything and numpy both take.
SEED = Rule(int, ge=0, le=MAX_SEED)
# Names that become one folder name (<model>-fold<k>, experiments/<experiment_name>/) and a W&B
# run name: a '/' would nest the job's folder, a leading '.' hide it.
FOLDER_NAME = Rule(
    str,
    pattern=r"[A-Za-z0-9][A-Za-z0-9_+-]*(\.[A-Za-z0-9_+-]+)*",
    shape="of letters, digits, '_', '-', '+' and inner '.' (one folder name)",
)

SCHEMA: dict[str, Rule] = {
    "experiment_name": FOLDER_NAME,
    "model.name": FOLDER_NAME,
    "seed": SEED,
    "checkpoint_every": POSITIVE_INT,
    "last_checkpoint_every_s": NON_NEGATIVE,
    "overlay_count": Rule(int, ge=0),
    "precision": Rule(str, choices=PRECISIONS),
    "float32_matmul_precision": Rule(str, choices=FLOAT32_MATMUL_PRECISIONS),
    "flush_denormal": BOOL,
    "deterministic": BOOL,
    "num_threads": Rule(int, ge=1, nullable=True),
    "phantom.patients": POSITIVE_INT,
    "phantom.size": Rule(int, ge=PHANTOM_MIN_SIZE, le=PHANTOM_MAX_SIZE),
    "phantom.seed": SEED,
    "phantom.layout": Rule(str, choices=PHANTOM_LAYOUTS),
    # The job records a checkpoint at its last epoch: 0 records nothing, -1 never ends.
    "trainer.max_epochs": POSITIVE_INT,
    "trainer.max_steps": Rule(int, ge=1, also=((-1, "no limit"),)),
    "data.size": Rule(int, ge=2),
    "data.window_level": Rule(float),
    "data.window_width": Rule(float, gt=0),
    "data.split": Rule(str, choices=("slice", "patient")),
    "data.seed": SEED,
    "data.n_folds": Rule(int, ge=2),
    "data.test_fraction": Rule(float, gt=0, lt=1),
    "data.batch_size": POSITIVE_INT,
    "data.eval_batch_size": Rule(int, ge=1, nullable=True),
    "data.resident": BOOL,
    "data.allow_non_hu": BOOL,
    "data.source.root": Rule(str),
    "data.augment.rotation_deg": NON_NEGATIVE,
    "data.augment.shift": NON_NEGATIVE,
    "data.augment.shear_deg": Rule(float, ge=0, lt=90),
    "data.augment.zoom": Rule(float, ge=0, lt=1),
    "data.augment.hflip": PROBABILITY,
    "data.augment.fill": Rule(str, choices=("nearest", "constant")),
    "data.intensity": Rule(str, choices=("linear", "viridis_png")),
    "model.width": Rule(float, gt=0),
    "model.module.lr": Rule(float, gt=0),
    # After lr: lr_decay derives from it, so a bad lr is named before the decay it breaks.
    "model.module.optimizer": Rule(str, choices=("keras_adam", "adam")),
    "model.module.adam_eps": Rule(float, gt=0),
    "model.module.lr_decay": NON_NEGATIVE,
    "model.module.weight_decay": NON_NEGATIVE,
    "model.module.threshold": Rule(float, gt=0, lt=1),
    "model.module.smooth": NON_NEGATIVE,
    "model.module.loss_per_sample": BOOL,
    "model.module.min_detection_area": Rule(int, ge=0),
    "model.module.channels_last": BOOL,
    "model.module.compile": BOOL,
}


def _lookup(cfg: DictConfig, key: str) -> tuple[bool, object]:
    """(present, value) of a dotted key, resolved; a key that cannot be resolved is an error."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return False, None
    # Before the membership test, which is false for a mandatory value left unset (???).
    if OmegaConf.is_missing(node, leaf):
        raise IchsegError(f"{key} is required: {key}=VALUE")
    if leaf not in node:
        return False, None
    try:
        return True, node[leaf]
    except OmegaConfBaseException as exc:
        raise _unresolvable(key, exc) from None


# How OmegaConf words a resolver's own exception; the message after it is the resolver's.
_RESOLVER_RAISED = re.compile(r"^\w+ raised while resolving interpolation: ")


def _unresolvable(key: str, exc: OmegaConfBaseException) -> IchsegError:
    """One line naming the key whose value cannot be computed and why (a resolver's own words,
    such as `scale_filters`' width rule, without OmegaConf's wrapping)."""
    return IchsegError(f"{key}: cannot be resolved ({_RESOLVER_RAISED.sub('', first_line(exc))})")


def _hydra_runtime_as_text(value: object) -> object:
    """`value` with every `${hydra:...}` escaped to plain text: only Hydra's runtime knows those
    (the job's folder), and no value a user sets can break them."""
    if isinstance(value, dict):
        return {key: _hydra_runtime_as_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_hydra_runtime_as_text(item) for item in value]
    if isinstance(value, str):
        return re.sub(r"(?<!\\)\$\{hydra:", r"\\${hydra:", value)
    return value


def _resolved(cfg: DictConfig) -> dict:
    """The config (without Hydra's own node) with every interpolation and resolver computed: a
    model's width rule, a derived learning-rate decay, any resolver a config file uses; one line
    naming the first key that cannot be computed."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    tree.pop("hydra", None)
    try:
        return OmegaConf.to_container(OmegaConf.create(_hydra_runtime_as_text(tree)), resolve=True)
    except OmegaConfBaseException as exc:
        raise _unresolvable(getattr(exc, "full_key", None) or "the config", exc) from None


def _select(tree: dict, key: str) -> object:
    """The value at a dotted `key` of a plain nested dict, None where it is absent."""
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _targets(tree: object, prefix: str = "") -> list[tuple[str, str]]:
    """(key, `_target_`) of every node of `tree` that builds an object."""
    found = []
    if isinstance(tree, dict):
        if isinstance(tree.get("_target_"), str):
            found.append((prefix.rstrip("."), tree["_target_"]))
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return found
    for key, item in items:
        found += _targets(item, f"{prefix}{key}.")
    return found


def check_value(key: str, value: object, rule: Rule) -> None:
    """Raise one line naming the key, the value and what it may be, unless `rule` accepts it."""
    if not rule.accepts(value):
        raise IchsegError(f"{key}={value!r} is not allowed: expected {rule.allowed()}")


def check_keys(values: Mapping[str, object]) -> None:
    """Check values code was given (`{"checkpoint_every": 5}`, ...) against the schema's entries
    of the same keys, with the line `validate` gives."""
    for key, value in values.items():
        check_value(key, value, SCHEMA[key])


def check_section(section: str, values: Mapping[str, object]) -> None:
    """Check values an object is built with (`batch_size` of section `data`, ...) against the
    schema's entries `<section>.<name>`, with the line `validate` gives."""
    check_keys({f"{section}.{name}": value for name, value in values.items()})


def check_fold(fold: object, n_folds: int, written: str | None = None) -> None:
    """Raise one line unless `fold` is an integer 0..n_folds-1; `written` is the value as a
    command line wrote it (default: its repr)."""
    shown = repr(fold) if written is None else written
    if isinstance(fold, bool) or not isinstance(fold, numbers.Integral):
        raise IchsegError(f"fold={shown} is not an integer: expected 0..{n_folds - 1}")
    if not 0 <= fold < n_folds:
        raise IchsegError(f"fold={shown} is out of range: expected 0..{n_folds - 1}")


def validate(cfg: DictConfig) -> None:
    """Check every declared key of the composed config, the fold against `data.n_folds`, every
    interpolation, the network (built on the meta device, one probe pass at `data.size`) and
    every other `_target_` (imported)."""
    for key, rule in SCHEMA.items():
        present, value = _lookup(cfg, key)
        if present:
            check_value(key, value, rule)
    (has_fold, fold), (has_n_folds, n_folds) = _lookup(cfg, "fold"), _lookup(cfg, "data.n_folds")
    if has_fold and has_n_folds:
        check_fold(fold, n_folds)
    tree = _resolved(cfg)
    # torch loads only for a config whose values passed: a refusal answers without it.
    from ichseg.config import locate_target
    from ichseg.models.network import NET_KEY, build_on_meta, check_forward, check_input_size

    size, net = _select(tree, "data.size"), _select(tree, NET_KEY)
    if size is not None and net is not None:
        # On the meta device the network's size rule and a forward pass cost nothing.
        meta_net = build_on_meta(net)
        check_input_size(meta_net, size, target=net["_target_"])
        check_forward(meta_net, size, target=net["_target_"])
    # Innermost nodes first: a data source imports in a moment, Lightning's classes in seconds.
    for key, target in sorted(_targets(tree), key=lambda found: -found[0].count(".")):
        if key != NET_KEY:
            locate_target(target, key)
