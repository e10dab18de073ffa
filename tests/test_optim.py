"""Optimizers and learning-rate schedules from config (all optax)."""

import numpy as np
import optax
import pytest

from zoo.core import optim


def test_schedules_follow_their_papers():
    # Zaremba et al.: constant for 4 epochs, then halved each epoch (here 10 steps an epoch).
    zaremba = optim.make_schedule(dict(learning_rate=1.0, schedule="exponential", warmup_steps=30,
                                       transition_steps=10, decay_rate=0.5), 130)
    assert [float(zaremba(s)) for s in (0, 39, 40, 49, 50, 60)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]
    # Burda et al.: 1e-3 * 10^(-i/7) during stage i.
    burda = optim.make_schedule(dict(learning_rate=1e-3, schedule="piecewise",
                                     boundaries=(1, 4, 13), decay_rate=10 ** (-1 / 7)), 40)
    np.testing.assert_allclose([burda(s) for s in (0, 1, 3, 4, 12, 13, 39)],
                               1e-3 * 10 ** (-np.array([0, 1, 1, 2, 2, 3, 3]) / 7), rtol=1e-6)
    cosine = optim.make_schedule(dict(learning_rate=2.0, schedule="warmup_cosine",
                                      warmup_steps=10, end_factor=0.1), 110)
    np.testing.assert_allclose([cosine(0), cosine(10), cosine(110)], [0.0, 2.0, 0.2], rtol=1e-6)


def test_clipping_wraps_the_optimizer_and_names_are_checked():
    tx = optim.make_optimizer(dict(name="sgd", learning_rate=1.0, grad_clip_norm=1.0))
    params = {"w": np.zeros(4, np.float32)}
    updates, _ = tx.update({"w": np.full(4, 10.0, np.float32)}, tx.init(params), params)
    np.testing.assert_allclose(optax.global_norm(updates), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'; choose one of adam"):
        optim.make_optimizer(dict(name="adagrad"))
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'; choose one of"):
        optim.make_schedule(dict(schedule="step"), 10)
