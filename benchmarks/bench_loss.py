"""Forward + backward time of the VICRegL criteria against the straightforward per-pair reference form.

Run: OMP_NUM_THREADS=1 python benchmarks/bench_loss.py [--batch 64] [--repeats 3] [--section all|step]
Section 1 prints, for local_loss and global_loss (B = 64, 2 x 7x7 + 6 x 3x3 locations, 512-d maps, 8192-d
embeddings): the reference-form time, ours, the ratio, and the largest relative differences of the loss
terms and of the gradients. The reference form below follows facebookresearch/VICRegL's main_vicregl.py
(per pair and direction: torch.cdist, topk, sort, a masked selection, one C x C covariance per slot and a
boolean off-diagonal mask). Section 2 prints VICRegL / VICReg training-step time and peak-memory ratios
(bench_vicregl_vs_vicreg).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from vicregl_cli.pretrain.losses import LossTerms, global_loss, local_loss


def grid_positions(
    batch: int, grid: int, generator: torch.Generator, image: tuple[int, int] = (375, 500)
) -> Tensor:
    """Centres of a grid × grid division of random crop boxes in an image, (B, grid², 2) as (row, column)."""
    height, width = image
    size = torch.rand(batch, 2, generator=generator) * 0.6 + 0.3
    box_h, box_w = size[:, 0] * height, size[:, 1] * width
    top = torch.rand(batch, generator=generator) * (height - box_h)
    left = torch.rand(batch, generator=generator) * (width - box_w)
    steps = (torch.arange(grid) + 0.5) / grid
    rows = top[:, None] + steps[None] * box_h[:, None]
    cols = left[:, None] + steps[None] * box_w[:, None]
    return torch.stack(torch.broadcast_tensors(rows[:, :, None], cols[:, None, :]), dim=-1).reshape(
        batch, -1, 2
    )


def _reference_matches(input_maps, candidate_maps, distances, num_matches):
    batch, locations = input_maps.shape[:2]
    num_matches = locations if num_matches is None else num_matches
    nearest_values, nearest_indices = distances.topk(k=1, largest=False)
    nearest_values, nearest_indices = nearest_values.squeeze(-1), nearest_indices.squeeze(-1)
    rank_of = torch.sort(torch.sort(nearest_values, dim=1)[1], dim=1)[1]
    mask = rank_of < num_matches
    candidates = nearest_indices.masked_select(mask).reshape(batch, num_matches)
    inputs = torch.arange(locations).expand(batch, locations).masked_select(mask).reshape(batch, num_matches)
    channels = input_maps.shape[-1]
    picked_inputs = torch.gather(input_maps, 1, inputs[..., None].expand(-1, -1, channels))
    picked_candidates = torch.gather(candidate_maps, 1, candidates[..., None].expand(-1, -1, channels))
    return picked_inputs, picked_candidates


def _reference_vicreg(x, y, coeffs):
    inv_coeff, var_coeff, cov_coeff = coeffs
    inv = inv_coeff * F.mse_loss(x, y)
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    std_x, std_y = torch.sqrt(x.var(dim=0) + 1e-4), torch.sqrt(y.var(dim=0) + 1e-4)
    var = var_coeff * (torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2)
    x, y = x.permute(1, 0, 2), y.permute(1, 0, 2)
    samples, channels = x.shape[-2:]
    off_mask = ~torch.eye(channels, dtype=torch.bool)
    x, y = x - x.mean(dim=-2, keepdim=True), y - y.mean(dim=-2, keepdim=True)
    cov_x = torch.einsum("knc,knd->kcd", x, x) / (samples - 1)
    cov_y = torch.einsum("knc,knd->kcd", y, y) / (samples - 1)
    cov = (cov_x[..., off_mask].pow(2).sum(-1) / channels) / 2 + (
        cov_y[..., off_mask].pow(2).sum(-1) / channels
    ) / 2
    return inv, var, cov_coeff * cov.mean()


def reference_local_loss(
    maps, positions, num_matches=(20, 4), l2_all_matches=False, coeffs=(25.0, 25.0, 1.0)
):
    """The reference code's local criterion, one pair and one direction at a time (single process)."""
    totals = [0.0, 0.0, 0.0]
    pairs = [(i, j) for i in range(2) for j in range(len(maps)) if j != i]
    feature_counts = (None, None) if l2_all_matches else num_matches
    for i, j in pairs:
        for distances, counts in (
            (lambda a, b: torch.cdist(maps[a], maps[b]), feature_counts),
            (lambda a, b: torch.cdist(positions[a], positions[b]), num_matches),
        ):
            one = _reference_vicreg(*_reference_matches(maps[i], maps[j], distances(i, j), counts[0]), coeffs)
            two = _reference_vicreg(*_reference_matches(maps[j], maps[i], distances(j, i), counts[1]), coeffs)
            for term in range(3):
                totals[term] = totals[term] + (one[term] / 2 + two[term] / 2)
    inv, var, cov = (total / len(pairs) for total in totals)
    return LossTerms(inv, var, cov, inv + var + cov)


