"""The composed configs: the paper's two architectures and experiments, as the paper states them."""

from functools import partial

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ichseg.config import register_resolvers, scale_filters
from ichseg.config_schema import validate
from ichseg.data.augment import BatchAugment
from ichseg.data.datamodule import ICHDataModule
from ichseg.data.prepare import PrepareConfig
from ichseg.data.sources import Phantom, PhysioNet
from ichseg.errors import IchsegError
from ichseg.jobs.config import config_hash
from ichseg.metrics import ProtocolAccumulator
from ichseg.models.unet import UNet
from ichseg.runtime import apply_torch_settings, set_float32_precision, training_precision
from ichseg.training.callbacks import CheckpointRecorder, FiniteLossGuard, SplitProvenance
from ichseg.training.console import EpochLine
from tests.helpers.runs import ROOT

CONF = str(ROOT / "conf")


def compose_train(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=False)


def module_cfg(cfg):
    return OmegaConf.to_container(cfg.model.module, resolve=True)


def net_cfg(cfg):
    return module_cfg(cfg)["net"]


def test_unet_is_the_authors_baseline():
    cfg = compose_train(["model=unet"])
    net = net_cfg(cfg)
    assert net["_target_"] == "ichseg.models.unet.UNet"
    assert net["filters"] == [64, 128, 256, 512, 1024]
    assert (net["batch_norm"], net["dropout"], module_cfg(cfg)["lr"]) == ("second", 0.0, 1e-4)
    assert cfg.data.batch_size == 32
    plain = net_cfg(compose_train(["model=unet_plain"]))
    assert {**plain, "batch_norm": "second"} == net and plain["batch_norm"] == "none"


def test_dunet_halves_filters_adds_batch_norm_and_dropout():
    net = net_cfg(compose_train(["model=dunet"]))
    assert net["filters"] == [32, 64, 128, 256, 512]
    assert (net["batch_norm"], net["dropout"]) == ("both", 0.2)


def test_paper_experiment_follows_the_authors_code():
    cfg = compose_train(["experiment=paper", "model=dunet"])
    assert cfg.data.size == 256 and cfg.data.batch_size == 32
    assert cfg.trainer.max_epochs == 1000 and cfg.checkpoint_every == 100
    m = module_cfg(cfg)
    assert m["lr"] == 1e-4 and cfg.model.width == 1.0
    # Keras Adam(epsilon=None -> 1e-7, decay=lr/EPOCHS), dice_coef smooth 100.
    assert (m["optimizer"], m["adam_eps"], m["smooth"]) == ("keras_adam", 1e-7, 100.0)
    assert m["lr_decay"] == pytest.approx(1e-4 / 1000)
    aug = OmegaConf.to_container(cfg.data.augment)
    assert aug == {
        "_target_": "ichseg.data.augment.BatchAugment",
        "rotation_deg": 0.2,
        "shift": 0.05,
        "shear_deg": 0.05,
        "zoom": 0.05,
        "hflip": 0.5,
        "fill": "nearest",
    }
    assert cfg.data.intensity == "viridis_png"


