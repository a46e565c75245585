"""Where UniPC order 3 loses to order 2 on issue 21's mixture: one draw, one step.

Two diagnoses behind docs/benchmarks.md ("Solver order across processes and spacings"), on the
problem of ``benchmarks/solver_orders.py`` (``GaussianMixture.random(4, 3, seed=0)``, its exact
denoiser, 8192 draws of seed 1, reference: 400 DPM-Solver++(2M) steps in log-SNR):

* ``flow/trailing/21``, UniPC-3's worst cell: each solver's RMS with and without its eight worst
  draws, the worst draw's error for both, and how far the reference moves on that draw with 1600
  and 6400 reference steps (whether the reference or the solver is wrong there).
* ``ve/log_snr/15`` (every step 0.64 long in lambda = -log sigma, half the log-SNR): UniPC-3
  with one step at a time taken at second order, and with only that step at third order,
  against UniPC-2. Steps are numbered from 0; the first two cannot be third order (two earlier
  evaluations are needed). The loop runs UniPC-3 with ``lower_order_uneven`` off; on these equal
  steps the shipped rule changes nothing (checked against ``solvers.unipc`` at the start).

Usage::

    python benchmarks/unipc3_steps.py     # benchmarks/results/unipc3_steps.json, ~10 s
"""

from __future__ import annotations

import itertools
import json
import math
import platform
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from sciddpm.diffusion import solvers
from sciddpm.diffusion.loop import build_scheduler
from sciddpm.diffusion.mixture import GaussianMixture
from sciddpm.diffusion.spacing import log_snr_sigmas

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = 8192


def unipc_with_orders(
    x: torch.Tensor, sigmas: list[float], noise: Any = None, second: Collection[int] = ()
) -> solvers.Solver:
    """UniPC order 3 (``lower_order_uneven`` off) with the steps in ``second`` at order 2.

    A copy of :func:`sciddpm.diffusion.solvers.unipc`'s loop with the order chosen per step;
    ``noise`` is unused (the solver signature has it).
    """
    history: list[tuple[float, torch.Tensor]] = []
    x_last, last_order = x, 0
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(sigmas)):
        predicted = x
        denoised, x = yield x, sigma
        if i > 0:
            corrected = solvers._unipc_update(x_last, sigmas[i - 1], sigma, history, last_order, denoised)
            x = x + (corrected - predicted)
        history.append((-math.log(sigma), denoised))
        if sigma_next == 0:
            x = denoised
            continue
        long_step = math.log(sigma / sigma_next) > solvers.MAX_EXTRAPOLATION
        last_order = 1 if long_step else min(2 if i in second else 3, len(history))
        x_last = x
        x = solvers._unipc_update(x, sigma, sigma_next, history, last_order)
    return x


def levels(process: str, spacing: str, steps: int) -> list[float]:
    """The solver's noise levels (sigma = sigma_t / alpha_t) for a cell."""
    sched = build_scheduler("unipc", process=process, spacing=spacing)
    return sched.sigmas_for(steps)


def rms(e: torch.Tensor) -> float:
    """Root mean square of every element (the issue's measure, data units)."""
    return float(e.pow(2).mean().sqrt())


def worst_draw(gm: GaussianMixture) -> dict[str, Any]:
    """flow/trailing/21: the RMS with and without the worst draws, and the reference's check."""
    process, spacing, steps = "flow", "trailing", 21
    x, ref = gm.trajectory_reference(process, spacing, steps, SAMPLES)
    errors = gm.draw_errors(
        {"unipc2": ("unipc", {"order": 2}), "unipc3": ("unipc", {"order": 3})},
        process, spacing, steps, reference=(x, ref),
    )  # fmt: skip
    out: dict[str, Any] = {"cell": f"{process}/{spacing}/{steps}"}
    for label, e in errors.items():
        per_draw = e.pow(2).sum(1)
        keep = per_draw.argsort()[:-8]
        out[label] = {"rms": rms(e), "rms_without_worst_8": rms(e[keep])}
    worst = int(errors["unipc3"].pow(2).sum(1).argmax())
    out["worst_draw"] = {label: float(e[worst].norm()) for label, e in errors.items()}
    sched = build_scheduler("dpmpp_2m", process=process, spacing=spacing)
    lo, _ = sched.sigma_range()
    start = levels(process, spacing, steps)[0]
    runs = {}
    for n in (400, 1600, 6400):  # the reference's own construction, finer
        fine = [*log_snr_sigmas(n, lo, start), 0.0]
        x_ve = x[worst : worst + 1] / _alpha(process, start)
        runs[n] = solvers.sample(gm.denoise, x_ve, fine, "dpmpp_2m")[0]
    out["reference_check"] = {
        "400_steps_vs_reference": float((runs[400] - ref[worst]).norm()),
        **{f"{n}_steps_vs_400": float((runs[n] - runs[400]).norm()) for n in (1600, 6400)},
    }
    return out


