"""What fitting a sampling schedule costs: gradient descent beside the derivative-free search (issue 20).

Three parts, each measured alone on the machine (one torch thread for the mixture, as
``benchmarks/samplers.py``; the machine's default threads for the README's model, as a user runs it):

``mixture``: the sampler benchmark's problem (``benchmarks/samplers.py``: a 16-D, 8-component
Gaussian mixture with its exact denoiser, VP linear, 10 000 benchmark noises scored against
scipy's DOP853 solution of the probability-flow ODE). For UniPC-3 at NFE 5 and 10 it fits the
times (calibration as in the sampler benchmark: seed 100, stratified from a pool) and the times
with the Gaussian start, and those with fitted evaluation shifts too, by gradient descent
(``optimize_timesteps(method="gradient")``), and scores them like every sampler row. Beside
them, in the same run: the derivative-free search on the NFE-10 times (the sampler benchmark's
own configuration; ``--derivative-free all`` also reruns the other three, about 45 minutes), and
diffusers' best configuration at NFE 5 and 10 (every
scheduler and spacing of the sampler benchmark). The derivative-free figures recorded by the
sampler benchmark's last full run are printed beside them.

``readme``: the README's snippet, ``pipe.optimize_timesteps(steps=10, scheduler="unipc", n=...)``,
on the README's model (U-Net channels [32, 64], v-prediction, 3 x 24 x 40 fields; trained here on
generated fields with a power-law spectrum, one channel skewed, one bounded, unless ``--pipeline``
names a trained one). Its wall time, and the RMS distance to a 200-step UniPC-3 run on 64 held-out
noises of the fitted times, the default trailing spacing, and the derivative-free search given
the same wall time.

``transfer``: a schedule fitted on one model used on another trained on similar data. Mixtures:
the benchmark mixture A's fit used on two mixtures near A (means moved by N(0, 0.2^2), stds and
weights scaled by up to 20 % and 30 %), beside each one's own fit and the default spacing, against
a 800-step UniPC-3 reference on the benchmark noise. README models: two trained on the same fields
with seeds 0 and 1, each one's fit used on the other, scored on 64 held-out noises.

Usage::

    python benchmarks/schedule_fit.py mixture   # table, benchmarks/results/schedule_fit_mixture.json
    python benchmarks/schedule_fit.py readme --train-steps 2000
    python benchmarks/schedule_fit.py transfer --pipeline runs/fields --train-steps 2000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sciddpm.diffusion.gaussian import GaussianStart
from sciddpm.diffusion.loop import build_scheduler, sample_callable
from sciddpm.diffusion.mixture import GaussianMixture
from sciddpm.diffusion.processes import VP
from sciddpm.diffusion.timesteps import optimize_timesteps, trajectory_rmse
from sciddpm.seeding import noise_for

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import samplers as sampler_benchmark  # noqa: E402  (the sampler benchmark's problem and peers)

F64 = torch.float64
SOLVER = {"type": "unipc", "order": 3}
#: torch's default threads (one per core), which the README's model runs on as a user's would.
DEFAULT_THREADS = torch.get_num_threads()


def mixture(args: argparse.Namespace) -> None:
    """Fit NFE 5 and 10, times and times + start, by gradient; the derivative-free and diffusers peers."""
    torch.set_num_threads(1)
    process = VP("linear")
    betas, log_sigmas = sampler_benchmark.diffusers_grid(process)
    sigma_max = float(log_sigmas[-1].exp())
    gm = GaussianMixture.random(16, 8, seed=0)
    z = torch.randn(10000, 16, generator=torch.Generator().manual_seed(1), dtype=F64)  # samplers.py's noise
    began = time.perf_counter()
    reference = sampler_benchmark.reference(gm, z * math.sqrt(sigma_max**2 + 1), sigma_max)
    print(f"DOP853 reference: {time.perf_counter() - began:.0f} s", flush=True)
    model = gm.model(process, "eps")

    def score(x: torch.Tensor) -> float:
        return float((x.to(F64) - reference).pow(2).mean().sqrt())

    rows = []
    for nfe in (5, 10):
        best = min(
            (
                (
                    score(
                        sampler_benchmark.run_diffusers(
                            factory(spacing), (nfe + 1) // 2 if evals == 2 else nfe, z.clone(), gm, log_sigmas
                        )[0]
                    ),
                    f"{name}/{spacing}",
                )
                for name, factory, evals in sampler_benchmark.diffusers_runs(betas)
                for spacing in ("linspace", "leading", "trailing")
            ),
            key=lambda pair: pair[0] if math.isfinite(pair[0]) else math.inf,
        )
        rows.append({"nfe": nfe, "fit": "diffusers best", "method": best[1], "traj_rmse": best[0]})
        print(f"NFE {nfe}: diffusers best {best[1]} {best[0]:.4f}", flush=True)
    start = GaussianStart.fit(gm.sample(1_000_000, generator=torch.Generator().manual_seed(7)))
    recorded = _recorded_derivative_free()
    fits = [
        ("times", None, {"n": 2000, "pool": 8000}),
        ("times + start", start, {"n": args.start_n, "pool": args.start_pool}),
        ("times + start + shifts", start, {"n": args.start_n, "pool": args.start_pool, "shifts": True}),
    ]
    for nfe in (5, 10):
        for label, gaussian, calibration in fits:
            methods = ["gradient"]
            if "shifts" not in calibration and (
                args.derivative_free == "all" or (nfe == 10 and gaussian is None)
            ):
                methods.append("derivative_free")
            for method in methods:
                options = {"iterations": args.iterations}
                if method == "derivative_free":  # the sampler benchmark's configuration
                    options = (
                        {"max_evaluations": 3000}
                        if gaussian is None
                        else {"max_evaluations": 1500, "restarts": 2, "n": 16000, "pool": 64000}
                    )
                kwargs = {**calibration, **options}
                if method == "derivative_free":
                    kwargs.pop("shifts", None)
                result = optimize_timesteps(
                    model,
                    (16,),
                    SOLVER,
                    nfe,
                    "eps",
                    seed=100,
                    reference_steps=400,
                    start=gaussian,
                    method=method,
                    **kwargs,
                )
                value = score(sample_callable(model, z, result.scheduler, nfe, "eps", start=gaussian))
                row = {
                    "nfe": nfe,
                    "fit": label,
                    "method": method,
                    "traj_rmse": value,
                    "seconds": round(result.seconds, 1),
                    "calib_rmse": result.rmse,
                    "model_evaluations": result.model_evaluations,
                    "start_spacing": result.start_spacing,
                    "timesteps": result.timesteps,
                    **{k: v for k, v in kwargs.items()},
                }
                rows.append(row)
                old = recorded.get((nfe, label))
                note = (
                    f"; recorded derivative-free {old['traj_rmse']:.4f} in {old['seconds']:.0f} s"
                    if old
                    else ""
                )
                print(
                    f"NFE {nfe} {label:13} {method:15} traj_rmse {value:.4f} in {result.seconds:6.1f} s "
                    f"(calibration {result.rmse_start:.4f} -> {result.rmse:.4f}){note}",
                    flush=True,
                )
    for (nfe, label), old in recorded.items():
        rows.append({"nfe": nfe, "fit": label, "method": "derivative_free (recorded)", **old})
    _write(args.json or ROOT / "benchmarks/results/schedule_fit_mixture.json", rows)
    _table(rows)


def _recorded_derivative_free() -> dict[tuple[int, str], dict]:
    """The derivative-free fits of the sampler benchmark's last full run (results/samplers.json)."""
    path = ROOT / "benchmarks/results/samplers.json"
    out = {}
    for row in json.loads(path.read_text()):
        if row.get("calibration") and row["sampler"] in ("unipc_3_opt", "unipc_3_opt_start"):
            label = "times + start" if row["sampler"].endswith("start") else "times"
            out[(row["nfe"], label)] = {
                "traj_rmse": row["traj_rmse"],
                "seconds": row["calibration"]["seconds"],
                "n": row["calibration"]["n"],
                "pool": row["calibration"]["pool"],
            }
    return out


