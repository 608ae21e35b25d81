"""Every bad config value stops train.py with one line before a cache, a W&B run or a job file."""

from __future__ import annotations

import re

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ichseg.config import register_resolvers
from ichseg.config_schema import SCHEMA, validate
from ichseg.errors import IchsegError
from tests.helpers.runs import ROOT, train

CONF = str(ROOT / "conf")

# override -> fragments the one line must hold (key, value, what is allowed)
BAD_VALUES = {
    "checkpoint_every=0": ["checkpoint_every=0", "integer >= 1"],
    "last_checkpoint_every_s=-1": ["last_checkpoint_every_s=-1", "number >= 0"],
    "seed=abc": ["seed='abc'", "an integer"],
    "seed=-1": ["seed=-1", "an integer >= 0 and <= 4294967295"],
    "data.seed=4294967296": ["data.seed=4294967296", "<= 4294967295"],
    "phantom.seed=-1": ["phantom.seed=-1", "an integer >= 0"],
    "phantom.size=4096": ["phantom.size=4096", "an integer >= 16 and <= 2048"],
    "num_threads=-1": ["num_threads=-1", "integer >= 1 (or null)"],
    "model.width=0": ["model.width=0", "number > 0"],
    "model.width=0.01": ["model.width=0.01", "double per level"],
    "model.width=0.3": ["model.width=0.3", "double per level"],
    "model.module.lr=-1": ["model.module.lr=-1", "number > 0"],
    "model.module.threshold=1.5": ["model.module.threshold=1.5", "< 1"],
    "precision=fp7": ["precision='fp7'", "one of auto"],
    "data.n_folds=abc": ["data.n_folds='abc'", "an integer >= 2"],
    "data.size=50": ["data.size=50", "multiple of 16"],
    "fold=3 data.n_folds=3": ["fold=3", "0..2"],
    "trainer.max_epochs=0": ["trainer.max_epochs=0", "integer >= 1"],
    "trainer.max_epochs=-1": ["trainer.max_epochs=-1", "integer >= 1"],
    "data.augment.zoom=1.5": ["data.augment.zoom=1.5", "< 1"],
    "data.augment.hflip=true": ["data.augment.hflip=True", "a number >= 0 and <= 1"],
    "deterministic=maybe": ["deterministic='maybe'", "true or false"],
    # Names that become a folder: a '/' would nest the job's folder, a leading '.' hide it.
    "model.name=a/b": ["model.name='a/b'", "(one folder name)"],
    "experiment_name=.hidden": ["experiment_name='.hidden'", "(one folder name)"],
}


def compose_train(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.slow
@pytest.mark.reliability(entry="python train.py experiment=tiny")
@pytest.mark.parametrize("override", BAD_VALUES, ids=lambda o: o.replace(" ", "+"))
def test_bad_config_value_is_one_line_before_any_work(override, tmp_path, record_behaviour):
    proc = train(["experiment=tiny", "logger=wandb", *override.split()], tmp_path, timeout=120)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), proc.stderr
    for fragment in BAD_VALUES[override]:
        assert fragment in lines[0], lines[0]
    # Nothing was built or opened: no phantom, no cache, no W&B run, no job files.
    assert not (tmp_path / "data").exists()
    jobs = [p for p in (tmp_path / "experiments").rglob("*") if p.parent.name != ".hydra"]
    written = [p.name for p in jobs if p.is_file()]
    assert not [n for n in written if n in ("config.yaml", "job.json")], written
    assert not list(tmp_path.rglob("wandb")), "a W&B run was opened"
    record_behaviour(f"exit 2, no cache or W&B run: {lines[0]}", case=f"config {override}")


def test_a_choice_rule_names_each_choice_once():
    phrase = SCHEMA["precision"].allowed()
    choices = phrase.removeprefix("one of ").split(", ")
    assert choices[0] == "auto" and len(choices) == len(set(choices)), phrase
    assert {"16", "32", "64", "bf16-mixed", "32-true"} <= set(choices)


@pytest.mark.parametrize("experiment", ["paper", "demo", "tiny"])
@pytest.mark.parametrize("model", ["unet", "dunet"])
def test_every_shipped_experiment_passes_the_schema(experiment, model):
    validate(compose_train([f"experiment={experiment}", f"model={model}"]))


def test_every_declared_key_exists_in_the_composed_config():
    cfg = compose_train(["experiment=tiny"])
    missing = [
        key for key in SCHEMA if OmegaConf.select(cfg, key, default="<absent>") == "<absent>"
    ]
    assert missing == []


@pytest.mark.parametrize("width", [0.125, 0.25, 0.5, 1, 2])
def test_widths_that_keep_the_doubling_are_accepted(width):
    validate(compose_train([f"model.width={width}", "model=unet"]))


