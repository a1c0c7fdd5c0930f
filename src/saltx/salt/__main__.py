"""``python -m saltx.salt config|checkpoint``: bring a Salt user's files into saltx.

    python -m saltx.salt config SALT.yaml -o DIR/experiment/NAME.yaml
    python -m saltx.train --config-dir DIR +experiment=NAME

    python -m saltx.salt checkpoint SALT.ckpt --config SALT.yaml -o RUN_DIR
    python -m saltx.evaluate run_dir=RUN_DIR data.test_file=...

docs/salt.md describes both, the key table and the deliberate differences.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from saltx.salt.config import SaltConfigError


def _config(args: argparse.Namespace) -> int:
    from saltx.salt.config import train_command, write_experiment

    out, conv = write_experiment(args.salt_yaml, args.output)
    for note in conv.notes:
        print(f"note: {note}")
    renamed = {k: v for k, v in conv.task_names.items() if k != v}
    for salt_name, name in renamed.items():
        print(f"note: Salt's task {salt_name} is saltx's {name} (metrics val/{name}_loss)")
    print(f"wrote {out}")
    print(f"train: {train_command(out)}")
    return 0


def _checkpoint(args: argparse.Namespace) -> int:
    from saltx.salt.checkpoint import convert_checkpoint

    run_dir = convert_checkpoint(args.salt_ckpt, args.config, args.output, force=args.force)
    print(f"wrote the run directory {run_dir}")
    print(f"evaluate: python -m saltx.evaluate run_dir={run_dir} data.test_file=...")
    print(f"export:   python -m saltx.export run_dir={run_dir}")
    print(f"fine-tune: ... ckpt_path={Path(run_dir) / 'checkpoints' / 'best.pt'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for a Salt key saltx refuses)."""
    parser = argparse.ArgumentParser(
        prog="python -m saltx.salt", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cfg = sub.add_parser("config", help="a Salt YAML -> a saltx experiment")
    cfg.add_argument(
        "salt_yaml", help="the Salt config (e.g. configs/GN2.yaml or a run's config.yaml)"
    )
    cfg.add_argument("-o", "--output", required=True, help="DIR/experiment/NAME.yaml")
    cfg.set_defaults(run=_config)
    ckpt = sub.add_parser("checkpoint", help="a Salt .ckpt -> a saltx run directory")
    ckpt.add_argument("salt_ckpt", help="the Salt checkpoint (.ckpt)")
    ckpt.add_argument("--config", required=True, help="the Salt config it was trained with")
    ckpt.add_argument("-o", "--output", required=True, help="the run directory to create")
    ckpt.add_argument("--force", action="store_true", help="replace an existing run directory")
    ckpt.set_defaults(run=_checkpoint)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (SaltConfigError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"saltx.salt {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