def reference_global_loss(embeddings, coeffs=(25.0, 25.0, 1.0)):
    """The reference code's global criterion (one process): a C x C covariance and off-diagonal per view."""
    inv_coeff, var_coeff, cov_coeff = coeffs
    pairs = [(i, j) for i in range(2) for j in range(len(embeddings)) if j != i]
    inv = inv_coeff * sum(F.mse_loss(embeddings[i], embeddings[j]) for i, j in pairs) / len(pairs)
    var, cov = 0.0, 0.0
    for embedding in embeddings:
        x = embedding - embedding.mean(dim=0)
        var = var + torch.mean(F.relu(1 - torch.sqrt(x.var(dim=0) + 1e-4)))
        covariance = x.T @ x / (x.shape[0] - 1)
        width = covariance.shape[0]
        off_diagonal = covariance.flatten()[:-1].view(width - 1, width + 1)[:, 1:].flatten()
        cov = cov + off_diagonal.pow(2).sum() / width
    var, cov = var_coeff * var / len(embeddings), cov_coeff * cov / len(embeddings)
    return LossTerms(inv, var, cov, inv + var + cov)


def _time_forward_backward(loss_fn: Callable[[], LossTerms], inputs: list[Tensor], repeats: int):
    best, terms = float("inf"), None
    for _ in range(repeats):
        for tensor in inputs:
            tensor.grad = None
        start = time.perf_counter()
        terms = loss_fn()
        terms.total.backward()
        best = min(best, time.perf_counter() - start)
    return best, terms, [tensor.grad.clone() for tensor in inputs]


def _compare(name: str, reference: tuple, ours: tuple) -> None:
    (ref_time, ref_terms, ref_grads), (our_time, our_terms, our_grads) = reference, ours
    pairs = [(float(a.detach()), float(b.detach())) for a, b in zip(ref_terms, our_terms, strict=True)]
    value_error = max(abs(a - b) / max(abs(a), 1e-12) for a, b in pairs)
    grad_error = max(
        float((a - b).abs().max() / a.abs().max()) for a, b in zip(ref_grads, our_grads, strict=True)
    )
    print(
        f"{name:<34} reference {ref_time:8.3f} s   ours {our_time:7.3f} s   "
        f"ratio {ref_time / our_time:7.1f}x   "
        f"max rel diff terms {value_error:.1e}  grads {grad_error:.1e}   "
        f"(inv {our_terms.inv.item():.4f} var {our_terms.var.item():.4f} cov {our_terms.cov.item():.4f})"
    )


def bench_criteria(batch: int = 64, channels: int = 512, embedding: int = 8192, repeats: int = 3) -> None:
    """Section 1: local_loss (both l2_all_matches settings) and global_loss against the reference form."""
    generator = torch.Generator().manual_seed(0)
    grids = [7, 7] + [3] * 6
    maps = [torch.randn(batch, g * g, channels, generator=generator).requires_grad_() for g in grids]
    positions = [grid_positions(batch, g, generator) for g in grids]
    print(
        f"criteria: B={batch}, views {grids[:2]} x7x7 + 6 x 3x3 grids, C={channels}, D={embedding}, "
        f"{torch.get_num_threads()} thread(s), best of {repeats} (ours) / 1 (reference)"
    )
    for all_matches in (True, False):
        reference = _time_forward_backward(
            lambda all_matches=all_matches: reference_local_loss(maps, positions, l2_all_matches=all_matches),
            maps,
            1,
        )
        ours = _time_forward_backward(
            lambda all_matches=all_matches: local_loss(maps, positions, l2_all_matches=all_matches),
            maps,
            repeats,
        )
        _compare(f"local_loss l2_all_matches={all_matches}", reference, ours)
    embeddings = [torch.randn(batch, embedding, generator=generator).requires_grad_() for _ in grids]
    reference = _time_forward_backward(lambda: reference_global_loss(embeddings), embeddings, 1)
    ours = _time_forward_backward(lambda: global_loss(embeddings), embeddings, repeats)
    _compare("global_loss (8 views)", reference, ours)


STEP_BENCH_TIMEOUT_S = 900


