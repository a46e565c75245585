"""Fewer network evaluations on a trained model: optimised times, then a Gaussian start.

For a pipeline trained by ``sciddpm demo`` (digits) this

1. fits the data's Gaussian in model space (``Pipeline.gaussian_start``);
2. optimises UniPC-3's 10 sampling times for one class, without and with that start
   (``Pipeline.optimize_timesteps``, calibration noise seed 12345);
3. scores each schedule, and the default trailing spacing, on *other* noise (seed 999) by the RMS
   distance to a 200-step UniPC-3 run from the same noise (``trajectory_rmse``).

Run:  sciddpm demo --out demo_out && python examples/fewer_steps.py demo_out/model
(``--n`` and ``--iterations`` trade time for fit)

The start saves evaluations only if the search moves the first time down; the script prints where
it ended. On the demo model it stayed near the top (see docs/benchmarks.md), so there the two
optimised rows differ by their search paths, not by the start.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sciddpm import Pipeline
from sciddpm.diffusion.loop import build_scheduler, sample_callable
from sciddpm.diffusion.timesteps import trajectory_rmse
from sciddpm.registry import get_registry
from sciddpm.seeding import noise_for


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pipeline", help="a saved pipeline directory, e.g. demo_out/model")
    parser.add_argument("--digit", type=int, default=3, help="the class to sample")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--n", type=int, default=128, help="calibration samples")
    parser.add_argument("--iterations", type=int, default=100, help="gradient steps per search")
    parser.add_argument("--held-out", type=int, default=256, help="samples scored on fresh noise")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipe = Pipeline.load(args.pipeline)
    source = get_registry().build("data", "digits", size=pipe.data_shape[-1], split="train", seed=0)
    start = pipe.gaussian_start(source, n=1000)
    solver = {"type": "unipc", "order": 3}
    prediction = "x0"  # denoiser_fn returns the model's x0 estimate
    model = pipe.denoiser_fn(args.digit)

    fitted = {}
    for name, options in (("optimised times", {}), ("optimised times + Gaussian start", {"start": start})):
        began = time.perf_counter()
        fitted[name] = pipe.optimize_timesteps(
            args.steps, solver, condition=args.digit, n=args.n, iterations=args.iterations, **options
        )
        print(f"{name}: fitted in {time.perf_counter() - began:.0f} s", flush=True)

    # Held-out noise and its accurate solution; every schedule starts from it at t = 1.
    reference_spec = pipe.scheduler_spec({**solver, "spacing": "log_snr"})
    reference_scheduler = build_scheduler(reference_spec)
    reference_scheduler.set_timesteps(200)
    x = noise_for(tuple(pipe.latent_shape), 999, 0, args.held_out) * reference_scheduler.init_noise_sigma
    reference = sample_callable(model, x, reference_spec, 200, prediction)
    rows = {
        "trailing spacing": trajectory_rmse(
            model,
            x,
            reference,
            pipe.scheduler_spec({**solver, "spacing": "trailing"}),
            args.steps,
            prediction,
        )
    }
    for name, result in fitted.items():
        rows[name] = trajectory_rmse(
            model, x, reference, result.scheduler, args.steps, prediction, start=result.start
        )
    first = pipe.scheduler.process.sigma_ve(torch.tensor(fitted[name].timesteps[0])).item()
    print(f"\nUniPC-3, {args.steps} evaluations, digit {args.digit}: RMS distance to a 200-step run")
    for name, value in rows.items():
        print(f"  {name:36} {value:.4f}")
    print(f"  (with the start the first evaluation is at sigma {first:.2f})")
    print(json.dumps({"steps": args.steps, "digit": args.digit, "traj_rmse": rows, "first_sigma": first}))


if __name__ == "__main__":
    main()
