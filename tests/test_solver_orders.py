"""Higher-order samplers against their lower-order versions on every process and spacing; the rules behind it.

Issue 21, items 1-2: the issue's mixture (3 components in 4-D, exact denoiser), RMS over 512 draws to
a 400-step DPM-Solver++(2M) run from the same noise. ``benchmarks/solver_orders.py`` runs the full
grid (4-25 steps, 8192 draws). The third-order test takes 6-12 steps, where 512 draws measure
solver error rather than a count of the rare trajectories that switch mixture component; it covers
3M everywhere and UniPC-3 on Karras spacing. UniPC-3 elsewhere is still open (docs/benchmarks.md).
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


THIRD_ORDER = {
    "dpmpp_2m": ("dpmpp_2m", {}),
    "dpmpp_3m": ("dpmpp_3m", {}),
    "unipc2": ("unipc", {"order": 2}),
    "unipc3": ("unipc", {"order": 3}),
}


# Without the steady-step rule 3M failed in 20 of these 80 cells (up to 1.85x, edm/karras/12) and
# UniPC-3 in 9 of the 16 Karras cells (up to 5.3x, edm/karras/12). On Karras spacing at these step
# counts every step after the warm-up is long and growing, so both run at second order there.
@pytest.mark.parametrize("process", ["vp", "ve", "edm", "flow"])
@pytest.mark.parametrize("spacing", ["linspace", "trailing", "leading", "log_snr", "karras"])
def test_third_order_samplers_are_no_worse_than_second_order(process: str, spacing: str) -> None:
    worse = []
    for steps in (6, 8, 10, 12):
        errors = _errors(process, spacing, steps, 512, THIRD_ORDER)
        pairs = [("dpmpp_3m", "dpmpp_2m")] + ([("unipc3", "unipc2")] if spacing == "karras" else [])
        worse += [
            f"{high} at {steps} steps: {errors[high]:.3g} vs {low} {errors[low]:.3g}"
            for high, low in pairs
            if errors[high] > 1.05 * errors[low]
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


# -- third order only on steady steps ---------------------------------------------------------------


def test_third_order_step_refuses_growing_long_and_spread_steps() -> None:
    assert solvers.third_order_step(0.5, 0.5, 0.5)  # uniform
    assert solvers.third_order_step(0.4, 0.5, 0.6)  # shrinking
    assert solvers.third_order_step(0.5 * 1.01, 0.5, 0.5)  # growing within rounding
    assert not solvers.third_order_step(0.6, 0.5, 0.5)  # growing
    assert solvers.third_order_step(0.25, 0.2, 0.2)  # growing, but shorter than THIRD_ORDER_SHORT_STEP
    assert not solvers.third_order_step(1.5, 1.5, 1.5)  # longer than THIRD_ORDER_MAX_STEP
    assert not solvers.third_order_step(0.4, 0.5, 7.0)  # after a step 14x the one before
    level = torch.tensor(0.5, dtype=F64, requires_grad=True)  # schedule fitting passes tensors
    assert solvers.third_order_step(level, level * 1.1, level)


def test_the_third_order_rule_reads_the_newest_step_first() -> None:
    # h1 is the step just before, h2 the one before that: swapping them flips both decisions.
    assert solvers.third_order_step(0.4, 0.7, 0.3) and not solvers.third_order_step(0.4, 0.3, 0.7)
    assert solvers.third_order_step(0.2, 0.6, 0.25) and not solvers.third_order_step(0.2, 0.25, 0.6)


@pytest.mark.parametrize(
    ("third", "second", "options"), [("dpmpp_3m", "dpmpp_2m", {}), ("unipc", "unipc", {"order": 3})]
)
def test_short_growing_steps_keep_third_order(third: str, second: str, options: dict, monkeypatch) -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(7), dtype=F64) * 10
    short = [10.0, 9.5, 8.9, 8.2, 7.4, 6.5]  # steps of 0.05, 0.07, 0.08, 0.10, 0.13: short, growing
    low = {"order": 2} if second == "unipc" else {}
    got = sample(_denoiser, x, short, third, **options)
    assert not torch.allclose(got, sample(_denoiser, x, short, second, **low), rtol=0, atol=1e-9)
    monkeypatch.setattr(solvers, "THIRD_ORDER_SHORT_STEP", 0.0)  # without the exemption: second order
    torch.testing.assert_close(
        sample(_denoiser, x, short, third, **options),
        sample(_denoiser, x, short, second, **low),
        rtol=0,
        atol=1e-12,
    )


GROWING = [10.0, 9.0, 7.5, 5.0, 2.5, 0.8, 0.0]  # steps of 0.11, 0.18, 0.41, 0.69, 1.14 in lambda


@pytest.mark.parametrize(
    ("third", "second", "options"), [("dpmpp_3m", "dpmpp_2m", {}), ("unipc", "unipc", {"order": 3})]
)
def test_on_steps_that_grow_third_order_is_exactly_second_order(
    third: str, second: str, options: dict
) -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(5), dtype=F64) * 10
    low = {"order": 2} if second == "unipc" else {}
    got = sample(_denoiser, x, GROWING, third, **options)
    torch.testing.assert_close(got, sample(_denoiser, x, GROWING, second, **low), rtol=0, atol=1e-12)
    full = sample(_denoiser, x, GROWING, third, lower_order_uneven=False, **options)
    assert not torch.allclose(full, got)  # lower_order_uneven=False keeps third order


def test_dpmpp_3m_takes_a_growing_step_after_three_points_as_the_2m_step() -> None:
    """DPM-Solver++(2M)'s step (Lu et al. 2022b, Alg. 2) from the last two evaluations, written out."""
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(6), dtype=F64) * 10
    warm = [10.0, 8.0, 6.0, 5.0]  # the third step (6 -> 5, 0.18 after 0.29) is third order
    calls: list[tuple[torch.Tensor, float, torch.Tensor]] = []
    record = lambda i, x, s, d: calls.append((x, s, d))  # noqa: E731
    got = sample(_denoiser, x, [*warm, 3.5], "dpmpp_3m", callback=record)  # 0.36 after 0.18: grows
    (_, _, d6), (x5, _, d5) = calls[2], calls[3]
    h, h_last = math.log(5.0 / 3.5), math.log(6.0 / 5.0)
    r = h_last / h
    d = (1 + 1 / (2 * r)) * d5 - (1 / (2 * r)) * d6
    torch.testing.assert_close(got, (3.5 / 5.0) * x5 - math.expm1(-h) * d, rtol=0, atol=1e-12)


