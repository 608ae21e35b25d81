"""Every bad config value stops train.py with one line before a cache, a W&B run or a job file."""

from __future__ import annotations

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
