"""Seconds per training epoch (evaluation excluded) of any fairlit config, e.g. FairNeg's "ML-1M epoch under a
second" goal on the GPU machine:

    python benchmarks/bench_epoch.py --epochs 3 --config configs/fairneg/ml1m-2.yaml --trainer.accelerator gpu \
        --model.init_args.fused_step true

Every argument but ``--epochs`` goes to the `fairlit` CLI (LightningCLI), which builds the trainer, model and
data module as ``fairlit fit`` would; the script then trains ``--epochs`` epochs without validation, logger,
checkpoints or early stopping and prints each epoch's time and their median. Nothing is written to docs: the
numbers go into the issue note and the benchmark prose by hand.
"""
import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import EpochClock  # noqa: E402

from fairlit.cli import FairlitCLI  # noqa: E402
from fairlit.data import RecDataModule  # noqa: E402
from fairlit.methods import RecModule  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs to time (>= 1)")
    args, cli_args = parser.parse_known_args()
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs} (Lightning reads -1 as 'no limit')")
    cli = FairlitCLI(RecModule, RecDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                     save_config_callback=None,
                     args=cli_args + ["--trainer.max_epochs", str(args.epochs), "--trainer.limit_val_batches", "0",
                                      "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false"])
    clock = EpochClock()
    trainer = cli.trainer
    trainer.callbacks = [clock] + [cb for cb in trainer.callbacks if type(cb).__name__ not in ("ModelCheckpoint",
                                                                                             "EarlyStopping")]
    trainer.fit(cli.model, datamodule=cli.datamodule)
    print(f"{type(cli.model).__name__} on {trainer.accelerator.__class__.__name__}: seconds per training epoch "
          + " ".join(f"{s:.3f}" for s in clock.seconds) + f"; median {statistics.median(clock.seconds):.3f}")


if __name__ == "__main__":
    main()
