"""One spelling and one meaning per option: WxH sizes, --out, --batch-size, --device auto,
--threads wherever a model runs; old spellings work for one release, warn, and keep their
old meaning (an HxW size is never silently read as WxH)."""

from __future__ import annotations

import argparse

import pytest

from eacnet_core.infer.args import options_from_args
from eacnet_core.train.cli import config_from_args
from eacnet_ros.cli import build_parser

SEGMENTER_COMMANDS = (["segment", "--model", "dabnet", "--input", "x", "--out", "o"],
                      ["bag-eval", "--bag", "b", "--model", "dabnet"],
                      ["demo"])


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("base", SEGMENTER_COMMANDS)
def test_resize_is_wxh_and_threads_reach_the_segmenter(base, capsys):
    options = options_from_args(parse(base + ["--resize", "480x360", "--threads", "3"]))
    assert (options.inference_width, options.inference_height, options.threads) == (480, 360, 3)
    assert capsys.readouterr().err == ""
    options = options_from_args(parse(base))
    assert (options.inference_height, options.inference_width, options.threads) == (0, 0, 0)


@pytest.mark.parametrize("base", SEGMENTER_COMMANDS)
def test_old_inference_size_keeps_its_hxw_meaning_and_warns(base, capsys):
    options = options_from_args(parse(base + ["--inference-size", "360x480"]))
    assert (options.inference_height, options.inference_width) == (360, 480)
    err = capsys.readouterr().err
    assert "--inference-size is deprecated" in err and "--resize 480x360" in err


def test_an_old_and_a_new_spelling_together_are_an_error(capsys):
    with pytest.raises(SystemExit):
        parse(SEGMENTER_COMMANDS[0] + ["--resize", "480x360", "--inference-size", "360x480"])
    assert "not allowed with argument --resize" in capsys.readouterr().err


def test_eval_resize_out_and_old_spellings(capsys):
    args = parse(["eval", "--model", "dabnet", "--resize", "480x360", "--out", "pred"])
    assert args.resize == (360, 480) and str(args.out) == "pred" and args.precision == "auto"
    assert capsys.readouterr().err == ""
    args = parse(["eval", "--model", "dabnet", "--size", "360x480", "--save-predictions", "pred"])
    assert args.resize == (360, 480) and str(args.out) == "pred"
    err = capsys.readouterr().err
    assert "--size is deprecated" in err and "--save-predictions is deprecated" in err


def test_train_crop_size_and_val_resize_are_wxh_and_the_old_hxw_ones_still_hxw(capsys):
    new = config_from_args(parse(["train", "--out", "r", "--crop-size", "480x360", "--val-resize", "240x180"]))
    old = config_from_args(parse(["train", "--out", "r", "--crop", "360x480", "--val-size", "180x240"]))
    assert new.crop == old.crop == (360, 480) and new.val_size == old.val_size == (180, 240)
    err = capsys.readouterr().err
    assert "--crop is deprecated" in err and "--val-size is deprecated" in err


def test_bench_and_export_size_batch_size_and_the_old_height_width(capsys):
    from eacnet_core.options import size_from_height_width

    args = parse(["bench", "--size", "1280x720", "--batch-size", "2"])
    assert size_from_height_width(args, (512, 1024)) == (720, 1280) and args.batch_size == 2
    assert size_from_height_width(parse(["bench"]), (512, 1024)) == (512, 1024)
    assert capsys.readouterr().err == ""
    args = parse(["bench", "--height", "360", "--width", "480", "--batch", "4"])
    assert size_from_height_width(args, (512, 1024)) == (360, 480) and args.batch_size == 4
    err = capsys.readouterr().err
    assert "--batch is deprecated" in err and "--height / --width is deprecated" in err
    export = parse(["export", "--model", "dabnet", "--height", "360", "--size", "480x360", "--out", "m.onnx"])
    with pytest.raises(ValueError, match="not both"):
        size_from_height_width(export, None)


def test_bench_pipeline_resize_keeps_its_wxh_meaning(capsys):
    assert parse(["bench-pipeline", "--resize", "480x360"]).resize == (360, 480)
    assert parse(["bench-pipeline", "--inference-size", "480x360"]).resize == (360, 480)
    assert "--inference-size is deprecated" in capsys.readouterr().err


def test_segment_output_and_slim_positional_still_work(capsys):
    assert parse(["segment", "--model", "dabnet", "--input", "i", "--output", "o"]).out == "o"
    assert parse(["slim", "a.pt", "b.pt"]).dst == "b.pt"
    assert "--output is deprecated" in capsys.readouterr().err


def test_every_device_option_defaults_to_auto_and_every_model_runner_has_threads():
    commands = subcommands()
    for name, parser in commands.items():
        for action in parser._actions:
            if "--device" in action.option_strings and name != "train":  # train: auto, or torchrun's rank
                assert action.default == "auto", name
    runners = ("bench", "export", "segment", "train", "eval", "bag-eval", "demo", "bench-pipeline", "bench-dds")
    for name in runners:
        assert any("--threads" in a.option_strings for a in commands[name]._actions), name


def test_size_options_are_spelled_wxh_in_help():
    for name, parser in subcommands().items():
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            if any(flag in action.option_strings for flag in ("--resize", "--size", "--crop-size", "--val-resize")):
                assert action.metavar == "WxH" and "WxH" in action.help, (name, action.option_strings)
            assert "HxW" not in (action.help or ""), (name, action.option_strings)


def test_bad_sizes_are_one_clear_argparse_error(capsys):
    with pytest.raises(SystemExit):
        parse(SEGMENTER_COMMANDS[0] + ["--resize", "480-360"])
    assert "expected a size as WxH (e.g. 1280x720), got '480-360'" in capsys.readouterr().err
