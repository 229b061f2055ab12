"""(ε, δ) of the noisy coverage scores, from Google's dp-accounting (never a hand formula).

One response is one Gaussian release of a histogram whose L2 sensitivity is 1 under
add/remove of one sample (each sample adds exactly 1 to one bin). Rounds compose.
"""

from __future__ import annotations

from typing import Literal

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

Accountant = Literal["pld", "rdp"]
DEFAULT_DELTA = 1e-5


def _accountant(kind: Accountant) -> dp_accounting.PrivacyAccountant:
    if kind == "pld":
        return pld_privacy_accountant.PLDAccountant()
    if kind == "rdp":
        return rdp_privacy_accountant.RdpAccountant()
    raise ValueError(f"unknown accountant {kind!r}; use 'pld' or 'rdp'")


def gaussian_event(sigma: float, releases: int = 1, sensitivity: float = 1.0) -> dp_accounting.DpEvent:
    """The DP event of `releases` Gaussian releases with noise std `sigma`."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if releases < 1:
        raise ValueError(f"releases must be >= 1, got {releases}")
    event = dp_accounting.GaussianDpEvent(noise_multiplier=sigma / sensitivity)
    return event if releases == 1 else dp_accounting.SelfComposedDpEvent(event, releases)


def epsilon(event: dp_accounting.DpEvent, delta: float = DEFAULT_DELTA, accountant: Accountant = "pld") -> float:
    acc = _accountant(accountant)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def gaussian_epsilon(
    sigma: float,
    delta: float = DEFAULT_DELTA,
    releases: int = 1,
    sensitivity: float = 1.0,
    accountant: Accountant = "pld",
) -> float:
    """ε at `delta` after `releases` noisy coverage-score responses with noise `sigma`."""
    return epsilon(gaussian_event(sigma, releases, sensitivity), delta, accountant)


def sigma_for_epsilon(
    target_epsilon: float, delta: float = DEFAULT_DELTA, releases: int = 1, accountant: Accountant = "pld"
) -> float:
    """The smallest noise std whose ε is at most `target_epsilon` (dp-accounting's calibration)."""
    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(accountant),
            lambda s: gaussian_event(s, releases),
            target_epsilon,
            delta,
            dp_accounting.LowerEndpointAndGuess(0.05, 5.0),
        )
    )