@pytest.mark.parametrize("model", ["unet", "dunet"])
def test_demo_keeps_the_two_to_one_filter_ratio(model):
    cfg = compose_train(["experiment=demo", f"model={model}"])
    base = [64, 128, 256, 512, 1024] if model == "unet" else [32, 64, 128, 256, 512]
    assert net_cfg(cfg)["filters"] == [f // 4 for f in base]
    assert cfg.checkpoint_every < cfg.trainer.max_epochs


def test_scale_filters_keeps_the_doubling_per_level():
    assert scale_filters([64, 128], 0.125) == [8, 16]
    with pytest.raises(ValueError, match=r"model\.width=0\.01 gives filters \[1, 1\]"):
        scale_filters([64, 128], 0.01)


def test_physionet_config_needs_a_root_and_has_no_phantom_keys():
    cfg = compose_train(["data=physionet", "data.source.root=/somewhere"])
    assert OmegaConf.to_container(cfg.data.source) == {
        "_target_": "ichseg.data.sources.PhysioNet",
        "root": "/somewhere",
    }
    assert OmegaConf.is_missing(compose_train(["data=physionet"]).data.source, "root")
    # Both sources share every other data setting.
    phantom = compose_train([]).data
    assert {k for k in phantom if k != "source"} == {k for k in cfg.data if k != "source"}


def test_augmentation_is_an_object_and_null_turns_it_off(tmp_path):
    root = [f"paths.root_dir={tmp_path}"]
    dm = instantiate(compose_train(["experiment=tiny", *root]).data)
    assert isinstance(dm.augmenter, BatchAugment)
    assert (dm.augmenter.rotation_deg, dm.augmenter.hflip, dm.augmenter.fill) == (
        0.2,
        0.5,
        "nearest",
    )
    assert (
        instantiate(compose_train(["experiment=tiny", "data.augment=null", *root]).data).augmenter
        is None
    )


@pytest.mark.parametrize("source", ["instance22", "bhsd", "nnunet_raw"])
def test_every_source_composes_with_the_demo_experiment(source, tmp_path):
    cfg = compose_train(["experiment=demo", f"data={source}", f"data.source.root={tmp_path}"])
    dm = instantiate(cfg.data)
    assert dm.source.name == source and dm.source.root == str(tmp_path)
    assert dm.prepare_config.size == 48


def test_the_phantom_layout_is_a_config_key(tmp_path):
    cfg = compose_train(["experiment=tiny", "phantom.layout=bhsd", f"paths.root_dir={tmp_path}"])
    source = instantiate(cfg.data).source
    assert source.layout == "bhsd" and source.root.endswith("phantom-p16-s64-seed0-bhsd")


def test_datamodule_and_module_instantiate_from_config(tmp_path):
    cfg = compose_train(["experiment=tiny", "model=dunet", f"paths.root_dir={tmp_path}"])
    module = instantiate(cfg.model.module)
    assert module.hparams.net["filters"] == [4, 8, 16, 32, 64]
    assert isinstance(module.net, UNet) and module.net.filters == (4, 8, 16, 32, 64)
    dm = instantiate(cfg.data)
    assert dm.fold == 0 and dm.source == Phantom(
        root=f"{tmp_path}/data/phantom-p16-s64-seed0-physionet", patients=16, size=64, seed=0
    )


def test_callbacks_come_from_their_group_guard_first(tmp_path):
    cfg = compose_train(["experiment=tiny", "model=unet"])
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = str(tmp_path)
    callbacks = [instantiate(node) for node in cfg.callbacks.values()]
    kinds = [type(c) for c in callbacks]
    assert kinds == [FiniteLossGuard, SplitProvenance, CheckpointRecorder, EpochLine]
    recorder = callbacks[2]
    assert (recorder.job_dir, recorder.model_name, recorder.fold) == (tmp_path, "unet", 0)
    assert (recorder.every_n_epochs, recorder.overlay_count) == (1, 2)
    assert recorder.last_every_s == 300 and callbacks[3].name == "unet-fold0"


def test_config_hash_ignores_paths_but_not_results():
    base = compose_train(["experiment=tiny", "paths.root_dir=/a"])
    moved = compose_train(["experiment=tiny", "paths.root_dir=/b"])
    other = compose_train(["experiment=tiny", "paths.root_dir=/a", "model.module.lr=0.1"])
    for cfg in (base, moved, other):
        OmegaConf.set_struct(cfg, False)
        cfg.paths.output_dir = "/out"  # the hydra: resolver only exists inside a Hydra run
    assert config_hash(base) == config_hash(moved)
    assert config_hash(base) != config_hash(other)


def test_config_hash_ignores_speed_settings_but_not_float32_precision():
    def digest(*overrides: str) -> str:
        cfg = compose_train(["experiment=tiny", *overrides])
        OmegaConf.set_struct(cfg, False)
        cfg.paths.output_dir = "/out"
        return config_hash(cfg)

    base = digest()
    assert digest("model.module.compile=true") == base
    assert digest("data.resident=false") == base
    assert digest("float32_matmul_precision=highest") != base


def test_float32_precision_sets_matmuls_and_convolutions():
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        set_float32_precision("highest")
        assert torch.get_float32_matmul_precision() == "highest"
        assert not torch.backends.cudnn.allow_tf32
        set_float32_precision("high")
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32
        with pytest.raises(
            IchsegError, match=r"^float32_matmul_precision='fast' is not allowed: expected one of"
        ):
            set_float32_precision("fast")
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def test_job_settings_flush_subnormals_on_cpu():
    cfg = compose_train(["model=unet"])
    assert cfg.flush_denormal is True
    tiny = torch.tensor([1e-20])
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals (no SSE3)")
    try:
        apply_torch_settings(cfg)
        # 1e-40 is subnormal in fp32: flushed to zero while the setting is on.
        assert (tiny * tiny).item() == 0.0
        cfg.flush_denormal = False
        apply_torch_settings(cfg)
        assert (tiny * tiny).item() == pytest.approx(1e-40, rel=1e-2)
    finally:
        torch.set_flush_denormal(False)
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def test_fast_path_defaults():
    cfg = compose_train(["model=unet"])
    assert cfg.float32_matmul_precision == "high"
    assert cfg.data.resident is True and cfg.model.module.compile is False
    physionet = compose_train(["model=dunet", "data=physionet", "data.source.root=/somewhere"])
    assert physionet.data.resident is True and physionet.model.module.compile is False


@pytest.mark.parametrize(
    ("gpu", "accelerator", "expected"),
    [
        (True, "auto", "bf16-mixed"),
        (True, "gpu", "bf16-mixed"),
        (True, "cpu", "32-true"),
        (False, "auto", "32-true"),
    ],
)
def test_auto_precision_follows_the_jobs_accelerator(monkeypatch, gpu, accelerator, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: gpu)
    assert training_precision("auto", accelerator) == expected
    assert training_precision("16-mixed", accelerator) == "16-mixed"


# A bad value as train.py's override, and as the keyword a programmatic caller passes it by.
BAD_VALUES = [
    ("fold=10", ICHDataModule, {"fold": 10}),
    ("data.n_folds=1", ICHDataModule, {"n_folds": 1}),
    ("data.batch_size=0", ICHDataModule, {"batch_size": 0}),
    ("data.eval_batch_size=0", ICHDataModule, {"eval_batch_size": 0}),
    ("data.intensity=rgb", ICHDataModule, {"intensity": "rgb"}),
    ("data.resident=yes", ICHDataModule, {"resident": "yes"}),
    ("data.allow_non_hu=1", ICHDataModule, {"allow_non_hu": 1}),
    ("data.size=1", ICHDataModule, {"size": 1}),
    ("data.size=1", PrepareConfig, {"size": 1}),
    ("data.window_level=nan", PrepareConfig, {"level": float("nan")}),
    ("data.window_width=0", PrepareConfig, {"width": 0}),
    ("data.split=random", PrepareConfig, {"split": "random"}),
    ("data.seed=-1", PrepareConfig, {"seed": -1}),
    ("data.test_fraction=1.5", PrepareConfig, {"test_fraction": 1.5}),
    ("data.augment.zoom=1.5", BatchAugment, {"zoom": 1.5}),
    ("data.augment.fill=wrap", BatchAugment, {"fill": "wrap"}),
    ("checkpoint_every=0", partial(CheckpointRecorder, "job", "unet", 0), {"every_n_epochs": 0}),
    (
        "last_checkpoint_every_s=-1",
        partial(CheckpointRecorder, "job", "unet", 0),
        {"last_every_s": -1},
    ),
    ("model.module.threshold=1.5", ProtocolAccumulator, {"threshold": 1.5}),
    ("float32_matmul_precision=fast", set_float32_precision, {"precision": "fast"}),
]


@pytest.mark.parametrize(("override", "built", "kwargs"), BAD_VALUES)
def test_a_bad_value_gives_train_pys_line_when_built_in_code(override, built, kwargs, tmp_path):
    with pytest.raises(IchsegError) as from_config:
        validate(compose_train([override]))
    if built is ICHDataModule:
        kwargs = {"fold": 0, "source": PhysioNet(str(tmp_path))} | kwargs
    with pytest.raises(IchsegError) as from_code:
        built(**kwargs)
    assert str(from_code.value) == str(from_config.value)
    assert str(from_config.value).startswith(override.split("=")[0] + "="), from_config.value
