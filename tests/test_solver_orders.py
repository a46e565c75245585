"""Second-order samplers against Euler on every process and spacing, and the long-step rules behind it.

Issue 21, item 2: the issue's mixture (3 components in 4-D, exact denoiser), RMS over 512 draws to
a 400-step DPM-Solver++(2M) run from the same noise; ``benchmarks/solver_orders.py`` runs the full
grid (4-25 steps) and the third-order comparison of item 1, which is still open.
"""

from __future__ import annotations

import math

import pytest
import torch

from sciddpm.diffusion import solvers
from sciddpm.diffusion.mixture import GaussianMixture
from sciddpm.diffusion.solvers import sample

F64 = torch.float64
GM = GaussianMixture.random(4, 3, seed=0)


def _errors(process: str, spacing: str, steps: int, samples: int, names: dict) -> dict[str, float]:
    return GM.solver_errors(names, process, spacing, steps, samples)


SECOND_ORDER = {
    "euler": ("euler", {}),
    "heun": ("heun", {}),
    "dpmpp_2m": ("dpmpp_2m", {}),
    "unipc2": ("unipc", {"order": 2}),
}


# Step counts where the 0.1 samplers failed on each process (5-8: Heun on flow, 2M/UniPC-2 on
# EDM's and VP's last step) and one where they converge (18).
@pytest.mark.parametrize("process", ["vp", "ve", "edm", "flow"])
@pytest.mark.parametrize("spacing", ["linspace", "trailing", "leading", "log_snr", "karras"])
def test_second_order_samplers_are_no_worse_than_euler(process: str, spacing: str) -> None:
    worse = []
    for steps in (5, 7, 18):
        errors = _errors(process, spacing, steps, 512, SECOND_ORDER)
        worse += [
            f"{name} at {steps} steps: {errors[name]:.3g} vs euler {errors['euler']:.3g}"
            for name in ("heun", "dpmpp_2m", "unipc2")
            if errors[name] > 1.05 * errors["euler"]
        ]
    assert worse == []


def test_heun_on_flow_from_its_first_level_is_as_accurate_as_euler() -> None:
    """The issue's input: flow, default spacing; 0.1's Heun had RMS 169.9 / 5.22 / 0.659 here."""
    for steps in (5, 15, 60):
        errors = _errors("flow", "trailing", steps, 64, {"euler": ("euler", {}), "heun": ("heun", {})})
        assert errors["heun"] <= errors["euler"], (steps, errors)


# -- the rules, on closed forms -------------------------------------------------------------------


def _linear_in_lambda(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A denoiser that ignores x and is linear in lambda = -log sigma: 0.3 + 0.2 lambda."""
    return torch.full_like(x, 0.3 - 0.2 * math.log(sigma))


def _exact_linear(x: float, sigma: float, sigma_next: float) -> float:
    """dx/dlambda = D - x with D = a + b lambda, solved from lambda to lambda + h."""
    a, b = 0.3, 0.2
    lam, h = -math.log(sigma), math.log(sigma / sigma_next)
    # x(l) = e^{-(l - lam)} x + a (1 - e^{-h}) + b [l - 1 - (lam - 1) e^{-h}]
    lam_next = lam + h
    return math.exp(-h) * x + a * -math.expm1(-h) + b * (lam_next - 1 - (lam - 1) * math.exp(-h))


@pytest.mark.parametrize("ratio", [1.5, 10.0, 22026.0])
def test_heun_is_exact_for_a_denoiser_linear_in_lambda_on_a_long_step(ratio: float) -> None:
    """The exponential corrector (sigma falls > 2x) is exact there; Karras's trapezoid is not."""
    x = torch.tensor([1.7], dtype=F64)
    got = sample(_linear_in_lambda, x, [ratio, 1.0], "heun")
    want = _exact_linear(1.7, ratio, 1.0)
    if ratio > solvers.HEUN_EXPONENTIAL_RATIO:
        assert got.item() == pytest.approx(want, abs=1e-12)
    else:  # a short step keeps Heun's trapezoid in sigma: second order, not exact here
        assert got.item() != pytest.approx(want, abs=1e-6)
        assert got.item() == pytest.approx(want, abs=1e-2)


def _denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return GM.denoise(x, sigma)


def test_a_multistep_step_longer_than_the_limit_is_an_euler_step() -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=F64) * 10
    long_last = [10.0, 8.0, 0.5]  # log(8 / 0.5) = 2.77 > MAX_EXTRAPOLATION
    euler = sample(_denoiser, x, long_last, "euler")
    for name, options in [("dpmpp_2m", {}), ("dpmpp_3m", {}), ("dpmpp_2m_sde", {"eta": 0.0})]:
        torch.testing.assert_close(
            sample(_denoiser, x, long_last, name, **options), euler, rtol=0, atol=1e-12
        )
    short_last = [10.0, 8.0, 1.5]  # log(8 / 1.5) = 1.67: extrapolates
    assert not torch.allclose(
        sample(_denoiser, x, short_last, "dpmpp_2m"), sample(_denoiser, x, short_last, "euler")
    )