def readme(args: argparse.Namespace) -> None:
    """Time the README's snippet on its model; score it beside trailing and derivative-free at equal time."""
    from sciddpm import Pipeline, train
    from sciddpm.data import ArraySource

    if args.pipeline is not None:
        pipe = Pipeline.load(args.pipeline)
    else:
        run = {
            "pipeline": {
                "encoder": {"type": "standardize"},
                "denoiser": {"type": "unet", "channels": [32, 64], "prediction": "v"},
            },
            "train": {"steps": args.train_steps, "batch_size": 32},
        }
        began = time.perf_counter()
        out = ROOT / "benchmarks/results/.schedule_fit_readme_model"
        pipe = train(run, out, source=ArraySource.from_array(fields(2000)))
        print(f"trained {args.train_steps} steps in {time.perf_counter() - began:.0f} s -> {out}", flush=True)
    snippet = {"steps": 10, "scheduler": "unipc", "n": args.n, "iterations": args.readme_iterations}
    began = time.perf_counter()
    fitted = pipe.optimize_timesteps(**snippet)  # the README's line
    wall = time.perf_counter() - began
    print(f"README snippet {snippet}: {wall:.0f} s (search {fitted.search_seconds:.0f} s)", flush=True)
    # The same set-up, and the gradient search's time for the derivative-free search.
    peer = pipe.optimize_timesteps(**snippet, method="derivative_free", max_seconds=fitted.search_seconds)
    model = pipe.denoiser_fn(None)
    reference_spec = pipe.scheduler_spec({**SOLVER, "spacing": "log_snr"})
    ref_sched = build_scheduler(reference_spec)
    ref_sched.set_timesteps(200)
    x = noise_for(tuple(pipe.latent_shape), 999, 0, 64) * ref_sched.init_noise_sigma
    reference = sample_callable(model, x, ref_sched, 200, "x0")
    rows = [
        {
            "schedule": "trailing (default)",
            "rmse": trajectory_rmse(model, x, reference, pipe.scheduler_spec("unipc"), 10, "x0"),
        },
        {
            "schedule": "gradient fit",
            "rmse": trajectory_rmse(model, x, reference, fitted.scheduler, 10, "x0"),
            "seconds": wall,
        },
        {
            "schedule": "derivative-free, same time",
            "rmse": trajectory_rmse(model, x, reference, peer.scheduler, 10, "x0"),
            "seconds": peer.seconds,
            "timed_out": peer.timed_out,
        },
    ]
    for row in rows:
        print(
            f"{row['schedule']:28} held-out rmse {row['rmse']:.4f}"
            + (f"  {row['seconds']:.0f} s" if "seconds" in row else "")
        )
    _write(
        args.json or ROOT / "benchmarks/results/schedule_fit_readme.json",
        {
            "snippet": snippet,
            "threads": torch.get_num_threads(),
            "train_steps": args.train_steps,
            "rows": rows,
        },
    )


