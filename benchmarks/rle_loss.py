"""RLE loss, forward + backward: sightkit's ``rle_loss`` against the official code, written out.

``python -m benchmarks rle_loss [--batches 32 256 1024] [--repeats 7] [--threads 1 2]``

The peer: mmpose's ``RLELoss`` needs mmcv (compiled operators) and mmengine, which this
project does not install; so the peer is a direct transcription of the official
implementation (Jeff-sjtu/res-loglikelihood-regression): its ``RealNVP`` (separate scale and
translation nets, a ``torch.distributions.MultivariateNormal`` prior), ``RegressFlow``'s
``nf_loss = log(sigma) - log_phi`` and ``RLELoss``'s ``logQ`` term, sum over the batch
divided by its size. Both flows hold the same weights, and sightkit runs ``form="official"``,
so the two compute the same number.

One step: the loss of ``B`` people x 17 keypoints (predictions and ``sigma`` require grad, as
do the flow's parameters) and its backward. Time: median over ``--repeats`` after a warm-up,
wall and process CPU time, at each of the ``--threads`` counts of intra-op threads (default 1
and 2; figures in ``benchmarks/results/rle_loss.json``). Agreement: the largest
relative difference of the loss and of the gradients of ``pred``, ``sigma`` and the flow.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks._conditions import Results, add_threads_argument, print_ratio_summary, ratio
from sightkit.losses import rle_loss
from sightkit.nn import RealNVP


class OfficialRealNVP(nn.Module):
    """``rlepose/models/layers/real_nvp.py`` with ``regression_nf.py``'s ``nets`` / ``nett``."""

    def __init__(self) -> None:
        super().__init__()

        def nets() -> nn.Module:
            return nn.Sequential(
                nn.Linear(2, 64), nn.LeakyReLU(), nn.Linear(64, 64), nn.LeakyReLU(), nn.Linear(64, 2), nn.Tanh()
            )

        def nett() -> nn.Module:
            return nn.Sequential(nn.Linear(2, 64), nn.LeakyReLU(), nn.Linear(64, 64), nn.LeakyReLU(), nn.Linear(64, 2))

        self.prior = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
        self.register_buffer("mask", torch.tensor([[0.0, 1.0], [1.0, 0.0]] * 3))
        self.t = nn.ModuleList([nett() for _ in range(6)])
        self.s = nn.ModuleList([nets() for _ in range(6)])

    def backward_p(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det_j, z = x.new_zeros(x.shape[0]), x
        for i in reversed(range(len(self.t))):
            z_ = self.mask[i] * z
            s = self.s[i](z_) * (1 - self.mask[i])
            t = self.t[i](z_) * (1 - self.mask[i])
            z = (1 - self.mask[i]) * (z - t) * torch.exp(-s) + z_
            log_det_j -= s.sum(dim=1)
        return z, log_det_j

    def log_prob(self, x: Tensor) -> Tensor:
        z, logp = self.backward_p(x)
        return self.prior.log_prob(z) + logp


def official_loss(pred: Tensor, sigma: Tensor, target: Tensor, weight: Tensor, flow: OfficialRealNVP) -> Tensor:
    """``RegressFlow.forward`` (training branch) followed by ``RLELoss.forward``."""
    batch, joints = pred.shape[:2]
    bar_mu = (pred - target) / sigma
    log_phi = flow.log_prob(bar_mu.reshape(-1, 2)).reshape(batch, joints, 1)
    nf_loss = torch.log(sigma) - log_phi
    gt_uv_weight = weight[..., None].expand_as(pred)
    nf_loss = nf_loss * gt_uv_weight[:, :, :1]
    amp = 1 / math.sqrt(2 * math.pi)
    q_logprob = (torch.log(sigma / amp) + torch.abs(target - pred) / (math.sqrt(2) * sigma + 1e-9)) * gt_uv_weight
    loss = nf_loss + q_logprob
    return loss.sum() / len(loss)


def sightkit_loss(pred: Tensor, sigma: Tensor, target: Tensor, weight: Tensor, flow: nn.Module) -> Tensor:
    """``rle_loss`` in the official form, reduced as the official code does (sum / batch size)."""
    return rle_loss(pred, sigma, target, flow, weight, form="official", reduction="sum") / len(pred)


def inputs(batch: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(batch, 17, 2, generator=g) - 0.5
    target = pred + 0.05 * torch.randn(batch, 17, 2, generator=g)
    sigma = torch.rand(batch, 17, 2, generator=g) * 0.2 + 0.02
    weight = (torch.rand(batch, 17, generator=g) > 0.2).float()
    return pred, sigma, target, weight


Loss = Callable[[Tensor, Tensor, Tensor, Tensor, nn.Module], Tensor]


def run_once(loss: Loss, flow: nn.Module, pred: Tensor, sigma: Tensor, target: Tensor, weight: Tensor) -> list[Tensor]:
    """The loss and the gradients of pred, sigma and each flow parameter (by name: the two
    flows register their nets in different orders)."""
    p, s = pred.clone().requires_grad_(), sigma.clone().requires_grad_()
    flow.zero_grad()
    value = loss(p, s, target, weight, flow)
    value.backward()
    grads = dict(flow.named_parameters())
    return [value.detach(), p.grad, s.grad, *(grads[name].grad for name in sorted(grads))]


def step(
    loss: Loss, flow: nn.Module, pred: Tensor, sigma: Tensor, target: Tensor, weight: Tensor
) -> Callable[[], None]:
    p, s = pred.clone().requires_grad_(), sigma.clone().requires_grad_()
    return lambda: loss(p, s, target, weight, flow).backward()


def timed(step: Callable[[], None], repeats: int) -> tuple[float, float]:
    step()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks rle_loss", description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256, 1024], help="people per step")
    parser.add_argument("--repeats", type=int, default=7)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    ours_flow = RealNVP(init_gain=1.0)  # far from the identity, so the flow's part of the work is real
    peer_flow = OfficialRealNVP()
    peer_flow.load_state_dict(ours_flow.state_dict())
    print(f"RLE loss forward + backward, 17 keypoints, {os.cpu_count()} CPUs, median of {args.repeats}")
    results, summary = Results("rle_loss", args), []
    for threads in args.threads:
        with results.at(threads) as entry:
            header = f"{'people':>7} {'sightkit ms':>12} {'official ms':>12} {'ratio':>6} {'cpu ratio':>9}  agreement"
            print(header)
            for batch in args.batches:
                data = inputs(batch)
                ours = ours_flow, sightkit_loss
                peer = peer_flow, official_loss
                outputs = [run_once(loss, flow, *data) for flow, loss in (ours, peer)]
                agreement = max(relative(a, b) for a, b in zip(*outputs, strict=True))
                ours_wall, ours_cpu = timed(step(ours[1], ours[0], *data), args.repeats)
                peer_wall, peer_cpu = timed(step(peer[1], peer[0], *data), args.repeats)
                print(
                    f"{batch:>7} {ours_wall * 1e3:>12.3f} {peer_wall * 1e3:>12.3f} {peer_wall / ours_wall:>6.2f} "
                    f"{peer_cpu / max(ours_cpu, 1e-9):>9.2f}  max rel diff {agreement:.1e}"
                )
                summary.append((f"{batch} people", threads, ours_wall * 1e3, peer_wall * 1e3))
                entry[f"{batch} people"] = {
                    "ours_ms": round(ours_wall * 1e3, 3),
                    "peer_ms": round(peer_wall * 1e3, 3),
                    "ratio": ratio(peer_wall, ours_wall),
                    "cpu_ratio": ratio(peer_cpu, ours_cpu),
                    "max_relative_difference": agreement,
                }
    print("ratio: official time / sightkit time (above 1: sightkit is faster)")
    print_ratio_summary("RLE loss, forward + backward", summary)
    results.write()