def test_unipc_predicts_a_long_step_at_order_one_whatever_its_order() -> None:
    """Orders 2 and 3 differ only where three points are extrapolated; the long step has none."""
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=F64) * 10
    sigmas = [10.0, 8.0, 6.0, 0.3, 0.0]  # the third step is 3.0 in lambda
    seen = {}
    for order in (1, 2, 3):
        states: list[torch.Tensor] = []
        record = lambda i, x, s, d, out=states: out.append(x)  # noqa: E731
        sample(_denoiser, x, sigmas, "unipc", callback=record, order=order)
        seen[order] = states
    torch.testing.assert_close(seen[2][3], seen[3][3], rtol=0, atol=1e-12)
    assert not torch.allclose(seen[1][3], seen[2][3])  # order 1 differs earlier (second step)


def test_dpmpp_3m_lowers_its_order_to_exactly_dpmpp_2m() -> None:
    """Its second step is the 2M (midpoint) step, as in diffusers, so two steps are 2M's two."""
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(2), dtype=F64) * 10
    sigmas = [10.0, 5.0, 2.0]
    torch.testing.assert_close(
        sample(_denoiser, x, sigmas, "dpmpp_3m"), sample(_denoiser, x, sigmas, "dpmpp_2m"), rtol=0, atol=1e-12
    )
    longer = [10.0, 5.0, 2.0, 1.0]  # the third step uses three points: third order differs
    assert not torch.allclose(
        sample(_denoiser, x, longer, "dpmpp_3m"), sample(_denoiser, x, longer, "dpmpp_2m")
    )


def test_dpmpp_3m_takes_a_long_step_after_three_points_at_first_order() -> None:
    """The third-order branch checks the step's length too: from 3 earlier points, a long step is Euler's."""
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(3), dtype=F64) * 10
    warm = [10.0, 8.0, 6.0, 5.0]  # three steps: D at 10, 8, 6 are known when the step from 5 starts
    x5 = sample(_denoiser, x, warm, "dpmpp_3m")
    euler_step = x5 + (x5 - _denoiser(x5, 5.0)) / 5.0 * (0.3 - 5.0)  # log(5 / 0.3) = 2.8
    torch.testing.assert_close(sample(_denoiser, x, [*warm, 0.3], "dpmpp_3m"), euler_step, rtol=0, atol=1e-12)
    extrapolated = sample(_denoiser, x, [*warm, 2.0], "dpmpp_3m")  # log(5 / 2) = 0.9: third order
    x5_euler = x5 + (x5 - _denoiser(x5, 5.0)) / 5.0 * (2.0 - 5.0)
    assert not torch.allclose(extrapolated, x5_euler)


def test_unipc_corrects_a_long_step_with_unic_1() -> None:
    """A long step is predicted at order 1 and corrected by UniC-1 (bh2, rho = 1/2), whatever the order.

    Zhao et al. 2023, Alg. 2-3 written out for sigmas 10 -> 8 -> 0.3 (log(8 / 0.3) = 3.3) -> 0.25;
    UniC-1 on a step from ``s`` to ``s'`` is ``e^-h x + (1 - e^-h) (D_s + (D_s' - D_s) / 2)``, and
    the last step, UniP-2, extrapolates from D at 0.3 and 8. Without the rule the correction at 0.3
    would be UniC-2.
    """
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(4), dtype=F64) * 10
    calls: list[tuple[torch.Tensor, float, torch.Tensor]] = []
    record = lambda i, x, s, d: calls.append((x, s, d))  # noqa: E731
    got = sample(_denoiser, x, [10.0, 8.0, 0.3, 0.25], "unipc", callback=record, order=2)
    (x10, _, d10), (_, _, d8), (x03, _, d03) = calls

    def unic1(x: torch.Tensor, s: float, s1: float, d: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        h = math.log(s / s1)
        return math.exp(-h) * x - math.expm1(-h) * (d + (d1 - d) / 2)

    c8 = unic1(x10, 10.0, 8.0, d10, d8)
    h = math.log(8.0 / 0.3)
    torch.testing.assert_close(x03, math.exp(-h) * c8 - math.expm1(-h) * d8, rtol=0, atol=1e-10)  # UniP-1
    c03 = unic1(c8, 8.0, 0.3, d8, d03)
    h2 = math.log(0.3 / 0.25)
    r = (-math.log(8.0) + math.log(0.3)) / h2
    want = math.exp(-h2) * c03 - math.expm1(-h2) * d03 - math.expm1(-h2) * 0.5 * (d8 - d03) / r
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