def test_draw_errors_are_each_draws_sample_minus_the_reference() -> None:
    from sciddpm.diffusion.loop import build_scheduler, sample_callable

    names = {"euler": ("euler", {}), "unipc": ("unipc", {"order": 3})}
    draws = GM.draw_errors(names, "ve", "karras", 6, samples=64)
    x, ref = GM.trajectory_reference("ve", "karras", 6, samples=64)
    model = GM.model(build_scheduler("euler", process="ve").process, "x0")
    y = sample_callable(model, x, "unipc", 6, "x0", process="ve", spacing="karras", order=3)
    assert draws["unipc"].shape == (64, 4)
    torch.testing.assert_close(draws["unipc"], y - ref, rtol=0, atol=0)
    rms = GM.solver_errors(names, "ve", "karras", 6, samples=64)
    assert rms["euler"] == pytest.approx(float(draws["euler"].pow(2).mean().sqrt()), rel=1e-12)


def test_component_is_the_nearest_mode_of_clean_draws() -> None:
    g = torch.Generator().manual_seed(3)
    k = torch.multinomial(GM.weights, 2000, replacement=True, generator=g)
    x0 = GM.means[k] + GM.stds[k, None] * torch.randn(2000, 4, generator=g, dtype=torch.float64)
    # The components are >= 4 apart and at most 0.28 wide: a draw is its own component's.
    assert torch.equal(GM.component(x0), k)
    assert torch.equal(GM.component(GM.means), torch.arange(3))