def _current_rss_mib() -> float:
    """Resident set size of this process now (Linux /proc), MiB."""
    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _measure_step(name: str, batch: int, size: int, alpha: float, steps: int) -> tuple[float, float]:
    """Median step time (s) and peak memory increase (MiB) of one model variant, in the calling process.

    Memory on GPU: torch.cuda.max_memory_allocated (everything allocated on the device: weights, gradients,
    optimiser state, activations). On CPU: peak RSS (ru_maxrss) minus the RSS before the model was built, so
    the figure covers the same things and excludes the interpreter + torch baseline.
    """
    import resource
    import statistics

    from vicregl_cli.backbones import build_backbone
    from vicregl_cli.pretrain.model import LossWeights, VICRegL
    from vicregl_cli.pretrain.optim import build_optimizer, set_learning_rate

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(batch, 3, size, size, generator=generator) for _ in range(2)]
    positions = [grid_positions(batch, size // 32, generator) for _ in range(2)]
    baseline_mib = _current_rss_mib()
    torch.manual_seed(0)
    model = VICRegL(build_backbone(name), [8192, 8192, 8192], [512, 512, 512], LossWeights(alpha=alpha))
    model = model.to(device, memory_format=torch.channels_last if cuda else torch.contiguous_format)
    optimizer = build_optimizer(model, "lars", weight_decay=1e-6)
    set_learning_rate(optimizer, 0.1)
    views = [view.to(device) for view in views]
    if cuda:
        views = [view.contiguous(memory_format=torch.channels_last) for view in views]
    positions = [position.to(device) for position in positions]
    times = []
    for _ in range(steps + 1):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = model(views, positions)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        return statistics.median(times[1:]), torch.cuda.max_memory_allocated() / 2**20
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux: KiB
    return statistics.median(times[1:]), peak_mib - baseline_mib


def _measure_step_child(queue, threads: int, *args) -> None:
    torch.set_num_threads(threads)
    queue.put(_measure_step(*args))


def _measure_in_fresh_process(*args) -> tuple[float, float]:
    """_measure_step in a spawned process (its own peak RSS / CUDA allocator; no OpenMP state inherited from
    a fork). A child that dies or runs past STEP_BENCH_TIMEOUT_S raises instead of hanging the benchmark."""
    import multiprocessing
    import queue as queue_module

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_measure_step_child, args=(results, torch.get_num_threads(), *args))
    child.start()
    deadline = time.monotonic() + STEP_BENCH_TIMEOUT_S
    try:
        while True:
            try:
                result = results.get(timeout=5)
                break
            except queue_module.Empty:
                if not child.is_alive():
                    raise RuntimeError(
                        f"step benchmark child {args} died with exit code {child.exitcode} (out of memory? "
                        "see its traceback above)"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"step benchmark child {args} ran past {STEP_BENCH_TIMEOUT_S} s"
                    ) from None
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
            child.join()
    return result


def bench_vicregl_vs_vicreg(steps: int = 3) -> None:
    """Section 2: one training step (forward, backward, LARS) of VICRegL (alpha 0.75) vs VICReg (alpha 1).

    Same backbone, batch, 2 views and heads (expander 8192-8192-8192, maps projector 512-512-512), each
    variant in its own fresh (spawned) process. GPU: ResNet-50, batch 256 at 224 px (7 x 7 grid), bf16
    autocast, channels_last. CPU: ResNet-18, batch 16 at 160 px (5 x 5 = 25 locations, so the papers'
    num_matches (20, 4) fit unchanged), fp32. Time: median of `steps` steps after one warm-up step.
    Memory: the increase over the process baseline (see _measure_step). Targets: time ratio <= 1.08,
    memory ratio <= 1.15 (paper's code: 1.18 / 1.39).
    """
    cuda = torch.cuda.is_available()
    name, batch, size = ("resnet50", 256, 224) if cuda else ("resnet18", 16, 160)
    results = {
        label: _measure_in_fresh_process(name, batch, size, alpha, steps)
        for label, alpha in (("VICReg (alpha 1)", 1.0), ("VICRegL (alpha 0.75)", 0.75))
    }
    memory_kind = "peak allocated" if cuda else "peak RSS - baseline"
    print(
        f"training step: {name}, batch {batch}, 2 x {size} px ({size // 32} x {size // 32} grid), "
        f"{'cuda' if cuda else 'cpu'}, {torch.get_num_threads()} thread(s), median of {steps} steps"
    )
    for label, (seconds, mib) in results.items():
        print(f"{label:<22} step {seconds:8.3f} s   {memory_kind} {mib:9.1f} MiB")
    (vicreg_time, vicreg_memory), (vicregl_time, vicregl_memory) = results.values()
    print(
        f"VICRegL / VICReg: time {vicregl_time / vicreg_time:.3f}x (target <= 1.08)   "
        f"memory {vicregl_memory / vicreg_memory:.3f}x (target <= 1.15)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--section", choices=("all", "criteria", "step"), default="all", help="criteria: section 1; step: 2"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per variant (section 2)")
    args = parser.parse_args()
    if args.section in ("all", "criteria"):
        bench_criteria(batch=args.batch, repeats=args.repeats)
    if args.section in ("all", "step"):
        bench_vicregl_vs_vicreg(steps=args.steps)


if __name__ == "__main__":
    main()
