"""Forward + backward time of the VICRegL criteria against the straightforward per-pair reference form.

Run: OMP_NUM_THREADS=1 python benchmarks/bench_loss.py [--batch 64] [--repeats 3]
Prints, for local_loss and global_loss (B = 64, 2 x 7x7 + 6 x 3x3 locations, 512-d maps, 8192-d
embeddings): the reference-form time, ours, the ratio, and the largest relative differences of the loss
terms and of the gradients. The reference form below follows facebookresearch/VICRegL's main_vicregl.py
(per pair and direction: torch.cdist, topk, sort, a masked selection, one C x C covariance per slot and a
boolean off-diagonal mask).
"""

from __future__ import annotations

import argparse
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


def bench_vicregl_vs_vicreg(steps: int = 3) -> None:
    """Section 2: one training step (forward, backward, LARS) of VICRegL (alpha 0.75) vs VICReg (alpha 1).

    Same backbone, batch, 2 views and heads (expander 8192-8192-8192, maps projector 512-512-512). On a
    GPU: ResNet-50, batch 256 at 224 px, bf16 autocast, channels_last, peak memory =
    torch.cuda.max_memory_allocated.
    On CPU: ResNet-18, batch 16 at 160 px (5 x 5 grid: 20 / 4 matches fit), fp32, each variant in a forked
    process whose peak resident set (ru_maxrss, which includes the process's baseline) is the memory figure.
    Time: median of `steps` steps after one warm-up step. Targets: time ratio <= 1.08, memory ratio <= 1.15
    (paper's code: 1.18 / 1.39).
    """
    import multiprocessing
    import resource
    import statistics

    from vicregl_cli.backbones import build_backbone
    from vicregl_cli.pretrain.model import LossWeights, VICRegL
    from vicregl_cli.pretrain.optim import build_optimizer, set_learning_rate

    cuda = torch.cuda.is_available()
    name, batch, size = ("resnet50", 256, 224) if cuda else ("resnet18", 16, 160)
    device = "cuda" if cuda else "cpu"

    def measure(alpha: float) -> tuple[float, float]:
        torch.manual_seed(0)
        model = VICRegL(build_backbone(name), [8192, 8192, 8192], [512, 512, 512], LossWeights(alpha=alpha))
        model = model.to(device, memory_format=torch.channels_last if cuda else torch.contiguous_format)
        optimizer = build_optimizer(model, "lars", weight_decay=1e-6)
        set_learning_rate(optimizer, 0.1)
        generator = torch.Generator().manual_seed(0)
        views = [torch.randn(batch, 3, size, size, generator=generator).to(device) for _ in range(2)]
        if cuda:
            views = [view.contiguous(memory_format=torch.channels_last) for view in views]
        positions = [grid_positions(batch, size // 32, generator).to(device) for _ in range(2)]
        times = []
        for step in range(steps + 1):
            if cuda:
                torch.cuda.synchronize()
                if step == 1:
                    torch.cuda.reset_peak_memory_stats()
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
            return statistics.median(times[1:]), torch.cuda.max_memory_allocated() / 2**30
        return statistics.median(times[1:]), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def measure_in_child(alpha: float, queue) -> None:
        try:
            queue.put(measure(alpha))
        except Exception as error:  # noqa: BLE001 - handed to the parent, which raises it
            queue.put(error)

    results = {}
    for label, alpha in (("VICReg (alpha 1)", 1.0), ("VICRegL (alpha 0.75)", 0.75)):
        if cuda:
            results[label] = measure(alpha)
        else:
            context = multiprocessing.get_context("fork")
            queue = context.Queue()
            child = context.Process(target=measure_in_child, args=(alpha, queue))
            child.start()
            results[label] = queue.get()
            child.join()
            if isinstance(results[label], Exception):
                raise results[label]
    memory_kind = "peak allocated" if cuda else "peak RSS"
    print(
        f"training step: {name}, batch {batch}, 2 x {size} px, {device}, "
        f"{torch.get_num_threads()} thread(s), median of {steps} steps"
    )
    for label, (seconds, gib) in results.items():
        print(f"{label:<22} step {seconds:8.3f} s   {memory_kind} {gib:7.2f} GiB")
    (vicreg_time, vicreg_memory), (vicregl_time, vicregl_memory) = results.values()
    print(
        f"VICRegL / VICReg: time {vicregl_time / vicreg_time:.3f}x (target <= 1.08)   "
        f"memory {vicregl_memory / vicreg_memory:.3f}x (target <= 1.15)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bench_criteria(batch=args.batch, repeats=args.repeats)
    bench_vicregl_vs_vicreg()


if __name__ == "__main__":
    main()
