"""Salt's config key names and their saltx equivalents.

One table serves three readers: the config converter (:mod:`saltx.salt.config`), the
strict-key check (:func:`saltx.config.check_keys`, which names the saltx key when a Salt
name is typed on the command line) and docs/salt.md.
"""

from __future__ import annotations

SALT_KEYS: dict[str, str] = {
    # top level
    "seed_everything": "seed",
    "name": "name",
    "ckpt_path": "ckpt_path (a saltx checkpoint; convert Salt's with `python -m saltx.salt "
    "checkpoint`)",
    "compile": "trainer.compile",
    "log_suffix": "paths.output_dir (the run directory name)",
    "PARAMETERS": "data.variables.PARAMETERS (names) and data.parameters (values)",
    # model (Salt's ModelWrapper)
    "model.lrs_config": "lrs",
    "model.lrs_config.initial": "lrs.initial",
    "model.lrs_config.max": "lrs.max",
    "model.lrs_config.end": "lrs.end",
    "model.lrs_config.pct_start": "lrs.pct_start",
    "model.lrs_config.weight_decay": "lrs.weight_decay",
    "model.muP_config": "mup (the config group `/mup: gn2`; docs/mup.md)",
    "model.mup_config": "mup (the config group `/mup: gn2`; docs/mup.md)",
    "model.model.init_args.init_nets": "model.init_nets.<input> (and model.edges for EDGE)",
    "model.model.init_args.encoder": "model.encoder (model/encoder group) and model.embed_dim",
    "model.model.init_args.pool_net": "model.pooling (model/pooling group)",
    "model.model.init_args.tasks": "model.tasks.<task> (model/tasks group)",
    "mha_config.num_heads": "model.num_heads",
    "mha_config.attention": "model.attention (model/attention group: sdpa | gatv2)",
    "attn_kwargs.num_heads": "model.num_heads",
    "num_registers": "model.encoder.num_registers",
    "do_final_norm": "model.encoder.final_norm",
    "norm": "model.norm_affine (Salt 0.13's LayerNorm has no scale and shift)",
    "muP": "model.muP",
    "mup": "model.muP (and the `mup` config group)",
    "use_class_dict_weights": "model.tasks.<task>.use_class_dict",
    # data
    "data.nan_to_num": "data.non_finite_to_num",
    "data.config_s3": "data.config_S3",
    "data.PARAMETERS": "data.parameters (values) and data.variables.PARAMETERS (names)",
    "data.variables.global": "data.variables.GLOBAL",
    "data.variables.parameters": "data.variables.PARAMETERS",
    "data.test_suff": "test_suff of python -m saltx.evaluate",
    "data.move_files_temp": "data.config_S3.download_path (download-first files)",
    # trainer (Lightning)
    "trainer.default_root_dir": "paths.log_dir (runs go to <log_dir>/<name>_<time>; "
    "paths.output_dir sets one run directory)",
    "trainer.enable_progress_bar": "trainer.progress_bar",
    "trainer.callbacks": "trainer.monitor / trainer.save_every_epoch / "
    "trainer.performance_writer (Salt's Checkpoint and PerformanceWriter)",
    "trainer.logger": "logger (config group: none | tensorboard | wandb)",
    "trainer.limit_train_batches": "trainer.max_steps (batches per epoch × epochs)",
    "trainer.strategy": "trainer.devices (DDP is used with more than one device)",
    "stdOut": "trainer.performance_writer.std_out",
    "std_out": "trainer.performance_writer.std_out",
}
"""Salt key (dotted from the config root, or a bare name) -> the saltx key that replaces it."""

# names that are Salt's everywhere in the tree (matched on the last part of a dotted key)
_BARE = {
    "lrs_config": "lrs",
    "nan_to_num": "data.non_finite_to_num",
    "default_root_dir": SALT_KEYS["trainer.default_root_dir"],
    "config_s3": "data.config_S3",
    "muP_config": SALT_KEYS["model.muP_config"],
    "mup_config": SALT_KEYS["model.mup_config"],
    "seed_everything": "seed",
    "PARAMETERS": SALT_KEYS["PARAMETERS"],
    "parameters": "data.parameters (values) and data.variables.PARAMETERS (names)",
    "test_suff": SALT_KEYS["data.test_suff"],
    "move_files_temp": SALT_KEYS["data.move_files_temp"],
    "use_class_dict_weights": SALT_KEYS["use_class_dict_weights"],
    "enable_progress_bar": "trainer.progress_bar",
    "limit_train_batches": SALT_KEYS["trainer.limit_train_batches"],
}


def saltx_key_for(key: str) -> str | None:
    """The saltx key replacing the Salt key ``key`` (dotted), or None if it is not Salt's.

    Parameters
    ----------
    key
        A dotted key as it appears in a composed config, e.g. ``model.lrs_config`` or
        ``trainer.default_root_dir``.
    """
    if key in SALT_KEYS:
        return SALT_KEYS[key]
    return _BARE.get(key.rsplit(".", 1)[-1])
