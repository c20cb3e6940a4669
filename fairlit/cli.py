"""The `fairlit` console script: LightningCLI over any method (`model`) and data module (`data`).

    fairlit fit --config configs/bpr/ml-100k.yaml [--trainer.max_epochs 5]
    fairlit test --config configs/bpr/ml-100k.yaml --ckpt_path path/to.ckpt

`fit` keeps the best validation checkpoint, stops early, and then tests that checkpoint: the test metrics
are printed as a table and written to `<log_dir>/metrics.json`.
"""
import os
import pickle
import traceback
import warnings

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

import fairlit
from fairlit.data import RecDataModule
from fairlit.methods import RecModule
from fairlit.methods.base import DATA_SIZES

_PACKAGE = os.path.dirname(os.path.abspath(fairlit.__file__))


def _raised_by_fairlit(error: BaseException) -> bool:
    return any(os.path.abspath(frame.filename).startswith(_PACKAGE + os.sep)
               for frame in traceback.extract_tb(error.__traceback__))


class FairlitCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Sizes known right after the data module's __init__ become model arguments.
        for name in DATA_SIZES:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/ndcg@10", "checkpoint.mode": "max",
                             "checkpoint.save_last": False})
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": "val/ndcg@10", "early_stopping.mode": "max",
                             "early_stopping.patience": 10})

    def instantiate_classes(self) -> None:
        # jsonargparse reports an error raised in a model's or data module's __init__ (a bad argument, a data file
        # that does not fit) as "Does not validate against any of the Union subtypes" followed by the whole
        # configuration; the reason is buried in the middle. Raise fairlit's own error instead.
        try:
            super().instantiate_classes()
        except ValueError as error:
            cause = error.__cause__
            if cause is None or not _raised_by_fairlit(cause):
                raise
            raise cause from None

    def _parse_ckpt_path(self) -> None:
        # With --ckpt_path, LightningCLI replaces the model section of the configuration by the checkpoint's
        # hyper-parameters (the state being resumed was built with them). Refuse a checkpoint of another method
        # and say which given model arguments are replaced, instead of dropping them silently.
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        given = self.config[subcommand].get("model") if ckpt else None
        given = given.as_dict() if given is not None else None
        try:
            super()._parse_ckpt_path()
        except (pickle.UnpicklingError, EOFError, RuntimeError) as error:
            raise ValueError(f"--ckpt_path {ckpt}: torch cannot read this file as a checkpoint "
                             f"({type(error).__name__}); expected a .ckpt written by `fairlit fit`") from error
        if given is None:
            return
        loaded = self.config[subcommand].model.as_dict()
        if loaded.get("class_path") != given.get("class_path"):
            raise ValueError(f"--ckpt_path {ckpt} holds a {loaded.get('class_path')} model but the configuration "
                             f"asks for {given.get('class_path')}; resume with that method's configuration")
        before, after = given.get("init_args") or {}, loaded.get("init_args") or {}
        replaced = [f"{name} {before[name]!r} -> {after[name]!r}" for name in sorted(before)
                    if name not in DATA_SIZES and name in after and before[name] != after[name]]
        if replaced:
            warnings.warn(f"--ckpt_path {ckpt}: the checkpoint's model arguments replace the given ones: "
                          + ", ".join(replaced), stacklevel=1)

    def before_validate(self) -> None:
        self._warn_untrained("validate")

    def before_test(self) -> None:
        self._warn_untrained("test")

    def _warn_untrained(self, subcommand: str) -> None:
        if not self.config[subcommand].get("ckpt_path"):
            warnings.warn(f"fairlit {subcommand} without --ckpt_path evaluates the model as initialised (untrained); "
                          "pass the checkpoint that `fairlit fit` saved", stacklevel=1)

    def after_fit(self) -> None:
        ckpt = "best" if self.trainer.checkpoint_callback and self.trainer.checkpoint_callback.best_model_path else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)


def main(args=None) -> None:
    FairlitCLI(RecModule, RecDataModule, subclass_mode_model=True, subclass_mode_data=True,
               save_config_kwargs={"overwrite": True}, args=args)


if __name__ == "__main__":
    main()
