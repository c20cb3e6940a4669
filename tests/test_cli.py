"""The `fairlit` command (fairlit/cli.py): a bad argument is reported by fairlit's own message, and a resumed
checkpoint must be of the configured method and data."""
import sys
import warnings

import pytest

from fairlit.cli import main
from tests.methods.toy_data import write_toy_dataset


@pytest.fixture(autouse=True)
def bare_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["fairlit"])  # pytest's own arguments are not the CLI's


def toy(root, num_users=20):
    root.mkdir(exist_ok=True)
    return write_toy_dataset(root, num_users=num_users, num_items=30, per_user=8, seed=0,
                             genres_of=lambda rng, i: "A" if i % 2 else "B")


@pytest.fixture
def dataset(tmp_path):
    return toy(tmp_path / "data")


def fit_args(dataset, root, *extra):
    return ["fit", "--model", "fairlit.methods.BPR", "--model.init_args.backbone", "fairlit.models.MF",
            "--model.init_args.backbone.init_args.dim", "4", "--model.init_args.ks", "[5]",
            "--data", "fairlit.data.RecDataModule", "--data.init_args.dataset", str(dataset),
            "--data.init_args.batch_size", "32", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(root), "--checkpoint.monitor", "val/ndcg@5",
            "--early_stopping.monitor", "val/ndcg@5", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--model.init_args.reg_weight", "-5"], "reg_weight must be a finite number >= 0, got -5.0"),
    (["--model.init_args.backbone.init_args.dim", "0"], "MF: `dim` must be an integer >= 1, got 0"),
    (["--model.init_args.lr", "-1"], "lr must be a finite number > 0, got -1.0"),
])
def test_a_bad_argument_raises_fairlits_message_not_the_configuration_dump(tmp_path, dataset, extra, message):
    # jsonargparse wraps an __init__ error as "Does not validate against any of the Union subtypes" + the whole
    # configuration; the CLI re-raises the error itself.
    with pytest.raises(ValueError, match=message) as raised:
        main(fit_args(dataset, tmp_path, *extra))
    assert "Union subtypes" not in str(raised.value)


def test_resume_refuses_another_method_or_other_data_and_names_replaced_arguments(tmp_path, dataset):
    main(fit_args(dataset, tmp_path))
    (ckpt,) = (tmp_path / "lightning_logs").rglob("*.ckpt")
    resume = ["--trainer.max_epochs", "2", "--ckpt_path", str(ckpt)]
    with pytest.raises(ValueError, match="holds a fairlit.methods.BPR model but the configuration asks for "
                                         "fairlit.methods.UNI"):
        main([*fit_args(dataset, tmp_path, *resume)[:2], "fairlit.methods.UNI",
              *fit_args(dataset, tmp_path, *resume)[3:]])
    with pytest.raises(ValueError, match=r"other data \(num_users 20 there, 19 here"):
        main(fit_args(toy(tmp_path / "fewer_users", num_users=19), tmp_path, *resume))
    with pytest.warns(UserWarning, match=r"replace the given ones: lr 0.5 -> 0.001$"):
        main(fit_args(dataset, tmp_path, "--model.init_args.lr", "0.5", *resume))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*replace the given ones")
        main(fit_args(dataset, tmp_path, *resume))
    with pytest.warns(UserWarning, match="test without --ckpt_path evaluates the model as initialised"):
        main(["test", *fit_args(dataset, tmp_path)[1:]])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*evaluates the model as initialised")
        main(["test", *fit_args(dataset, tmp_path, "--ckpt_path", str(ckpt))[1:]])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="torch cannot read this file as a checkpoint"):
        main(fit_args(dataset, tmp_path, "--ckpt_path", str(garbage)))
