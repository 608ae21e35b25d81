"""Keras 2 Adam and inverse-time decay against a numpy transcription of Keras' update rule."""

from __future__ import annotations

import copy as copy_module

import numpy as np
import pytest
import torch

from ichseg.errors import IchsegError
from ichseg.training.optim import KerasAdam, build_optimizer, inverse_time_decay


def keras_adam_reference(p, grads, lr, eps, decay, beta1=0.9, beta2=0.999):
    """Keras 2.3 `Adam.get_updates` in numpy (float64): decayed lr, eps on the uncorrected √v."""
    p = p.astype(np.float64).copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    for iterations, g in enumerate(grads):
        lr_now = lr * (1.0 / (1.0 + decay * iterations))
        t = iterations + 1
        lr_t = lr_now * np.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g**2
        p = p - lr_t * m / (np.sqrt(v) + eps)
    return p


def run(optimizer_name, grads, p0, lr, eps, decay):
    param = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    optimizer = build_optimizer(optimizer_name, [param], lr, eps, 0.0)
    schedule = inverse_time_decay(optimizer, decay)
    for g in grads:
        param.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
        schedule.step()
    return param.detach().numpy()


# Gradients as small as a converged network's, where the epsilon placement matters most.
RNG = np.random.default_rng(0)
P0 = RNG.normal(size=20)
GRADS = [RNG.normal(size=20) * 10.0 ** RNG.uniform(-9, -2, size=20) for _ in range(30)]


@pytest.mark.parametrize("decay", [0.0, 1e-7, 0.05])
def test_keras_adam_matches_the_keras_update(decay):
    want = keras_adam_reference(P0, GRADS, lr=1e-3, eps=1e-7, decay=decay)
    got = run("keras_adam", GRADS, P0, lr=1e-3, eps=1e-7, decay=decay)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_torch_adam_with_the_same_eps_is_a_different_optimiser():
    keras = keras_adam_reference(P0, GRADS, lr=1e-3, eps=1e-7, decay=0.0)
    torch_adam = run("adam", GRADS, P0, lr=1e-3, eps=1e-7, decay=0.0)
    assert np.abs(torch_adam - keras).max() > 1e-6
    # eps_torch = eps_keras / sqrt(1 - beta2^t) makes them equal at step t; at t = 1 that is:
    one = [GRADS[0]]
    mapped = run("adam", one, P0, lr=1e-3, eps=1e-7 / np.sqrt(1 - 0.999), decay=0.0)
    np.testing.assert_allclose(
        mapped, keras_adam_reference(P0, one, 1e-3, 1e-7, 0.0), rtol=1e-12, atol=1e-15
    )


def test_keras_adam_state_survives_a_state_dict_round_trip():
    param = torch.nn.Parameter(torch.tensor(P0))
    first = KerasAdam([param], lr=1e-3)
    for g in GRADS[:5]:
        param.grad = torch.tensor(g)
        first.step()
    copy = torch.nn.Parameter(param.detach().clone())
    second = KerasAdam([copy], lr=1e-3)
    # A deep copy, as a checkpoint on disk is: torch shares the state tensors otherwise.
    second.load_state_dict(copy_module.deepcopy(first.state_dict()))
    for opt, p in ((first, param), (second, copy)):
        p.grad = torch.tensor(GRADS[5])
        opt.step()
    assert torch.equal(param, copy)


def test_bad_optimiser_settings_name_the_key():
    with pytest.raises(
        IchsegError,
        match=r"^model\.module\.optimizer='sgd' is not allowed: expected one of keras_adam, adam$",
    ):
        build_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], 1e-3, 1e-7, 0.0)
    optimizer = build_optimizer("adam", [torch.nn.Parameter(torch.zeros(1))], 1e-3, 1e-7, 0.0)
    with pytest.raises(IchsegError, match=r"^model\.module\.lr_decay=-1\.0 is not allowed: "):
        inverse_time_decay(optimizer, -1.0)