def test_nan_learning_rate_is_refused():
    with pytest.raises(IchsegError, match=r"model\.module\.lr=nan"):
        validate(compose_train(["model.module.lr=nan"]))


@pytest.mark.reliability(
    case="experiment=demo/tiny with data=physionet", entry="train.py (composed config)"
)
@pytest.mark.parametrize("experiment", ["demo", "tiny", "paper"])
def test_every_experiment_composes_with_a_real_release(experiment, record_behaviour):
    cfg = compose_train([f"experiment={experiment}", "data=physionet", "data.source.root=/x"])
    assert OmegaConf.to_container(cfg.data.source) == {
        "_target_": "ichseg.data.sources.PhysioNet",
        "root": "/x",
    }
    validate(cfg)
    phantom = compose_train([f"experiment={experiment}"]).data.source
    assert phantom.root.endswith(f"phantom-p{phantom.patients}-s{phantom.size}-seed0-physionet")
    record_behaviour(
        f"composes: data.source is PhysioNet(root=/x); the experiment's phantom size "
        f"({phantom.patients} patients, {phantom.size}²) applies only to data=phantom",
        did=f"experiment={experiment} data=physionet data.source.root=/x",
    )


def test_a_real_release_needs_its_root():
    with pytest.raises(IchsegError, match=r"^data\.source\.root is required: data\.source\.root="):
        validate(compose_train(["data=physionet"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("phantom.patients=0", r"phantom\.patients=0 is not allowed: expected an integer >= 1"),
        ("trainer.max_steps=0", r"trainer\.max_steps=0 is not allowed: .* or -1 \(no limit\)"),
        ("trainer.max_steps=-2", r"trainer\.max_steps=-2 is not allowed"),
    ],
)
def test_phantom_size_and_step_limit_are_checked(override, message):
    with pytest.raises(IchsegError, match=message):
        validate(compose_train([override]))
    key = override.split("=")[0]
    fine = {"phantom.patients": "phantom.patients=3", "trainer.max_steps": f"{key}=-1"}
    validate(compose_train([fine[key]]))


MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))
# model.width -> what the one line must say: the schema's range, the width rule every model's
# filters follow (a resolver in its YAML), or the network that cannot be built that wide.
WIDTHS = {
    "0": r"^model\.width=0 is not allowed: expected a number > 0$",
    "-1": r"^model\.width=-1 is not allowed: expected a number > 0$",
    "abc": r"^model\.width='abc' is not allowed: expected a number > 0$",
    "0.3": r": cannot be resolved \(model\.width=0\.3 gives filters \[.*double per level",
    "1e9": r"^model\.module\.net: cannot build \S+ \(",
}


def refused_with_nothing_left(proc, root) -> str:
    """The one line of a refused train.py run whose ICHSEG_ROOT (and cwd) is `root`, after
    checking the exit status and that nothing at all was created there."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), proc.stderr[-3000:]
    assert list(root.rglob("*")) == [], "a refused run left files or folders behind"
    return lines[0].removeprefix("train.py: error: ")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("model", MODELS)
def test_every_models_width_rule_is_one_line(model, width):
    with pytest.raises(IchsegError, match=WIDTHS[width]) as info:
        validate(compose_train(["experiment=tiny", f"model={model}", f"model.width={width}"]))
    assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.reliability(entry="python train.py experiment=tiny")
@pytest.mark.parametrize("run_dir", [None, "mine/run"], ids=["default run folder", "hydra.run.dir"])
@pytest.mark.parametrize("model", MODELS)
def test_a_width_no_network_takes_leaves_nothing(model, run_dir, tmp_path, record_behaviour):
    root = tmp_path / "root"
    root.mkdir()
    args = ["experiment=tiny", f"model={model}", "model.width=0.3"]
    if run_dir:
        args.append(f"hydra.run.dir={root / run_dir}")
    line = refused_with_nothing_left(train(args, root, timeout=120), root)
    assert re.search(WIDTHS["0.3"], line) and line.startswith("model."), line
    record_behaviour(
        f"exit 2, no run folder: {line}",
        case="model.width no network's filters can take",
        did=f"model={model} model.width=0.3" + (" hydra.run.dir=<tmp>/mine/run" if run_dir else ""),
    )


@pytest.mark.slow
@pytest.mark.reliability(
    case="model.width no network's filters can take", entry="python train.py -m"
)
def test_a_sweep_with_a_refused_job_is_refused_before_its_folder(tmp_path, record_behaviour):
    root = tmp_path / "root"
    root.mkdir()
    sweep = root / "experiments" / "s"
    args = ["-m", "experiment=tiny", "model=unet,segresnet", "fold=0,1", "model.width=0.3"]
    line = refused_with_nothing_left(train([*args, f"hydra.sweep.dir={sweep}"], root), root)
    assert line.startswith("experiment=tiny model=unet fold=0 model.width=0.3: model."), line
    assert "model.width=0.3 gives filters" in line
    record_behaviour(
        f"exit 2, no sweep folder, no job started: {line}",
        did="-m model=unet,segresnet fold=0,1 model.width=0.3 hydra.sweep.dir=<tmp>/s",
    )


# A lab's own modules: lab_nets does not import (a dependency is missing), the networks of
# lab_shapes return the wrong thing; each takes the U-Net's config arguments.
LAB_NETS = """
import no_such_dependency_of_the_lab


