"""The microscopy tests use small tensors, for which one thread is fastest on a shared machine."""

import torch

torch.set_num_threads(1)
