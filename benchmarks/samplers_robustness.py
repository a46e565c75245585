"""How robust the sampler benchmark's ``unipc_3_opt_start`` rows are: to the start's fit and to the noise.

``benchmarks/samplers.py`` fits the start on 10^6 mixture samples, which here are free: the
benchmark's model is the mixture's exact denoiser, so that fit has nearly the model's own
moments, a best case. A trained model's start is fitted on its finite training set, and the
fit's sampling error (a mean error is a residual the first-step correction cannot tell from the
model's) stays in the start. This scores the schedules ``samplers.py`` recorded, unchanged, on
its noise and reference, with starts fitted on realistic data sizes (several fit seeds each) and
on the mixture's exact moments, beside the best diffusers configuration at the same NFE.

At 10 evaluations the error is mostly a count of the few trajectories that end in another
mixture component, so a figure on 10 000 noises is noisy: ``--noises N`` scores everything on N
fresh noises (``--noise-seed``) instead of the benchmark's, the diffusers configuration too.

Usage (after ``benchmarks/samplers.py``, whose JSON it reads)::

    python benchmarks/samplers_robustness.py    # benchmarks/results/samplers_robustness.json
    python benchmarks/samplers_robustness.py --noises 160000 --sizes 1000000 --fit-seeds 1 \
        --json benchmarks/results/samplers_population.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from samplers import F64, ROOT, _best, diffusers_grid, diffusers_runs, reference, run_diffusers

from sciddpm.diffusion.gaussian import GaussianStart
from sciddpm.diffusion.loop import sample_callable
from sciddpm.diffusion.mixture import GaussianMixture
from sciddpm.diffusion.processes import VP


def exact_start(gm: GaussianMixture) -> GaussianStart:
    """The mixture's own mean and covariance: sum_k w_k (m_k m_k^T + s_k^2 I) - mu mu^T."""
    w, m, s = gm.weights, gm.means, gm.stds
    mean = (w[:, None] * m).sum(0)
    second = torch.einsum("k,ki,kj->ij", w, m, m) + (w * s**2).sum() * torch.eye(m.shape[1], dtype=F64)
    eigvals, eigvecs = torch.linalg.eigh(second - torch.outer(mean, mean))
    return GaussianStart(mean, eigvecs, eigvals.clamp_min(0))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=Path, default=ROOT / "benchmarks/results/samplers.json")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/samplers_robustness.json")
    parser.add_argument(
        "--noises", type=int, default=0, help="score on this many fresh noises (0: the benchmark's)"
    )
    parser.add_argument("--noise-seed", type=int, default=7777)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 60_000, 1_000_000])
    parser.add_argument("--fit-seeds", type=int, default=5, help="fits per size, from fresh samples")
    # The same mixture, noise and reference as samplers.py with these defaults.
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = json.loads(args.rows.read_text())
    schedules = {r["nfe"]: r["calibration"] for r in rows if r["sampler"] == "unipc_3_opt_start"}
    if not schedules:
        raise SystemExit(f"{args.rows} has no unipc_3_opt_start rows; run benchmarks/samplers.py first")
    process = VP("linear")
    betas, log_sigmas = diffusers_grid(process)
    sigma_max = float(log_sigmas[-1].exp())
    gm = GaussianMixture.random(args.dim, args.components, seed=args.seed)
    if args.noises:
        z = torch.randn(
            args.noises, args.dim, generator=torch.Generator().manual_seed(args.noise_seed), dtype=F64
        )
    else:
        z = torch.randn(args.n, args.dim, generator=torch.Generator().manual_seed(args.seed + 1), dtype=F64)
    ref = reference(gm, z * math.sqrt(sigma_max**2 + 1), sigma_max)
    model = gm.model(process, "eps")

    def score(start: GaussianStart, calibration: dict, nfe: int) -> float:
        # As optimize_timesteps returns it: a fitted schedule keeps third order on every step.
        spec = {
            "type": "unipc",
            "order": 3,
            "lower_order_uneven": False,
            "timesteps": calibration["timesteps"],
        }
        x = sample_callable(model, z, spec, nfe, "eps", start=start)
        return float((x - ref).pow(2).mean().sqrt())

    factories = {name: factory for name, factory, _ in diffusers_runs(betas)}

    results = []
    for nfe, calibration in sorted(schedules.items()):
        row = _best(rows, "diffusers", "traj_rmse", nfe)
        best = row["traj_rmse"]
        if args.noises:  # the same diffusers configuration, on the same fresh noise
            x, calls = run_diffusers(
                factories[row["sampler"]](row["spacing"]), row["nfe"], z.clone(), gm, log_sigmas
            )
            assert calls == row["nfe"], "only single-evaluation diffusers steps are rescored"
            best = float((x.to(F64) - ref).pow(2).mean().sqrt())
        fits: list[tuple[str, list[float]]] = [
            (
                f"{size:,} samples",
                [
                    score(
                        GaussianStart.fit(gm.sample(size, torch.Generator().manual_seed(1000 + k))),
                        calibration,
                        nfe,
                    )
                    for k in range(args.fit_seeds)
                ],
            )
            for size in args.sizes
        ]
        fits.append(("exact moments", [score(exact_start(gm), calibration, nfe)]))
        for fit, errors in fits:
            results.append(
                {
                    "nfe": nfe,
                    "fit": fit,
                    "traj_rmse": errors,
                    "mean": sum(errors) / len(errors),
                    "diffusers_best": best,
                    "diffusers_config": f"{row['sampler']} {row['spacing']}",
                    "noises": len(z),
                    "fitted_with": calibration.get("start_fit"),
                }
            )
    print("| NFE | start fitted on | traj_rmse mean (min–max over fits) | / diffusers best |")
    print("|---|---|---|---|")
    for r in results:
        spread = f" ({min(r['traj_rmse']):.4f}–{max(r['traj_rmse']):.4f})" if len(r["traj_rmse"]) > 1 else ""
        print(
            f"| {r['nfe']} | {r['fit']} | {r['mean']:.4f}{spread} | {r['mean'] / r['diffusers_best']:.2f} |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
