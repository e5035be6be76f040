"""Shared CLI plumbing: config arguments, error reporting, exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ssd.config import Config, ConfigError, load_config
from ssd.data.records import DatasetError
from ssd.inference.checkpoint import CheckpointError

USAGE_ERRORS = (ConfigError, DatasetError, CheckpointError, FileNotFoundError)


def add_config_args(
    parser: argparse.ArgumentParser,
    required: bool = False,
    *,
    config_help: str = "YAML config (differences from defaults)",
    example: str = "train.lr=0.01",
) -> None:
    """--config and the repeatable --set KEY=VALUE (into `args.overrides`)."""
    parser.add_argument("--config", required=required, help=config_help)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"override a config value, e.g. --set {example} (repeatable)",
    )  # fmt: skip


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--config/--set and the --checkpoint whose model they describe (for `load_model`)."""
    add_config_args(parser)
    parser.add_argument(
        "--checkpoint", help="checkpoint (its stored config is used unless --config is given)"
    )


def add_output_args(parser: argparse.ArgumentParser, output_help: str, json_help: str) -> None:
    """--output-dir (files written there: `output_help`) and --json (`json_help`)."""
    parser.add_argument("--output-dir", help=output_help)
    parser.add_argument("--json", action="store_true", help=json_help)


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=float, allow_nan=True))
