"""When CheckpointRecorder writes last.ckpt: checkpoint epochs, and by the clock in between."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from ichseg.checkpoint import LAST_CHECKPOINT
from ichseg.errors import IchsegError
from ichseg.training import callbacks
from ichseg.training.callbacks import CheckpointRecorder


def _run_epochs(tmp_path, monkeypatch, every_n: int, last_every_s: float, epoch_s: float):
    clock = {"now": 1000.0}
    saved = []
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(
        callbacks,
        "save_checkpoint_atomically",
        lambda trainer, path: saved.append((trainer.current_epoch + 1, path.name)),
    )
    recorder = CheckpointRecorder(
        tmp_path, model_name="dunet", fold=0, every_n_epochs=every_n, last_every_s=last_every_s
    )
    trainer = SimpleNamespace(current_epoch=0, max_epochs=12, sanity_checking=False, loggers=[])
    module = SimpleNamespace(epoch_metrics={"train": {"loss": 0.5}, "val": {"loss": 0.6}})
    recorder.setup(trainer, module, "fit")
    for epoch in range(12):
        clock["now"] += epoch_s
        trainer.current_epoch = epoch
        recorder.on_validation_end(trainer, module)
    return [epoch for epoch, name in saved if name == Path(LAST_CHECKPOINT).name]


def test_last_checkpoint_follows_the_clock_between_checkpoint_epochs(tmp_path, monkeypatch):
    # 25 s epochs, last.ckpt due every 60 s: at 75 s (epoch 3), then 60 s after each write,
    # and at the checkpoint epochs 5 and 10 and the last epoch 12, which reset the clock.
    written = _run_epochs(tmp_path, monkeypatch, every_n=5, last_every_s=60.0, epoch_s=25.0)
    assert written == [3, 5, 8, 10, 12]


def test_zero_seconds_writes_last_checkpoint_every_epoch(tmp_path, monkeypatch):
    written = _run_epochs(tmp_path, monkeypatch, every_n=5, last_every_s=0.0, epoch_s=1.0)
    assert written == list(range(1, 13))


def test_negative_interval_is_refused(tmp_path):
    with pytest.raises(IchsegError, match=r"^last_checkpoint_every_s=-1 is not allowed: .* >= 0$"):
        CheckpointRecorder(tmp_path, model_name="dunet", fold=0, last_every_s=-1)
    with pytest.raises(IchsegError, match=r"^checkpoint_every=0 is not allowed: .* >= 1$"):
        CheckpointRecorder(tmp_path, model_name="dunet", fold=0, every_n_epochs=0)
