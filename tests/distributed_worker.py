"""What the distributed tests launch with torchrun (2 processes) in place of ``python -m fastrobust``.

For every registered method M it registers ``M-probe``: M itself, which also
appends, after each epoch's own end-of-epoch work (e.g. the M+ decision), what
this process holds to ``$PROBE_DIR/rank<RANK>.jsonl``: the method, the epoch,
its logged state (r or K, MG, threshold, ...), its level for the next epoch,
and a SHA-256 of the model's parameters and buffers. With ``PROBE_FAIL=E,B,R``
the process of rank R raises at batch B of epoch E (0-based): a bad batch.

``distributed_worker.py train ARGS``: exactly ``python -m fastrobust train ARGS``.
``distributed_worker.py all-methods DIR``: joins the process group itself (as a
user's own script would) and trains every method's probe for 2 short epochs in
it, with runs in DIR/<method>.
"""

import hashlib
import json
import os
import runpy
import sys
from pathlib import Path

from fastrobust.methods import list_methods, register_method


def state_digest(model) -> str:
    model = getattr(model, "module", model)   # the DDP-wrapped model's own module
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def probe_class(cls):
    class Probe(cls):
        name = f"{cls.name}-probe"

        def __init__(self, ctx, **params):
            super().__init__(ctx, **params)
            self.rank = int(os.environ.get("RANK", "0"))
            self.batch, self.epoch, self.model = 0, 0, None
            fail = os.environ.get("PROBE_FAIL")
            self.fail = tuple(int(v) for v in fail.split(",")) if fail else None

        def train_batch(self, model, batch, step):
            if self.fail == (self.epoch, self.batch, self.rank):
                raise ValueError(f"bad batch {self.batch} of epoch {self.epoch} on rank {self.rank} (injected by the test)")
            self.model = model
            self.batch += 1
            return super().train_batch(model, batch, step)

        def on_epoch_end(self, epoch):
            super().on_epoch_end(epoch)
            record = {"method": cls.name, "epoch": epoch, "state": self.state(),
                      "next_level": getattr(getattr(self, "schedule_", None), "level", None),   # leaders: none
                      "weights": state_digest(self.model)}
            with open(Path(os.environ["PROBE_DIR"]) / f"rank{self.rank}.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            self.epoch, self.batch = epoch + 1, 0

    Probe.__name__ = Probe.__qualname__ = f"{cls.__name__}Probe"
    return Probe


METHODS = [cls for cls in list_methods() if not cls.name.endswith("-probe")]
for _cls in METHODS:
    register_method(probe_class(_cls))

# small attacks for the all-methods run (only the parameters a method has are used)
SMALL_PARAMS = {"steps": 2, "k_min": 1, "k_max": 2, "replays": 2, "r_max": 2, "d": 1, "gamma": 0.5}


def all_methods(root: Path) -> None:
    import torch.distributed as dist

    from fastrobust.config import TrainConfig
    from fastrobust.engine import train

    dist.init_process_group("gloo")
    try:
        for cls in METHODS:
            names = {p.name for p in cls.params}
            params = {k: v for k, v in SMALL_PARAMS.items() if k in names}
            cfg = TrainConfig(method=f"{cls.name}-probe", method_params=params, epochs=2, train_subset=100,
                              batch_size=50, val_size=50, test_subset=50, val_steps=1, test_steps=1,
                              eval_batch_size=25, lr_schedule="constant", out=str(root / cls.name))
            train(cfg, progress=False, echo=lambda s: None)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1] == "all-methods":
        all_methods(Path(sys.argv[2]))
    else:
        sys.argv[0] = "fastrobust"
        runpy.run_module("fastrobust", run_name="__main__", alter_sys=True)   # exactly `python -m fastrobust ...`
