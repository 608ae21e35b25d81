"""The declared types and ranges of train.py's config, checked once before a job does anything.

Each entry of SCHEMA is one key: a new key is one more line. Keys the schema does not name are
left to the code that reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ichseg.data.phantom import LAYOUTS
from ichseg.data.phantom import MAX_SIZE as PHANTOM_MAX_SIZE
from ichseg.data.phantom import MIN_SIZE as PHANTOM_MIN_SIZE
from ichseg.errors import IchsegError
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


def _bound(value: float) -> str:
    """A bound as written: 4294967295 in full, 0.5 as itself."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Rule:
    """What one key may hold: a type, bounds (`gt`/`ge`/`lt`/`le`), a set of choices, or null;
    `also` names values outside the bounds that mean something else (-1: no limit)."""

    kind: type
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple | None = None
    nullable: bool = False
    also: tuple[tuple[object, str], ...] = ()

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
            if not isinstance(value, int | float) or not math.isfinite(value):
                return False
        elif not isinstance(value, self.kind):
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

SCHEMA: dict[str, Rule] = {
    "fold": Rule(int, ge=0),
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
    "phantom.layout": Rule(str, choices=tuple(LAYOUTS)),
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
        detail = str(exc).splitlines()[0]
        raise IchsegError(f"{key}: cannot be resolved ({detail})") from None


def check_value(key: str, value: object, rule: Rule) -> None:
    """Raise one line naming the key, the value and what it may be, unless `rule` accepts it."""
    if not rule.accepts(value):
        raise IchsegError(f"{key}={value!r} is not allowed: expected {rule.allowed()}")


def validate(cfg: DictConfig) -> None:
    """Check every declared key of the composed config, then the rules that tie keys together."""
    for key, rule in SCHEMA.items():
        present, value = _lookup(cfg, key)
        if present:
            check_value(key, value, rule)
    present, n_folds = _lookup(cfg, "data.n_folds")
    if present and not 0 <= cfg.fold < n_folds:
        raise IchsegError(
            f"fold={cfg.fold} is out of range: expected an integer 0..{n_folds - 1} "
            f"(data.n_folds={n_folds})"
        )
    # torch loads only for a config whose values passed: a refusal answers without it.
    from ichseg.nets import NET_KEY, build_on_meta, check_input_size

    present, size = _lookup(cfg, "data.size")
    net_present, net = _lookup(cfg, NET_KEY)
    if present and net_present:
        # Built on the meta device: its input-size rule is asked of it, at no cost.
        check_input_size(build_on_meta(net), size)
