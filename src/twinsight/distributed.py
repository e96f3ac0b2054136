"""Several processes, one job: which one is rank 0, and rows gathered across the ranks.

Lightning starts the processes. With ``--devices N`` on one machine the command runs
once and Lightning runs it again for each further device, with ``LOCAL_RANK``,
``NODE_RANK`` and ``WORLD_SIZE`` set; ``srun`` (SLURM) and ``torchrun`` start every
process themselves and set ``SLURM_PROCID`` or ``RANK``. Every process runs the same
command from its start, so what only one may do (take an output's lock, check and write
the output, print the result) is left to global rank 0. :func:`is_rank_zero` tells it
from those variables, before any launch; :func:`check_rank` holds that to the rank
Lightning assigned once it has. Nothing here sets an environment variable.

:func:`gather_rows` joins each rank's block of rows in rank order, so contiguous blocks
(:func:`batch_block`) come back in their original order: the validation of a DDP
training and :func:`embed_across` (``twinsight index --devices N``) both rely on it, and
give what one process gives.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from twinsight.errors import TwinsightError

if TYPE_CHECKING:
    from twinsight.data.collection import Collection

log = logging.getLogger(__name__)

#: Where launchers put a process's rank (torchrun, Lightning, SLURM, LSF). Global rank 0
#: is the process in which each of these that is set is 0; a process alone has none.
RANK_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "SLURM_PROCID",
    "JSM_NAMESPACE_RANK",
)


def is_rank_zero() -> bool:
    """Whether this process is global rank 0 of its launch (a process alone is).

    Read from the launcher's variables (:data:`RANK_VARIABLES`), so it is known before
    Lightning launches anything: a process that Lightning started for device 2 of 4, or
    the first process of node 1, is not rank 0, though its ``LOCAL_RANK`` may be 0.
    """
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in RANK_VARIABLES)


def check_rank(global_rank: int, what: str) -> None:
    """Refuse to go on when Lightning's ``global_rank`` and :func:`is_rank_zero` disagree.

    Why: rank 0 alone took the output's lock and checked it before the launch; a second
    writer, or none, would follow from a disagreement, so it is an error that names the
    variables seen.
    """
    if (int(global_rank) == 0) == is_rank_zero():
        return
    seen = ", ".join(f"{k}={os.environ[k]}" for k in RANK_VARIABLES if k in os.environ)
    raise TwinsightError(
        f"{what}: Lightning made this process rank {global_rank}, but the launcher's "
        f"variables ({seen or 'none set'}) say it is {'not ' if global_rank == 0 else ''}"
        "rank 0; unset stale rank variables, or launch with --devices N, srun or torchrun"
    )


def _world() -> tuple[int, int] | None:
    """(rank, world size) of the initialized process group; None when alone."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return dist.get_rank(), dist.get_world_size()


def _comm_device() -> torch.device:
    """Where tensors of a collective must be: the current GPU for NCCL, else the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(rows: torch.Tensor, *, to: int | None = None) -> torch.Tensor | None:
    """Every rank's ``rows`` (any number, same trailing shape) joined in rank order.

    Every rank receives them when ``to`` is None; else rank ``to`` does and the others get
    None. Alone (no process group, or a world of one) ``rows`` come back as they are.
    Each rank must call it, with the same ``to``.
    """
    world = _world()
    if world is None:
        return rows
    rank, size = world
    dev = _comm_device()
    counts = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(size)]
    torch.distributed.all_gather(counts, torch.tensor([len(rows)], device=dev))
    sizes = [int(c.item()) for c in counts]
    padded = torch.zeros((max(1, *sizes), *rows.shape[1:]), dtype=rows.dtype, device=dev)
    padded[: len(rows)] = rows.to(dev)
    parts = [torch.empty_like(padded) for _ in range(size)] if to in (None, rank) else None
    if to is None:
        torch.distributed.all_gather(parts, padded)
    else:
        torch.distributed.gather(padded, parts, dst=to)
    if parts is None:
        return None
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).to(rows.device)


def sum_across(values: Sequence[float]) -> list[float]:
    """The sums over all ranks of ``values`` (this rank's own when alone)."""
    if _world() is None:
        return [float(v) for v in values]
    total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    torch.distributed.all_reduce(total)
    return [float(v) for v in total.cpu()]


def batch_block(n: int, batch_size: int, rank: int, world: int) -> np.ndarray:
    """Positions of 0..n-1 that rank ``rank`` of ``world`` takes: a run of whole batches.

    The batches are those one process makes (``batch_size`` from position 0), dealt out
    in contiguous runs, so every image meets the same batch as alone (CPU kernels may
    round differently for another batch shape) and the blocks in rank order are 0..n-1.
    A rank gets nothing when there are fewer batches than ranks.
    """
    starts = np.array_split(np.arange(0, n, batch_size), world)[rank]
    if len(starts) == 0:
        return np.arange(0)
    return np.arange(int(starts[0]), min(n, int(starts[-1]) + batch_size))


def _fabric(device: str, devices: int, num_nodes: int) -> Any:
    """A Lightning Fabric of ``devices`` processes per node (gloo on CPUs, NCCL on GPUs)."""
    from lightning.fabric import Fabric

    kind = str(device).strip().lower()
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    accelerator = "cuda" if kind.startswith(("cuda", "gpu")) else kind
    if accelerator not in ("cpu", "cuda"):
        raise TwinsightError(f"--devices N runs on 'cpu' or 'cuda' devices, not {device!r}")
    return Fabric(
        accelerator=accelerator,
        devices=int(devices),
        num_nodes=int(num_nodes),
        strategy="ddp",
        precision="32-true",
    )


def embed_across(
    model: Any,
    collection: Collection,
    *,
    devices: int,
    device: str = "auto",
    num_nodes: int = 1,
    batch_size: int = 256,
    precision: str = "fp32",
    progress: bool = False,
) -> np.ndarray | None:
    """Embed ``collection`` in ``devices`` processes per node; rank 0 receives every row.

    Lightning launches the processes (see the module doc: this command runs again once
    per further device, so call it from a script or command, not a notebook). Each rank
    embeds its :func:`batch_block` on its own device (``precision`` as for
    :func:`twinsight.embedding.embed_collection`: autocast on a GPU only), and the rows
    are gathered on global rank 0 in item order: float32 [N, d] there, None elsewhere.
    """
    from twinsight.embedding import embed_collection

    fabric = _fabric(device, devices, num_nodes)
    fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size
    check_rank(rank, "index --devices")
    positions = batch_block(len(collection), batch_size, rank, world)
    log.info("rank %d of %d embeds %d of %d items", rank, world, len(positions), len(collection))
    emb = embed_collection(
        model,
        collection.subset(positions),
        batch_size=batch_size,
        device=fabric.device,
        precision=precision,
        progress=progress and rank == 0,
    )
    rows = gather_rows(torch.from_numpy(emb), to=0)
    return None if rows is None else rows.numpy()