def fields(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 3, 24, 40)`` float32 fields: a power-law (k^-2) Gaussian field, a skewed and a bounded one."""
    rng = np.random.default_rng(seed)
    k = np.hypot(np.fft.fftfreq(24)[:, None], np.fft.rfftfreq(40)[None, :])
    k[0, 0] = 1.0
    amplitude = k**-2.0
    amplitude[0, 0] = 0.0
    out = np.empty((n, 3, 24, 40), np.float32)
    for c in range(3):
        spectrum = rng.normal(size=(n, 24, 21)) + 1j * rng.normal(size=(n, 24, 21))
        out[:, c] = np.fft.irfft2(spectrum * amplitude, s=(24, 40))
    out /= out.std()
    out[:, 1] = np.exp(out[:, 0]) + 0.3 * out[:, 1]
    out[:, 2] = np.tanh(2 * out[:, 2])
    return out


def transfer(args: argparse.Namespace) -> None:
    """A schedule fitted on one model used on another trained on similar data: the accuracy lost."""
    rows = _transfer_mixtures(args) + ([] if args.skip_readme_models else _transfer_readme_models(args))
    _write(args.json or ROOT / "benchmarks/results/schedule_fit_transfer.json", rows)
    print("\n| models | NFE | start | default spacing | own fit | adopted fit | adopted / own |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['models']} | {r['nfe']} | {r['start']} | {r['default']:.4f} | {r['own']:.4f} | "
            f"{r['adopted']:.4f} | {r['adopted'] / r['own']:.2f} |"
        )


def _similar(gm: GaussianMixture, seed: int) -> GaussianMixture:
    """``gm`` with its means moved by N(0, 0.2^2), stds scaled by U(0.8, 1.2), weights by U(0.7, 1.3)."""
    g = torch.Generator().manual_seed(seed)
    weights = gm.weights * (0.7 + 0.6 * torch.rand(len(gm.weights), generator=g, dtype=F64))
    return GaussianMixture(
        weights / weights.sum(),
        gm.means + 0.2 * torch.randn(gm.means.shape, generator=g, dtype=F64),
        gm.stds * (0.8 + 0.4 * torch.rand(len(gm.stds), generator=g, dtype=F64)),
    )


def _fit_mixture(gm: GaussianMixture, with_start: bool, calibration: dict, iterations: int):
    """``optimize_timesteps`` on ``gm``'s exact model at NFE 10; the start is fitted on 10^6 samples."""
    start = None
    if with_start:
        start = GaussianStart.fit(gm.sample(1_000_000, generator=torch.Generator().manual_seed(7)))
    return optimize_timesteps(
        gm.model(VP("linear"), "eps"), (16,), SOLVER, 10, "eps", seed=100, reference_steps=400,
        start=start, iterations=iterations, **calibration,
    )  # fmt: skip


