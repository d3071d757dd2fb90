"""strategy="ddp" with one rank that fails at a given batch: it raises, or SIGKILLs itself.

    python ddp_failure.py OUT_DIR FAILING_RANK raise|kill BATCH [--second-trainer]

With ``--second-trainer`` a first Trainer fits without trouble and a second one fails: the
children were started by the first Trainer's launcher, and the second must stop them too.
Every rank writes its pid to ``OUT_DIR/pid_<local rank>`` first, so the test can check that no
process outlives the run.
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.trainer.helpers import BoringModel, loader, quiet  # noqa: E402

from fulmen import Callback, Trainer  # noqa: E402


class FailAt(Callback):
    def __init__(self, rank: int, mode: str, batch: int) -> None:
        self.rank, self.mode, self.batch = rank, mode, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank != self.rank or batch_idx != self.batch:
            return
        if self.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"rank {self.rank} broke on purpose at batch {batch_idx}")


if __name__ == "__main__":
    out_dir, rank, mode, batch = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    # The launcher gives the re-run children their LOCAL_RANK; the first process is rank 0.
    Path(out_dir, f"pid_{os.environ.get('LOCAL_RANK', '0')}").write_text(str(os.getpid()))
    if "--second-trainer" in sys.argv:
        Trainer(**quiet(max_epochs=1, strategy="ddp", devices=2, accelerator="cpu")).fit(BoringModel(), loader(64))
    trainer = Trainer(
        **quiet(max_epochs=50, strategy="ddp", devices=2, accelerator="cpu", callbacks=[FailAt(rank, mode, batch)])
    )
    trainer.fit(BoringModel(), loader(64))
    print(f"unreachable: rank {trainer.global_rank} finished", flush=True)
