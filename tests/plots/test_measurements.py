"""The measurement figures (paper Figs. 12, 17, 18): each CSV holds exactly the numbers drawn."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from diffattr.diffusion import Schedule
from diffattr.evaluate import oracle_lds, retraining_correlation
from diffattr.measure.functions import step_kl
from diffattr.plots import measurements


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_elbo_weights_are_the_step_kl_per_unit_squared_error():
    """KL(q(x_{t-1}|x_t,x_0) || p_θ) with ε_θ = ε + δ is w_t ||δ||² exactly (fixed-small variance)."""
    sched = Schedule.linear(100)
    w = sched.elbo_weights()
    assert torch.isnan(w[0]) and torch.isfinite(w[1:]).all()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    delta = 0.1 * torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2, 10, 50, 98, 99])
    x_t = sched.q_sample(x0, t, eps)
    kl = step_kl(sched, x0, x_t, t, eps + delta)
    torch.testing.assert_close(kl, w[t] * delta.pow(2).flatten(1).sum(1), rtol=1e-6, atol=0)
    # the ELBO weighs the first steps most (Ho et al.'s reason to train on the unweighted loss)
    assert w[1] > w[10] > w[50]


def test_elbo_weighting_csv(tmp_path):
    w = Schedule.linear(50).elbo_weights().numpy()
    measurements.elbo_weighting(w, tmp_path / "w.png", tmp_path / "w.csv")
    rows = _csv(tmp_path / "w.csv")
    assert [int(r["timestep"]) for r in rows] == list(range(1, 51))
    np.testing.assert_allclose([float(r["elbo_weight"]) for r in rows[1:]], w[1:])
    np.testing.assert_allclose([float(r["relative_weight"]) for r in rows[1:]], w[1:] / w[1:].mean())


def test_elbo_pairs_csv_holds_each_pair_and_its_correlations(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 10))
    measurements.elbo_pairs(values, ["full", "subset0_seed0", "subset0_seed1"], tmp_path / "e.png", tmp_path / "e.csv")
    rows = _csv(tmp_path / "e.csv")
    pairs = sorted({(r["model_a"], r["model_b"]) for r in rows})
    assert pairs == [("full", "subset0_seed0"), ("full", "subset0_seed1"), ("subset0_seed0", "subset0_seed1")]
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        names = ["full", "subset0_seed0", "subset0_seed1"]
        mine = [r for r in rows if (r["model_a"], r["model_b"]) == (names[a], names[b])]
        np.testing.assert_allclose([float(r["elbo_a"]) for r in mine], values[a])
        np.testing.assert_allclose([float(r["elbo_b"]) for r in mine], values[b])
        assert float(mine[0]["pearson"]) == np.float64(pearsonr(values[a], values[b]).statistic)
        assert float(mine[0]["spearman"]) == np.float64(spearmanr(values[a], values[b]).statistic)


def test_retraining_correlation_of_a_measurement_with_itself_is_the_oracle():
    rng = np.random.default_rng(1)
    signal = rng.normal(size=(8, 1, 5))
    a = signal + 0.3 * rng.normal(size=(8, 3, 5))
    b = -signal + 0.3 * rng.normal(size=(8, 3, 5))
    np.testing.assert_array_equal(retraining_correlation(a, a).per_sample, oracle_lds(a).per_sample)
    assert retraining_correlation(a, b).mean < -0.5 < 0.5 < retraining_correlation(a, a).mean
    # one seed per subset: the seed against itself, so a measurement predicts itself perfectly
    np.testing.assert_allclose(retraining_correlation(a[:, :1], a[:, :1]).per_sample, 1.0)
