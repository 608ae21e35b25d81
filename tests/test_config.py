"""The composed configs: the paper's two architectures and experiments, as the paper states them."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ichseg.config import register_resolvers, scale_filters
from ichseg.training.task import config_hash

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def compose_train(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=False)


def module_cfg(cfg):
    return OmegaConf.to_container(cfg.model.module, resolve=True)


def test_unet_is_the_paper_baseline():
    cfg = compose_train(["model=unet"])
    m = module_cfg(cfg)
    assert m["filters"] == [64, 128, 256, 512, 1024]
    assert (m["batch_norm"], m["dropout"], m["lr"]) == (False, 0.0, 1e-4)
    assert cfg.data.batch_size == 32


def test_dunet_halves_filters_adds_batch_norm_and_dropout():
    m = module_cfg(compose_train(["model=dunet"]))
    assert m["filters"] == [32, 64, 128, 256, 512]
    assert (m["batch_norm"], m["dropout"]) == (True, 0.2)


def test_paper_experiment_settings():
    cfg = compose_train(["experiment=paper", "model=dunet"])
    assert cfg.data.size == 256 and cfg.data.batch_size == 32
    assert cfg.trainer.max_epochs == 1000 and cfg.checkpoint_every == 100
    assert cfg.model.module.lr == 1e-4 and cfg.model.width == 1.0


@pytest.mark.parametrize("model", ["unet", "dunet"])
def test_demo_keeps_the_two_to_one_filter_ratio(model):
    cfg = compose_train(["experiment=demo", f"model={model}"])
    base = [64, 128, 256, 512, 1024] if model == "unet" else [32, 64, 128, 256, 512]
    assert module_cfg(cfg)["filters"] == [f // 4 for f in base]
    assert cfg.checkpoint_every < cfg.trainer.max_epochs


def test_scale_filters_rejects_nonpositive_width():
    assert scale_filters([64, 128], 0.125) == [8, 16]
    with pytest.raises(ValueError, match=r"model\.width"):
        scale_filters([64], 0)


def test_physionet_config_needs_a_root_and_drops_the_phantom():
    cfg = compose_train(["data=physionet", "data.root=/somewhere"])
    assert cfg.data.phantom is None and cfg.data.root == "/somewhere"
    assert cfg.data.source == "physionet"
    assert OmegaConf.is_missing(compose_train(["data=physionet"]).data, "root")


def test_datamodule_and_module_instantiate_from_config(tmp_path):
    cfg = compose_train(["experiment=tiny", "model=dunet", f"paths.root_dir={tmp_path}"])
    module = instantiate(cfg.model.module)
    assert module.hparams.filters == [4, 8, 16, 32, 64]
    dm = instantiate(cfg.data)
    assert dm.fold == 0 and dm.phantom is not None


def test_config_hash_ignores_paths_but_not_results():
    base = compose_train(["experiment=tiny", "paths.root_dir=/a"])
    moved = compose_train(["experiment=tiny", "paths.root_dir=/b"])
    other = compose_train(["experiment=tiny", "paths.root_dir=/a", "model.module.lr=0.1"])
    for cfg in (base, moved, other):
        OmegaConf.set_struct(cfg, False)
        cfg.paths.output_dir = "/out"  # the hydra: resolver only exists inside a Hydra run
    assert config_hash(base) == config_hash(moved)
    assert config_hash(base) != config_hash(other)
