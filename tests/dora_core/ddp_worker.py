"""One rank of the 2-process DDP check (test_ddp.py runs it with torchrun, PYTHONPATH=repo).

Every rank sees different data and starts from a different adapter init (DDP
broadcasts rank 0's at wrap time). The tuner's decisions are recorded right
after each tuner.step(), before DDP's next buffer broadcast could hide a
disagreement. At compaction the DDP wrapper is rebuilt, as tuner.py documents.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from dora_core import DoraConfig, inject
from tests.dora_core.tiny_models import batch, tiny_bert


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    model = tiny_bert(0)
    torch.manual_seed(100 + rank)  # different adapter init per rank; DDP syncs it
    tuner = inject(model, DoraConfig(total_steps=40, target_rank=4, prune_interval=3))
    ddp = DDP(model)
    opt = torch.optim.AdamW(tuner.parameters(), lr=1e-2, weight_decay=0.01)
    torch.manual_seed(7 + rank)  # different dropout draws per rank
    record = {"steps": [], "losses": []}
    for t in range(1, 31):
        inputs = batch(10_000 * rank + t)  # different data per rank
        loss = ddp(**inputs).loss + tuner.regularization()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(tuner.parameters()), 1.0)
        opt.step()
        info = tuner.step(opt)
        opt.zero_grad()
        record["losses"].append(loss.item())
        record["steps"].append({"info": info, "scores": tuner.scores(), "masks": tuner.masks()})
        if info.compacted:
            module = ddp.module
            del ddp
            gc.collect()
            ddp = DDP(module)
            record["factors_at_freeze"] = tuner.factors()
    record["factors"] = tuner.factors()
    torch.save(record, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