def _alpha(process: str, sigma: float) -> float:
    """alpha_t at the time whose VE level is ``sigma`` (the solvers' ``x = x_t / alpha``)."""
    p = build_scheduler("unipc", process=process).process
    t = p.t_from_sigma_ve(torch.tensor(sigma, dtype=torch.float64))
    return float(p.alpha_sigma(t)[0])


def one_step(gm: GaussianMixture) -> dict[str, Any]:
    """ve/log_snr/15: UniPC-3 with each single step at second order, and with only it at third."""
    process, spacing, steps = "ve", "log_snr", 15
    x, ref = gm.trajectory_reference(process, spacing, steps, SAMPLES)
    sigmas = levels(process, spacing, steps)
    xv = x / _alpha(process, sigmas[0])
    every = set(range(steps))

    def score(second: set[int]) -> float:
        return rms(solvers.sample(gm.denoise, xv, sigmas, unipc_with_orders, second=second) - ref)

    shipped = solvers.sample(gm.denoise, xv, sigmas, "unipc", order=3, lower_order_uneven=False)
    copied = solvers.sample(gm.denoise, xv, sigmas, unipc_with_orders)
    assert torch.equal(shipped, copied), "the copied loop no longer matches solvers.unipc"
    on = solvers.sample(gm.denoise, xv, sigmas, "unipc", order=3)
    assert torch.equal(on, shipped), "the third-order rule changes this cell"
    order2 = score(every)
    rows = []
    for i in range(2, steps - 1):
        rows.append(
            {
                "step": i,
                "log_snr_from": round(-2 * math.log(sigmas[i]), 3),
                "lambda_from": round(-math.log(sigmas[i]), 3),
                "lambda_step": round(math.log(sigmas[i] / sigmas[i + 1]), 3),
                "only_it_second": score({i}) / order2,
                "only_it_third": score(every - {i}) / order2,
            }
        )
    return {"cell": f"{process}/{spacing}/{steps}", "unipc2": order2, "unipc3": score(set()) / order2,
            "steps": rows}  # fmt: skip


def main() -> None:
    torch.set_num_threads(1)
    gm = GaussianMixture.random(4, 3, seed=0)
    begin = time.perf_counter()
    report = {"worst_draw": worst_draw(gm), "one_step": one_step(gm)}
    report["seconds"] = time.perf_counter() - begin
    report["machine"] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    w = report["worst_draw"]
    print(f"{w['cell']}: RMS (without each solver's 8 worst draws)")
    for label in ("unipc2", "unipc3"):
        print(f"  {label}: {w[label]['rms']:.4f} ({w[label]['rms_without_worst_8']:.4f})")
    worst = w["worst_draw"]
    print(f"  UniPC-3's worst draw: error {worst['unipc3']:.3f} (UniPC-2: {worst['unipc2']:.3f})")
    print(f"  the reference on that draw, run finer: {w['reference_check']}")
    o = report["one_step"]
    print(f"{o['cell']}: UniPC-3 / UniPC-2 = {o['unipc3']:.3f}")
    print("| step | lambda from | step length | only this step at order 2 | only this step at order 3 |")
    print("|---|---|---|---|---|")
    for r in o["steps"]:
        print(
            f"| {r['step']} | {r['lambda_from']} | {r['lambda_step']} "
            f"| {r['only_it_second']:.3f} | {r['only_it_third']:.3f} |"
        )
    out = ROOT / "benchmarks/results/unipc3_steps.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