class Net:
    pass
"""
LAB_SHAPES = '''
from torch import nn


class _Net(nn.Module):
    def __init__(self, **unused):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def logits(self, x):
        return self.conv(x)[:, :1]


class Pair(_Net):
    def forward(self, x):
        return self.logits(x), self.logits(x)


class Named(_Net):
    def forward(self, x):
        return {"out": self.logits(x)}


class Smaller(_Net):
    def forward(self, x):
        return self.logits(x)[..., 1:, 1:]


class TwoChannels(_Net):
    def forward(self, x):
        return self.conv(x)


class Labels(_Net):
    def forward(self, x):
        return (self.logits(x) > 0).long()


class DeclaredPair(Pair):
    """Declares its size rule, so only a pass at data.size shows what it returns."""

    size_divisor = 16
'''
# override -> the fragments of the one line (the key, the cause, what came back)
TARGETS = {
    "model.module.net._target_=no_such_lab_pkg.Net": [
        "model.module.net: cannot import no_such_lab_pkg.Net: no module named no_such_lab_pkg",
    ],
    "model.module.net._target_=monai.networks.nets.NoSuchNet": [
        "model.module.net: cannot import monai.networks.nets.NoSuchNet: "
        "monai.networks.nets has no NoSuchNet",
    ],
    "model.module.net._target_=lab_nets.Net": [
        "model.module.net: cannot import lab_nets.Net: importing lab_nets needs the module "
        "no_such_dependency_of_the_lab, which is not installed",
    ],
    "data.source._target_=no_such_lab_pkg.Source": [
        "data.source: cannot import no_such_lab_pkg.Source: no module named no_such_lab_pkg",
    ],
    "model.module.net._target_=lab_shapes.Pair": [
        "lab_shapes.Pair does not map",
        "for (1, 1, 9, 9) it returned a tuple of 2 (a float32 tensor of shape (1, 1, 9, 9), "
        "a float32 tensor of shape (1, 1, 9, 9))",
    ],
    "model.module.net._target_=lab_shapes.Named": [
        "for (1, 1, 9, 9) it returned a dict with keys 'out'",
    ],
    "model.module.net._target_=lab_shapes.Smaller": [
        "for (1, 1, 9, 9) it returned a float32 tensor of shape (1, 1, 8, 8)",
    ],
    "model.module.net._target_=lab_shapes.TwoChannels": [
        "for (1, 1, 9, 9) it returned a float32 tensor of shape (1, 2, 9, 9)",
    ],
    "model.module.net._target_=lab_shapes.Labels": [
        "for (1, 1, 9, 9) it returned an int64 tensor of shape (1, 1, 9, 9)",
    ],
    "model.module.net._target_=lab_shapes.DeclaredPair": [
        "model.module.net: lab_shapes.DeclaredPair returned a tuple of 2",
        "for a (1, 1, 32, 32) image; expected (1, 1, 32, 32) floating-point logits",
    ],
}


@pytest.mark.slow
@pytest.mark.reliability(entry="python train.py experiment=tiny model=unet")
@pytest.mark.parametrize("override", TARGETS)
def test_a_target_that_cannot_be_used_names_its_cause(override, tmp_path, record_behaviour):
    lab, root = tmp_path / "lab", tmp_path / "root"
    lab.mkdir()
    root.mkdir()
    (lab / "lab_nets.py").write_text(LAB_NETS)
    (lab / "lab_shapes.py").write_text(LAB_SHAPES)
    args = ["experiment=tiny", "model=unet", override]
    proc = train(args, root, timeout=120, env={"PYTHONPATH": str(lab)})
    line = refused_with_nothing_left(proc, root)
    for fragment in TARGETS[override]:
        assert fragment in line, line
    imports = "cannot import" in line
    record_behaviour(
        f"exit 2, no run folder: {line}",
        case="_target_ that cannot be imported" if imports else "network output of another shape",
        did=override,
    )
