"""The `fairlit` console script: LightningCLI over any method (`model`) and data module (`data`).

    fairlit fit --config configs/bpr/ml-100k.yaml [--trainer.max_epochs 5]
    fairlit test --config configs/bpr/ml-100k.yaml --ckpt_path path/to.ckpt

`fit` keeps the best validation checkpoint, stops early, and then tests that checkpoint: the test metrics
are printed as a table and written to `<log_dir>/metrics.json`.
"""
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from fairlit.data import RecDataModule
from fairlit.methods import RecModule


class FairlitCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # Sizes known right after the data module's __init__ become model arguments.
        for name in ("num_users", "num_items", "num_item_groups", "num_user_groups"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/ndcg@10", "checkpoint.mode": "max",
                             "checkpoint.save_last": False})
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({"early_stopping.monitor": "val/ndcg@10", "early_stopping.mode": "max",
                             "early_stopping.patience": 10})

    def after_fit(self) -> None:
        ckpt = "best" if self.trainer.checkpoint_callback and self.trainer.checkpoint_callback.best_model_path else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)


def main(args=None) -> None:
    FairlitCLI(RecModule, RecDataModule, subclass_mode_model=True, subclass_mode_data=True,
               save_config_kwargs={"overwrite": True}, args=args)


if __name__ == "__main__":
    main()
