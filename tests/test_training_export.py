"""Exported weights must load back through the safe (weights_only) loader."""
from __future__ import annotations

from jdnet_cli.inference.checkpoint import load_model
from jdnet_cli.training import Trainer, TrainConfig

from .conftest import write_png


def test_export_loads_with_weights_only(tmp_path):
    for i in range(2):
        write_png(tmp_path / "clean" / f"{i}.png", 40, 40, seed=i)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), clean=str(tmp_path / "clean"), steps=1, batch_size=1,
                      patch_size=16, channels=4, num_units=1, threads=1)
    trainer = Trainer(cfg)
    trainer.run()
    model, meta = load_model(trainer.export())
    assert (model.channels, model.num_units) == (4, 1)
    assert meta["steps_done"] == 1 and meta["training"]["patch_size"] == 16
    assert isinstance(meta["torch"], str)
