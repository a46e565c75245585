"""The diffusion maths: one continuous-time core, many thin samplers (k-diffusion's layout).

- :mod:`~sciddpm.diffusion.processes`: noise processes ``x_t = alpha x0 + sigma eps`` (VP, VE, EDM,
  rectified flow) and their VE-equivalent view ``(x_t / alpha, sigma / alpha)``;
- :mod:`~sciddpm.diffusion.parametrization`: what a denoiser predicts (eps, x0, v, flow, edm), the
  conversions between them, training targets and loss weights;
- :mod:`~sciddpm.diffusion.preconditioning`: the one wrapper that makes a network a denoiser
  (input scale, noise input, output map, guidance), for training and sampling;
- :mod:`~sciddpm.diffusion.solvers`: every update rule (DDPM, DDIM, Euler, Heun, DPM-Solver++, UniPC);
- :mod:`~sciddpm.diffusion.spacing`: where N steps put their noise levels;
- :mod:`~sciddpm.diffusion.schedulers`: the registered schedulers, solvers behind ``step``;
- :mod:`~sciddpm.diffusion.loop`: the one sampling loop and ``sample_callable``;
- :mod:`~sciddpm.diffusion.gaussian`: the analytic Gaussian start;
- :mod:`~sciddpm.diffusion.timesteps`: sampling times fitted to one model;
- :mod:`~sciddpm.diffusion.descent`: a sampling run differentiated in its noise levels, and the
  gradient descent that fits them;
- :mod:`~sciddpm.diffusion.mixture`: a Gaussian mixture with its exact denoiser, for tests and benchmarks.

The subpackage imports nothing at import time; import the module you need.
"""
