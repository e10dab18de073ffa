"""Optimizers and learning-rate schedules from config (all optax)."""

import numpy as np
import optax
import pytest

from configs_loader import load_config
from zoo.core import optim


def test_schedules_follow_their_papers():
    # Zaremba et al.: constant for 4 epochs, then halved each epoch (here 10 steps an epoch).
    zaremba = optim.make_schedule(dict(learning_rate=1.0, schedule="exponential", decay_begin=30,
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


def test_the_paper_configs_schedules():
    # lstm_ptb_small: SGD at 1.0 on Zaremba et al.'s summed loss = 20 (SEQ_LEN) on zoo's mean per
    # word, constant for 4 epochs, then halved each epoch; clipped at 5 / 20 likewise.
    config = load_config("lstm_ptb_small")
    epoch = (929_589 // 20 - 1) // 20  # batches of 20 rows of 20 steps in ptb.train.txt
    assert config.train.steps == 13 * epoch and config.optimizer.grad_clip_norm == 5 / 20
    sched = optim.make_schedule(config.optimizer, config.train.steps)
    at = lambda *epochs: [float(sched(int(e * epoch))) for e in epochs]
    assert at(0, 1, 3.5, 4 - 1 / epoch) == [20.0] * 4
    assert at(4, 5 - 1 / epoch, 5, 6, 12) == [10.0, 10.0, 5.0, 2.5, 20 / 2 ** 9]
    # vae_burda2015: 1e-3 * 10^(-i/7) during stage i, which lasts 3^i epochs of 3000 steps.
    config = load_config("vae_burda2015")
    sched = optim.make_schedule(config.optimizer, config.train.steps)
    steps = 3000 * np.array([0, 1, 4, 13, 40, 121]) - 1  # the last step of each stage
    np.testing.assert_allclose([sched(s) for s in steps[1:]],
                               1e-3 * 10 ** (-np.arange(5) / 7), rtol=1e-6)
    np.testing.assert_allclose([sched(s + 1) for s in steps[:-1]],
                               1e-3 * 10 ** (-np.arange(5) / 7), rtol=1e-6)
    assert config.train.steps == 121 * 3000


def test_schedule_settings_are_checked():
    with pytest.raises(ValueError, match=r"optimizer.warmup_steps=30, but the exponential schedule "
                                         r"has no warm-up; .*optimizer.decay_begin"):
        optim.make_schedule(dict(schedule="exponential", warmup_steps=30), 100)
    # Settings that optax would take as "no decay at all" are refused, not run silently constant.
    for every in (0, None, -5):
        with pytest.raises(ValueError, match=r"optimizer.transition_steps=.*set it > 0"):
            optim.make_schedule(dict(schedule="exponential", transition_steps=every), 100)
    for bad in ((4, 1, 13), (0, 4), (4, 4), ()):
        with pytest.raises(ValueError, match=r"optimizer.boundaries=.* must be increasing steps "
                                             r"> 0"):
            optim.make_schedule(dict(schedule="piecewise", boundaries=bad), 100)


def test_clipping_wraps_the_optimizer_and_names_are_checked():
    tx = optim.make_optimizer(dict(name="sgd", learning_rate=1.0, grad_clip_norm=1.0))
    params = {"w": np.zeros(4, np.float32)}
    updates, _ = tx.update({"w": np.full(4, 10.0, np.float32)}, tx.init(params), params)
    np.testing.assert_allclose(optax.tree.norm(updates), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'; choose one of adam"):
        optim.make_optimizer(dict(name="adagrad"))
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'; choose one of"):
        optim.make_schedule(dict(schedule="step"), 10)
