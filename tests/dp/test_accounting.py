"""Accountants against independent references: published values and Opacus' own accountants."""

import math
import warnings

import numpy as np
import pytest

from dp import rdp
from dp.accounting import (
    DiscreteGaussianEvent,
    GaussianEvent,
    PoissonSampledEvent,
    PrvAccountant,
    RdpAccountant,
    SkellamEvent,
    calibrate,
)
from dp.errors import PrivacyConfigError, UnsupportedEvent

MNIST_STEP = PoissonSampledEvent(256 / 60000, GaussianEvent(1.1))
MNIST_STEPS = 14062  # 60 epochs at sampling rate 256/60000


def test_published_value_rdp_balle_conversion():
    """q=256/60000, sigma=1.1, 60 epochs, delta=1e-5: epsilon 2.60 with RDP and the Balle et al.
    2020 conversion (the value Opacus reports); tolerance 0.005."""
    assert RdpAccountant().compose(MNIST_STEP, MNIST_STEPS).get_epsilon(1e-5) == pytest.approx(
        2.60, abs=0.005
    )


def test_published_value_rdp_classic_conversion():
    """Same setting: 3.01 with the moments accountant's classic conversion; tolerance 0.005."""
    value = RdpAccountant(classic=True).compose(MNIST_STEP, MNIST_STEPS).get_epsilon(1e-5)
    assert value == pytest.approx(3.01, abs=0.005)


def test_published_value_prv():
    """Same setting: 2.39 with the PRV accountant (Gopi et al. 2021); tolerance 0.01."""
    assert PrvAccountant().compose(MNIST_STEP, MNIST_STEPS).get_epsilon(1e-5) == pytest.approx(
        2.39, abs=0.01
    )


CASES = [
    (0.01, 1.0, 1000, 1e-5),
    (0.1, 2.0, 100, 1e-6),
    (0.004, 0.8, 5000, 1e-5),
    (1.0, 5.0, 10, 1e-5),
    (0.3, 1.5, 50, 1e-5),
]


@pytest.mark.parametrize(("q", "sigma", "steps", "delta"), CASES)
def test_rdp_matches_opacus(q, sigma, steps, delta):
    """Our RDP accountant equals Opacus' RDPAccountant on its own orders (relative 1e-6)."""
    from opacus.accountants import RDPAccountant

    reference = RDPAccountant()
    reference.history = [(sigma, q, steps)]
    ours = RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS).compose(
        PoissonSampledEvent(q, GaussianEvent(sigma)), steps
    )
    assert ours.get_epsilon(delta) == pytest.approx(reference.get_epsilon(delta), rel=1e-6)


