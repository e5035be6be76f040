"""Every command of the README's ```bash blocks runs as written, on tiny data.

The commands run in order, in-process (each tool's `main(argv)`, or the `-c` code), in a
temporary working directory that holds a tiny variant of every file in configs/ under the same
name: the README's own options and overrides apply on top of a width-1/16 model at a 272 input,
2 training iterations and 16 generated 320x240 images. Data the project does not ship is replaced
by generated images: the Tianchi layout is generated into the config's root, NEU-DET and VOC
become the synthetic set, `--device cuda` runs on the CPU
when no GPU is present, and sizes that only make a figure larger (image counts and sizes,
iterations, restarts) are cut (`SHRINK`). `make test` / `make demo` are the CI itself and the
demo, not run here. ```text blocks hold synopses with placeholders (CFG, DIR) and are not run.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ssd.data.labelme import TIANCHI_CLASSES
from ssd.data.synthetic import generate_dataset
from tests.conftest import REPO, TINY_PRIORS

# README value -> tiny value (option values and --set overrides that only scale the work)
SHRINK = {
    ("--num-images", "600"): "60",  # k-means with k = 7 levels needs 7 distinct shapes
    ("--size", "2560x1920"): "320x240",
    ("--boxes", "100000"): "2000",
    ("--repeat", "3"): "1",
    ("--restarts", "10"): "2",
    ("--k", "9"): "4",
    ("--k-max", "16"): "4",
    ("--jitter", "64"): "4",
    ("--jitter", "128"): "4",
    ("--fits", "4"): "2",
    ("--max-shapes-per-level", "128"): "8",
    ("--set", "train.max_iters=600"): "train.max_iters=2",
    ("--set", "train.eval_every=600"): "train.eval_every=2",
    # the ImageNet VGG-16 weights are a download the user brings; the tiny model has 1/8 the width
    ("--set", "model.pretrained=vgg16.pth"): "seed=0",
}


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks, continuation lines joined, comment lines dropped."""
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines = [line.strip() for line in joined.splitlines()]
        commands += [line for line in lines if line and not line.startswith("#")]
    return commands


def tiny_config(path: Path) -> dict[str, Any]:
    """A config of configs/ made tiny (see the module docstring)."""
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    data = values.get("data", {})
    if data.get("format") == "labelme":  # the Tianchi layout: generated into its root (see the test)
        pass
    elif data.get("format") != "synthetic":  # data the project does not ship: the generated set
        data = {"format": "synthetic", "root": f"runs/data/{path.stem}", "classes": list(TIANCHI_CLASSES)}
    data.update(
        synthetic_num_images=16, synthetic_size=[320, 240], synthetic_val_fraction=0.25, num_workers=0
    )
    values["data"] = data
    values["model"] = {"batch_norm": True, "width_mult": 0.0625}
    values["priors"] = dict(TINY_PRIORS)
    values["train"] = {
        **values.get("train", {}),
        "batch_size": 2, "max_iters": 2, "eval_every": 2, "checkpoint_every": 2, "log_every": 1,
        "warmup_iters": 1, "milestones": [1],
    }  # fmt: skip
    values["eval"] = {"batch_size": 2}
    return values


def to_argv(command: str, env: dict[str, str]) -> list[str]:
    for name, value in env.items():
        command = command.replace(f"${name}", value)
    argv = shlex.split(command, comments=True)
    while argv and re.fullmatch(r"\w+=\S*", argv[0]):  # environment settings (OMP_NUM_THREADS=1)
        argv = argv[1:]
    if argv[:2] == ["nice", "-n"]:  # a lower priority changes nothing here
        argv = argv[3:]
    out: list[str] = []
    for arg in argv:
        if out and (out[-1], arg) in SHRINK:
            arg = SHRINK[(out[-1], arg)]
        if out and out[-1] == "--device" and arg.startswith("cuda") and not torch.cuda.is_available():
            arg = "cpu"
        out.append(arg)
    return out


def console_scripts() -> dict[str, str]:
    """The installed commands (`ssd-train`, ...) and the modules behind them, from pyproject.toml."""
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    return {name: target.removesuffix(":main") for name, target in scripts.items()}


def run(argv: list[str]) -> str:
    """Run one command line in-process; returns its stdout. Fails on a non-zero exit."""
    exe, *rest = argv
    scripts = console_scripts()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        if exe.removeprefix(".venv/bin/") in scripts:  # a console script, ssd-train
            module, args = scripts[exe.removeprefix(".venv/bin/")], rest
        else:
            assert exe in ("python", ".venv/bin/python"), argv
            if rest[0] == "-c":
                exec(compile(rest[1], "<readme>", "exec"), {})
                return stdout.getvalue()
            if rest[0] == "-m":
                module, args = rest[1], rest[2:]
            else:  # a script path, tools/x.py
                module, args = rest[0].removesuffix(".py").replace("/", "."), rest[1:]
        assert module.startswith(("ssd.cli.", "tools.")), argv
        rc = importlib.import_module(module).main(args)
    assert rc == 0, f"{' '.join(argv)} exited {rc}"
    return stdout.getvalue()


def tianchi_boxes_standin(path: Path, images: int = 40, seed: int = 0) -> None:
    """A COCO file shaped like the real Tianchi boxes (2560x1920 photos, the ten classes, bands
    across the full width and small spots), which users bring and the project does not ship."""
    import json

    import numpy as np

    rng = np.random.default_rng(seed)
    anns = []
    for i in range(1, images + 1):
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < 0.5:  # a band across the photo
                w, h = 2560.0, float(rng.uniform(30, 700))
            else:  # a spot, a bubble or a scratch
                w, h = float(rng.uniform(20, 900)), float(rng.uniform(20, 400))
            x, y = float(rng.uniform(0, 2560 - w)), float(rng.uniform(0, 1920 - h))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 11)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})  # fmt: skip
    coco = {
        "images": [
            {"id": i, "file_name": f"{i}.jpg", "width": 2560, "height": 1920} for i in range(1, images + 1)
        ],
        "categories": [{"id": k, "name": n} for k, n in enumerate(TIANCHI_CLASSES, 1)],
        "annotations": anns,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco), encoding="utf-8")


def test_every_readme_command_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = readme_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert any("ssd-evaluate --checkpoint" in c for c in commands)  # the blocks were found
    (tmp_path / "configs").mkdir()
    for path in sorted((REPO / "configs").glob("*.yaml")):
        values = tiny_config(path)
        (tmp_path / "configs" / path.name).write_text(yaml.safe_dump(values), encoding="utf-8")
        if values["data"]["format"] == "labelme":  # the user's Tianchi data: a generated stand-in
            generate_dataset(tmp_path / values["data"]["root"], 16, (320, 240), 0, 0.25)
    tianchi_boxes_standin(tmp_path / "data" / "tianchi-boxes" / "boxes.json")
    monkeypatch.chdir(tmp_path)
    env: dict[str, str] = {}
    ran = 0
    for command in commands:
        if command.startswith("make "):
            continue
        assignment = re.fullmatch(r'(\w+)="([^"]*)"\s*(?:#.*)?', command)
        if assignment:
            env[assignment.group(1)] = assignment.group(2)
            continue
        run(to_argv(command, env))
        ran += 1
    assert ran >= 15
