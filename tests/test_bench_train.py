"""The training-step benchmark times real training steps."""

import torch

from ichseg import bench_train


def test_timed_steps_really_train(monkeypatch):
    built = []
    original = bench_train.SegmentationModule

    def keep(*args, **kwargs):
        module = original(*args, **kwargs)
        built.append((module, [p.detach().clone() for p in module.parameters()]))
        return module

    monkeypatch.setattr(bench_train, "SegmentationModule", keep)
    times = bench_train.time_steps("dunet", 32, 4, 0.125, warmup=1, steps=2, device="cpu")
    assert len(times) == 2 and all(t > 0 for t in times)
    module, before = built[0]
    assert module.hparams.filters == [4, 8, 16, 32, 64]
    changed = [not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True)]
    assert all(changed[:2]), "the first conv's weights must move after three Adam steps"
