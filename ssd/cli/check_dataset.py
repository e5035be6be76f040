"""Check a dataset before training: every problem of every file, per file, with a summary.

``ssd-check-dataset --config CFG [--set k=v ...] [--split train|val|all] [--decode]
[--show fatal|warning|info] [--json] [--output-dir DIR]``

Reads the dataset of the config the way training does (``ssd.data.check``): the annotations
(XML/JSON that does not parse, missing or mistyped fields, unknown class labels, boxes with
non-positive size, boxes outside the image, duplicate boxes, annotations without boxes), the
pairing of images and annotations, and every image's header (missing or unreadable file, too
large for the decompression-bomb guard, size or channels differing from the annotation, an EXIF
orientation, which is applied when images are read, more than 8 bits per sample, which are
scaled to 8); ``--decode`` decodes every pixel too, with the reader training uses (finds
truncated files; slower). Prints a table of the problems at ``--show`` severity or worse
(default: warning; the info-level quirks are only counted) and a summary per kind; ``--json``
prints the full report instead; ``--output-dir`` writes check_report.json and check_report.md.
A synthetic dataset is generated first when it does not exist yet, as training would.

Exit status: 0 when nothing is fatal (warnings allowed), 1 when a problem is fatal (training
would refuse the data unless ``data.skip_invalid: true``), 2 for a usage or config error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ssd.cli.common import add_config_args, config_from_args, fail, print_json
from ssd.config import Config, ConfigError
from ssd.data.check import KINDS, SEVERITIES, CheckReport, Problem, check_dataset
from ssd.data.records import DatasetError

SPLITS = {"train": ("train",), "val": ("val",), "all": ("train", "val")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssd-check-dataset", description=__doc__.split("\n\n")[0])
    add_config_args(p, required=False)
    p.add_argument("--split", choices=sorted(SPLITS), default="all", help="split(s) to check (default all)")
    p.add_argument("--decode", action="store_true", help="decode every image (finds truncated files)")
    p.add_argument(
        "--show",
        choices=SEVERITIES,
        default="warning",
        help="list problems of this severity or worse (default warning)",
    )
    p.add_argument("--json", action="store_true", help="print the full report as JSON on stdout")
    p.add_argument("--output-dir", type=Path, default=None, help="write check_report.json and .md there")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _short_path(path: str, root: Path) -> str:
    """`path` relative to the dataset root when it lies inside it."""
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path


def _table(rows: list[list[str]], header: list[str]) -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def problem_table(problems: list[Problem], root: Path) -> str:
    rows = [[p.severity, p.kind, p.split or "-", _short_path(p.file, root), p.detail] for p in problems]
    return _table(rows, ["severity", "kind", "split", "file", "detail"])


def kind_table(report: CheckReport, root: Path) -> str:
    rows = []
    for kind, per in report.counts().items():
        for sev, n in per.items():
            files = sorted({p.file for p in report.problems if p.kind == kind and p.severity == sev})
            rows.append([kind, sev, str(n), str(len(files)), _short_path(files[0], root), KINDS[kind][1]])
    return _table(rows, ["kind", "severity", "problems", "files", "first file", "meaning"])


def render(report: CheckReport, cfg: Config, show: str) -> str:
    """The text report: dataset line, problem table (severity <= `show`), per-kind summary."""
    root = Path(cfg.data.root)
    lines = [f"dataset: {cfg.data.format} at {root} ({len(cfg.data.classes)} classes)", ""]
    for split, n in report.num_samples.items():
        bad = len(report.bad_samples.get(split, []))
        lines.append(f"- {split}: {n} samples, {bad} unusable")
    limit = SEVERITIES.index(show)
    listed = sorted(
        (p for p in report.problems if SEVERITIES.index(p.severity) <= limit),
        key=lambda p: (SEVERITIES.index(p.severity), p.kind, p.file),
    )
    if listed:
        lines += ["", f"problems ({show} or worse):", problem_table(listed, root)]
    if report.problems:
        lines += ["", "summary per kind:", kind_table(report, root)]
    count = {s: sum(p.severity == s for p in report.problems) for s in SEVERITIES}
    verdict = "FAILED: training would refuse this data" if count["fatal"] else "OK: usable for training"
    lines += ["", f"{verdict} ({count['fatal']} fatal, {count['warning']} warning, {count['info']} info)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        if cfg.data.format == "synthetic":
            from ssd.data.loader import ensure_synthetic

            ensure_synthetic(cfg)
        bars: dict[str, Any] = {}

        def progress(split: str, done: int, total: int) -> None:
            if split not in bars:
                bars[split] = tqdm(total=total, desc=f"check {split}", file=sys.stderr, disable=args.quiet)
            bars[split].update(done - bars[split].n)
            if done == total:
                bars[split].close()

        report = check_dataset(cfg, SPLITS[args.split], decode=args.decode, progress=progress)
    except (ConfigError, DatasetError, OSError) as exc:
        return fail(str(exc))
    status = 0 if report.ok else 1
    summary = {
        "format": cfg.data.format,
        "root": cfg.data.root,
        "decode": args.decode,
        "exit_status": status,
        **report.to_dict(),
    }
    text = render(report, cfg, args.show)
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "check_report.json").write_text(
            json.dumps(summary, indent=2) + "\n", encoding="utf-8"
        )
        full = render(report, cfg, "info")
        (args.output_dir / "check_report.md").write_text(f"# Dataset check\n\n{full}\n", encoding="utf-8")
    if args.json:
        print_json(summary)
    else:
        print(text)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