@pytest.mark.parametrize(("q", "sigma", "steps", "delta"), CASES)
def test_prv_matches_opacus_and_never_understates(q, sigma, steps, delta):
    """Our PRV accountant is within 0.02 of Opacus' PRVAccountant and below our RDP bound."""
    from opacus.accountants import PRVAccountant

    reference = PRVAccountant()
    reference.history = [(sigma, q, steps)]
    event = PoissonSampledEvent(q, GaussianEvent(sigma))
    ours = PrvAccountant().compose(event, steps).get_epsilon(delta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ours == pytest.approx(reference.get_epsilon(delta), abs=0.02)
    assert ours <= RdpAccountant().compose(event, steps).get_epsilon(delta) + 0.02


def test_generic_subsampling_bound_is_an_upper_bound():
    """Zhu & Wang 2019 Thm. 6 applied to the Gaussian lies above the exact sampled-Gaussian RDP
    (Mironov et al. 2019) and below the unsampled RDP."""
    orders = [2, 3, 5, 8, 16, 32]
    sigma, q = 1.3, 0.05
    generic = rdp.subsampled_rdp(q, lambda a: a / (2 * sigma**2), orders)
    exact = rdp.sampled_gaussian_rdp(q, sigma, orders)
    assert np.all(generic >= exact - 1e-12)
    assert np.all(generic <= rdp.gaussian_rdp(sigma, orders) + 1e-12)


def test_skellam_approaches_the_gaussian_for_large_variance():
    """Agarwal et al. 2021: the Skellam RDP tends to the Gaussian alpha*D2^2/(2V) as V grows."""
    gaussian = 8 * 10.0**2 / (2 * 1e8)
    assert rdp.skellam_rdp(8, l1_sensitivity=100, l2_sensitivity=10, variance=1e8) == pytest.approx(
        gaussian, rel=1e-3
    )


def test_distributed_discrete_gaussian_matches_the_gaussian_when_tau_vanishes():
    """Kairouz et al. 2021 Prop. 14: with large local noise (tau ~ 0) the RDP is alpha*D2^2/(2 n s^2)."""
    value = rdp.discrete_gaussian_rdp(
        4, l1_sensitivity=50, l2_sensitivity=10, local_sigma=30, num_clients=5, dimension=64
    )
    assert value == pytest.approx(4 * 100 / (2 * 5 * 900), rel=1e-6)


def test_epsilon_grows_with_composition():
    """More steps never give a smaller epsilon."""
    values = [
        RdpAccountant().compose(MNIST_STEP, k).get_epsilon(1e-5) for k in (100, 1000, 5000, 14062)
    ]
    assert values == sorted(values)


def test_calibration_reaches_the_target_and_refuses_the_impossible():
    """The calibrated noise meets the target within 0.1%; an unreachable target raises."""
    steps = 500

    def epsilon(sigma):
        return (
            RdpAccountant()
            .compose(PoissonSampledEvent(0.05, GaussianEvent(sigma)), steps)
            .get_epsilon(1e-5)
        )

    sigma = calibrate(epsilon, 2.0, what="noise")
    assert epsilon(sigma) <= 2.0
    assert epsilon(sigma * 0.99) > 2.0 * 0.999 or epsilon(sigma * 0.99) > epsilon(sigma)
    with pytest.raises(PrivacyConfigError, match="raise the target"):
        calibrate(epsilon, 1e-6, high=2.0, what="noise")
    with pytest.raises(PrivacyConfigError):
        calibrate(epsilon, 0.0, what="noise")


def test_bad_delta_and_unsupported_events():
    """Delta outside (0, 1) and events an accountant cannot handle are typed errors."""
    with pytest.raises(PrivacyConfigError):
        RdpAccountant().get_epsilon(0.0)
    with pytest.raises(PrivacyConfigError):
        PrvAccountant().get_epsilon(1.5)
    with pytest.raises(UnsupportedEvent):
        PrvAccountant().compose(SkellamEvent(1, 1, 100))
    with pytest.raises(UnsupportedEvent):
        PrvAccountant().compose(PoissonSampledEvent(0.1, DiscreteGaussianEvent(1, 1, 10, 3, 8)))


def test_no_mechanism_spends_nothing():
    """An empty composition has epsilon 0; no noise has infinite epsilon."""
    assert RdpAccountant().get_epsilon(1e-5) == 0.0
    assert math.isinf(RdpAccountant().compose(GaussianEvent(0.0)).get_epsilon(1e-5))


def test_client_level_run_sampling_two_clients_per_thousand_finds_the_optimal_order():
    """Subsampled Skellam (Zhu & Wang 2019, Thm. 6) at q = 0.002, variance 10, unit sensitivity,
    one round: the optimum lies at order 121. With orders 64-127 skipped the reported epsilon was
    0.103; every integer order gives 0.0478, the value a dense grid of orders 2..1024 gives."""
    event = PoissonSampledEvent(0.002, SkellamEvent(1.0, 1.0, 10.0))
    default = RdpAccountant().compose(event).get_epsilon(1e-5)
    dense_orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 1025))
    dense = RdpAccountant(orders=dense_orders).compose(event).get_epsilon(1e-5)
    assert default == pytest.approx(0.0478, abs=5e-4)
    assert default == pytest.approx(dense, rel=1e-9)
    _, order = rdp.epsilon_from_rdp(
        np.asarray(RdpAccountant().compose(event)._rdp), 1e-5, rdp.DEFAULT_ORDERS
    )
    assert 64 <= order <= 127