def _mixture_error(model, z: torch.Tensor, reference: torch.Tensor, spec: dict, start) -> float:
    x = sample_callable(model, z, spec, 10, "eps", start=start)
    return float((x.to(F64) - reference).pow(2).mean().sqrt())


def _transfer_mixtures(args: argparse.Namespace) -> list[dict]:
    """Fit on the benchmark mixture A, use on mixtures B near it; each B's own fit beside it."""
    torch.set_num_threads(1)
    a = GaussianMixture.random(16, 8, seed=0)
    z = torch.randn(10000, 16, generator=torch.Generator().manual_seed(1), dtype=F64)
    fine = build_scheduler({**SOLVER, "spacing": "log_snr"})
    fine.set_timesteps(800)
    rows = []
    for with_start, calibration in ((False, {"n": 2000, "pool": 8000}), (True, {"n": 4000, "pool": 32000})):
        fitted_a = _fit_mixture(a, with_start, calibration, args.iterations)
        for k in (1, 2):
            b = _similar(a, k)
            model = b.model(VP("linear"), "eps")
            reference = sample_callable(model, z * fine.init_noise_sigma, fine, 800, "eps")
            own = _fit_mixture(b, with_start, calibration, args.iterations)
            row = {
                "models": f"mixture A -> similar mixture B{k}",
                "nfe": 10,
                "start": "yes" if with_start else "no",
                "default": _mixture_error(model, z, reference, {**SOLVER, "spacing": "trailing"}, own.start),
                "own": _mixture_error(model, z, reference, own.scheduler, own.start),
                "adopted": _mixture_error(model, z, reference, fitted_a.scheduler, fitted_a.start),
            }
            if with_start:  # A's times with B's own start: the data Gaussian is B's to fit
                row["adopted_times_own_start"] = _mixture_error(
                    model, z, reference, fitted_a.scheduler, own.start
                )
            rows.append(row)
            print(row, flush=True)
    return rows


