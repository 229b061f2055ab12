import math

import pytest

from ecos_core.privacy.accounting import gaussian_epsilon, sigma_for_epsilon


def test_reference_values_pld_and_rdp():
    # Reference points of DESIGN.md, measured with dp-accounting 0.6.0.
    assert gaussian_epsilon(6.1) == pytest.approx(0.584, abs=0.002)
    assert gaussian_epsilon(4.0, accountant="rdp") == pytest.approx(1.01, abs=0.01)
    assert gaussian_epsilon(4.0) == pytest.approx(0.93, abs=0.01)


def test_rounds_compose_and_cost_more():
    one, three = gaussian_epsilon(6.1), gaussian_epsilon(6.1, releases=3)
    assert three > one
    assert three < 3 * one  # composition is sublinear for the Gaussian mechanism


def test_sigma_for_epsilon_inverts_epsilon():
    sigma = sigma_for_epsilon(0.58)
    assert gaussian_epsilon(sigma) <= 0.58 + 1e-6
    assert math.isclose(sigma, 6.1, rel_tol=0.02)


@pytest.mark.parametrize("sigma", [0.0, -1.0])
def test_bad_sigma_rejected(sigma):
    with pytest.raises(ValueError, match="sigma"):
        gaussian_epsilon(sigma)


def test_unknown_accountant_rejected():
    with pytest.raises(ValueError, match="accountant"):
        gaussian_epsilon(6.1, accountant="moments")