@pytest.mark.parametrize("q", [0.95, 0.99, 0.999999, 1.0])
def test_client_level_run_sampling_nearly_every_client_is_accounted(q):
    """Sampling rates up to 1 work (log-space sums): the sampled Gaussian equals Opacus'
    RDPAccountant on its orders, and the subsampled Skellam bound is finite, non-decreasing in q
    and never above the unsampled mechanism (which it equals at q = 1)."""
    from opacus.accountants import RDPAccountant

    reference = RDPAccountant()
    reference.history = [(1.0, q, 10)]
    ours = RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS).compose(
        PoissonSampledEvent(q, GaussianEvent(1.0)), 10
    )
    assert ours.get_epsilon(1e-5) == pytest.approx(reference.get_epsilon(1e-5), rel=1e-6)
    skellam = SkellamEvent(40.0, 4.0, 400.0)
    sampled = RdpAccountant().compose(PoissonSampledEvent(q, skellam), 10).get_epsilon(1e-5)
    lower = RdpAccountant().compose(PoissonSampledEvent(0.9, skellam), 10).get_epsilon(1e-5)
    unsampled = RdpAccountant().compose(skellam, 10).get_epsilon(1e-5)
    assert math.isfinite(sampled) and lower <= sampled <= unsampled
    if q == 1.0:
        assert sampled == unsampled


def _opacus_prv_bounds(q, sigma, steps, delta):
    """Opacus' PRV accountant's (lower, estimate, upper) epsilon for one sampled Gaussian."""
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = [(sigma, q, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dprv = accountant._get_dprv(eps_error=0.01, delta_error=delta / 1000)
        return dprv.compute_epsilon(delta, delta / 1000, 0.01)


def test_prv_on_a_bounded_grid_stays_an_upper_bound():
    """Gopi et al. 2021 with a capped lattice: forcing a 4,096-point cap coarsens the lattice and
    widens the allowance, so the result grows but never falls below Opacus' estimate; tiny
    noise (whose loss distribution would need ~10^9 points) gives a finite bound within the cap
    (peak traced memory below 256 MiB)."""
    import tracemalloc

    from dp import prv

    q, sigma, steps = 0.05, 1.0, 800
    _, estimate, upper = _opacus_prv_bounds(q, sigma, steps, 1e-5)
    default = prv.prv_epsilon([(q, sigma, steps)], 1e-5)
    capped = prv.prv_epsilon([(q, sigma, steps)], 1e-5, max_points=1 << 12)
    assert estimate <= default <= upper + 0.01
    assert capped > default
    tracemalloc.start()
    wide = prv.prv_epsilon([(q, 0.05, steps)], 1e-5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rdp_value = RdpAccountant().compose(PoissonSampledEvent(q, GaussianEvent(0.05)), steps)
    assert math.isfinite(wide) and wide > 1000
    assert wide <= rdp_value.get_epsilon(1e-5) * 1.2
    assert peak < 256 * 2**20


def test_calibration_reports_its_progress():
    """calibrate calls progress(done, n) with non-decreasing done, ending at n == done, and
    reaches the target in far fewer evaluations than n."""
    calls = []

    def epsilon(sigma):
        return (
            RdpAccountant()
            .compose(PoissonSampledEvent(0.05, GaussianEvent(sigma)), 500)
            .get_epsilon(1e-5)
        )

    sigma = calibrate(epsilon, 2.0, what="noise", progress=lambda d, n: calls.append((d, n)))
    assert epsilon(sigma) <= 2.0 < epsilon(sigma / 1.002)
    done = [d for d, _ in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1]
    assert len(calls) - 1 < calls[-1][1] // 2