def _transfer_readme_models(args: argparse.Namespace) -> list[dict]:
    """Two README models trained on the same fields with different seeds: each one's fit used on the other."""
    from sciddpm import Pipeline, train
    from sciddpm.data import ArraySource

    torch.set_num_threads(DEFAULT_THREADS)
    pipes = []
    for seed, given in ((0, args.pipeline), (1, args.second_pipeline)):
        if given is not None:
            pipes.append(Pipeline.load(given))
            continue
        run = {
            "pipeline": {
                "encoder": {"type": "standardize"},
                "denoiser": {"type": "unet", "channels": [32, 64], "prediction": "v"},
            },
            "train": {"steps": args.train_steps, "batch_size": 32, "seed": seed},
        }
        out = ROOT / f"benchmarks/results/.schedule_fit_readme_model_seed{seed}"
        pipes.append(train(run, out, source=ArraySource.from_array(fields(2000))))
    snippet = {"steps": 10, "scheduler": "unipc", "n": args.n, "iterations": args.readme_iterations}
    fits = [pipe.optimize_timesteps(**snippet) for pipe in pipes]
    rows = []
    for i, (pipe, other) in enumerate(((pipes[0], fits[1]), (pipes[1], fits[0]))):
        model = pipe.denoiser_fn(None)
        fine = build_scheduler(pipe.scheduler_spec({**SOLVER, "spacing": "log_snr"}))
        fine.set_timesteps(200)
        x = noise_for(tuple(pipe.latent_shape), 999, 0, 64) * fine.init_noise_sigma
        reference = sample_callable(model, x, fine, 200, "x0")
        row = {
            "models": f"README model seed {1 - i} -> seed {i}",
            "nfe": 10,
            "start": "no",
            "default": trajectory_rmse(model, x, reference, pipe.scheduler_spec("unipc"), 10, "x0"),
            "own": trajectory_rmse(model, x, reference, fits[i].scheduler, 10, "x0"),
            "adopted": trajectory_rmse(model, x, reference, other.scheduler, 10, "x0"),
        }
        rows.append(row)
        print(row, flush=True)
    return rows


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {path}")


def _table(rows: list[dict]) -> None:
    print("\n| NFE | fit | method | traj_rmse | seconds | n / pool |\n|---|---|---|---|---|---|")
    for r in rows:
        seconds = f"{r['seconds']:.0f}" if "seconds" in r else "-"
        calib = f"{r['n']} / {r['pool']}" if "n" in r else "-"
        print(f"| {r['nfe']} | {r['fit']} | {r['method']} | {r['traj_rmse']:.4f} | {seconds} | {calib} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("problem", choices=("mixture", "readme", "transfer"))
    parser.add_argument("--iterations", type=int, default=60, help="gradient steps per fit (mixture)")
    parser.add_argument(
        "--start-n", type=int, default=8000, help="calibration samples with the start (mixture)"
    )
    parser.add_argument("--start-pool", type=int, default=64000, help="their pool (mixture)")
    parser.add_argument(
        "--derivative-free",
        choices=("nfe10-times", "all"),
        default="nfe10-times",
        help="which derivative-free fits to rerun beside the gradient ones (mixture)",
    )
    parser.add_argument("--pipeline", help="a trained pipeline directory (readme); default: train one")
    parser.add_argument(
        "--second-pipeline", help="the second README model (transfer, seed 1); default: train it"
    )
    parser.add_argument("--skip-readme-models", action="store_true", help="transfer: the mixtures only")
    parser.add_argument("--train-steps", type=int, default=2000, help="training steps of the README's model")
    parser.add_argument("--n", type=int, default=16, help="calibration samples of the README's snippet")
    parser.add_argument(
        "--readme-iterations", type=int, default=30, help="gradient steps of the README's snippet"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    {"mixture": mixture, "readme": readme, "transfer": transfer}[args.problem](args)


if __name__ == "__main__":
    main()
