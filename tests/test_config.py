"""Config: defaults, type checking with dotted keys, overrides, cross-field checks, round trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ssd.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
    replace,
    save_config,
)


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- defaults


def test_defaults_are_the_original_ssd512_voc() -> None:
    cfg = load_config()
    assert cfg == Config()
    p = cfg.priors
    assert p.image_size == 512
    assert p.feature_maps == (64, 32, 16, 8, 4, 2, 1)
    assert p.steps == (8, 16, 32, 64, 128, 256, 512)
    assert p.min_sizes == (35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8)
    assert p.max_sizes == (76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6)
    assert p.aspect_ratios == ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))
    assert p.variances == (0.1, 0.2)
    assert p.clip is False
    assert cfg.num_classes == 21  # 20 VOC classes + background
    assert cfg.matcher.iou_threshold == 0.5
    assert cfg.loss.neg_pos_ratio == 3.0
    assert (cfg.postprocess.nms_iou, cfg.postprocess.max_detections) == (0.45, 200)


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


# --------------------------------------------------------------------------- loading and types


def test_yaml_differences_are_applied_and_converted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "train:\n  lr: 0.01\n  milestones: [10, 20]\n  grad_clip: 5\n"
        "priors:\n  shapes: [[[10, 20]], [[1, 2], [3, 4]], [[5, 5]], [[6, 6]], [[7, 7]], [[8, 8]],"
        " [[512, 27]]]\n"
        "data:\n  classes: [crack, dent]\n",
    )
    cfg = load_config(path)
    assert cfg.train.lr == 0.01
    assert cfg.train.milestones == (10, 20)
    assert cfg.train.grad_clip == 5.0 and isinstance(cfg.train.grad_clip, float)
    assert cfg.priors.shapes is not None
    assert cfg.priors.shapes[1] == ((1.0, 2.0), (3.0, 4.0))
    assert isinstance(cfg.priors.shapes[0][0][0], float)
    assert cfg.data.classes == ("crack", "dent")
    assert cfg.num_classes == 3
    # everything not mentioned keeps its default
    assert cfg.model == Config().model
    assert cfg.train.batch_size == Config().train.batch_size


def test_exponent_notation_is_a_number(tmp_path: Path) -> None:
    # PyYAML reads `1e-3` (no dot) as a string; the config accepts it as a float.
    cfg = load_config(write(tmp_path, "train:\n  lr: 1e-3\n  weight_decay: 5E-4\n"))
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.weight_decay == pytest.approx(5e-4)
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_config(write(tmp_path, "train:\n  lr: fast\n"))
    with pytest.raises(ConfigError, match=r"train\.batch_size"):  # integers stay strict
        load_config(None, ["train.batch_size=1e3"])


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("foo: 1\n", "'foo'"),
        ("train:\n  lrr: 0.1\n", "'train.lrr'"),
        ("priors:\n  learn:\n    warmup: 3\n", "'priors.learn.warmup'"),
    ],
)
def test_unknown_keys_are_rejected_with_dotted_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="unknown config key") as info:
        load_config(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_key_suggests_close_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean") as info:
        load_config(write(tmp_path, "train:\n  batch: 4\n"))
    assert "batch_size" in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("train:\n  batch_size: four\n", "train.batch_size"),
        ("train:\n  batch_size: 4.5\n", "train.batch_size"),
        ("train:\n  batch_size: true\n", "train.batch_size"),  # bool is not an int here
        ("train:\n  lr: [1]\n", "train.lr"),
        ("train:\n  lr: true\n", "train.lr"),
        ("augment:\n  hflip: 1\n", "augment.hflip"),
        ("data:\n  root: 3\n", "data.root"),
        ("data:\n  format: yolo\n", "data.format"),
        ("train:\n  schedule: linear\n", "train.schedule"),
        ("priors:\n  steps: 8\n", "priors.steps"),
        ("priors:\n  steps: [8, x]\n", "priors.steps[1]"),
        ("priors:\n  variances: [0.1, 0.2, 0.3]\n", "priors.variances"),
        ("priors:\n  aspect_ratios: [[2], [two]]\n", "priors.aspect_ratios[1][0]"),
        ("priors:\n  shapes: [[[1, 2, 3]]]\n", "priors.shapes[0][0]"),
        ("model:\n  pretrained: 5\n", "model.pretrained"),
        ("train: 5\n", "train"),
    ],
)
def test_wrong_types_are_rejected_with_dotted_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert f"{key}:" in msg
    assert str(path) in msg


def test_optional_fields_accept_null(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "model:\n  pretrained: null\ntrain:\n  grad_clip: null\n"))
    assert cfg.model.pretrained is None and cfg.train.grad_clip is None


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# only a comment\n")) == Config()


# --------------------------------------------------------------------------- file errors


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_invalid_yaml_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping") as info:
        load_config(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- overrides


def test_parse_overrides_builds_nested_yaml_values() -> None:
    tree = parse_overrides(["train.lr=0.5", "train.milestones=[1, 2]", "model.batch_norm=true", "seed=7"])
    assert tree == {"train": {"lr": 0.5, "milestones": [1, 2]}, "model": {"batch_norm": True}, "seed": 7}
    assert parse_overrides(["data.root=a=b"]) == {"data": {"root": "a=b"}}  # split on the first '='
    assert parse_overrides([]) == {}


@pytest.mark.parametrize("item", ["train.lr", "=3", "train.lr=[1, 2"])
def test_parse_overrides_rejects_malformed(item: str) -> None:
    with pytest.raises(ConfigError, match="override"):
        parse_overrides([item])


def test_parse_overrides_rejects_value_and_mapping_on_one_key() -> None:
    with pytest.raises(ConfigError, match="train"):
        parse_overrides(["train=1", "train.lr=0.1"])


def test_overrides_apply_on_top_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  lr: 0.01\n  batch_size: 4\n")
    cfg = load_config(path, ["train.lr=0.1", "priors.clip=true", "data.classes=[a, b, c]"])
    assert cfg.train.lr == 0.1
    assert cfg.train.batch_size == 4  # from the file, untouched by the override of a sibling
    assert cfg.priors.clip is True
    assert cfg.num_classes == 4


def test_overrides_are_type_checked_and_validated() -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(None, ["train.batch_size=abc"])
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.bogus'"):
        load_config(None, ["train.bogus=1"])
    with pytest.raises(ConfigError, match=r"matcher\.iou_threshold"):
        load_config(None, ["matcher.iou_threshold=1.5"])


# --------------------------------------------------------------------------- cross-field checks


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["priors.steps=[8, 16]"], "priors.steps"),
        (["priors.min_sizes=[1, 2, 3]"], "priors.min_sizes"),
        (["priors.max_sizes=[1, 2, 3]"], "priors.max_sizes"),
        (["priors.aspect_ratios=[[2]]"], "priors.aspect_ratios"),
        (["priors.max_sizes=[30, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6]"], "priors.max_sizes[0]"),
        (["priors.aspect_ratios=[[2], [1], [2], [2], [2], [2], [2]]"], "priors.aspect_ratios[1][0]"),
        (["priors.shapes=[[[10, 10]]]"], "priors.shapes"),
        (
            ["priors.shapes=[[[1, 1]], [], [[1, 1]], [[1, 1]], [[1, 1]], [[1, 1]], [[1, 1]]]"],
            "priors.shapes[1]",
        ),
        (
            ["priors.shapes=[[[1, 1]], [[1, 0]], [[1, 1]], [[1, 1]], [[1, 1]], [[1, 1]], [[1, 1]]]"],
            "priors.shapes[1][0]",
        ),
        (["priors.variances=[0.1, 0]"], "priors.variances"),
        (["priors.feature_maps=[]", "priors.steps=[]"], "priors.feature_maps"),
        (["matcher.iou_threshold=0"], "matcher.iou_threshold"),
        (["matcher.iou_threshold=1"], "matcher.iou_threshold"),
        (["postprocess.nms_iou=1.0"], "postprocess.nms_iou"),
        (["postprocess.score_threshold=-0.1"], "postprocess.score_threshold"),
        (["postprocess.max_detections=0"], "postprocess.max_detections"),
        (["model.width_mult=0"], "model.width_mult"),
        (["data.classes=[]"], "data.classes"),
        (["data.classes=[a, a]"], "data.classes"),
        (["data.classes=[background, a]"], "data.classes"),
        (["train.milestones=[20, 10]"], "train.milestones"),
        (["train.momentum=1.0"], "train.momentum"),
        (["train.grad_clip=0"], "train.grad_clip"),
        (["eval.iou_threshold=0"], "eval.iou_threshold"),
        (["input.std=[1, 0, 1]"], "input.std"),
    ],
)
def test_cross_field_checks_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert str(info.value).startswith(f"{key}:"), str(info.value)


def test_max_sizes_may_be_empty_and_shapes_replace_ratio_form() -> None:
    cfg = load_config(None, ["priors.max_sizes=[]"])
    assert cfg.priors.max_sizes == ()
    # with shapes set, the ratio-form lists are not checked against the levels
    cfg = load_config(None, ["priors.min_sizes=[1]", "priors.shapes=" + str([[[4, 4]]] * 7)])
    assert cfg.priors.shapes is not None and len(cfg.priors.shapes) == 7


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "resolved.yaml"
    save_config(Config(), path)
    assert load_config(path) == Config()


def test_save_load_round_trip_modified(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "priors.shapes=" + str([[[10.5, 20.25]], [[512, 27]], [[1, 2], [3, 4]]] + [[[8, 8]]] * 4),
            "priors.clip=true",
            "model.pretrained=weights/vgg16.pth",
            "train.grad_clip=2.5",
            "train.lr=1e-5",
            "data.classes=[crack, dent]",
            "data.synthetic_size=[640, 480]",
            "train.schedule=cosine",
            "seed=42",
        ],
    )
    path = tmp_path / "resolved.yaml"
    save_config(cfg, path)
    back = load_config(path)
    assert back == cfg
    assert config_to_dict(back) == config_to_dict(cfg)


def test_config_from_dict_and_replace() -> None:
    cfg = config_from_dict({"train": {"lr": 0.2}}, ["train.batch_size=3"])
    assert (cfg.train.lr, cfg.train.batch_size) == (0.2, 3)
    other = replace(cfg, **{"train.lr": 0.3, "seed": 5, "priors.learn.lr_mult": 2.0})
    assert (other.train.lr, other.seed, other.priors.learn.lr_mult) == (0.3, 5, 2.0)
    assert other.train.batch_size == 3
    assert cfg.train.lr == 0.2  # the original is untouched
