"""cli.options: the sampler flags are checked by SamplerConfig and named in its errors."""

from __future__ import annotations

import pytest

from lsdseg.cli.errors import UserError
from lsdseg.cli.main import main
from lsdseg.cli.options import flag_message, sampler_config
from lsdseg.config import SamplerConfig


def test_sampler_config_replaces_only_what_is_given() -> None:
    base = SamplerConfig(steps=2, threshold=0.6)
    got = sampler_config(base, steps=None, eta=0.5, threshold=None, hypotheses=4)
    assert got == SamplerConfig(steps=2, eta=0.5, threshold=0.6, hypotheses=4)
    assert sampler_config() == SamplerConfig()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"steps": 0}, "--steps 0 must be between 1 and 1000"),
        ({"steps": 1001}, "--steps 1001 must be between 1 and 1000"),
        ({"eta": -0.1}, "--eta -0.1 must be between 0 and 1"),
        ({"threshold": 0.0}, "--threshold 0.0 must be in (0, 1)"),
        ({"hypotheses": 257}, "--hypotheses 257 must be between 1 and 256"),
    ],
)
def test_a_bad_setting_names_its_flag(given, message) -> None:
    with pytest.raises(UserError) as info:
        sampler_config(**given)
    assert str(info.value) == message


def test_flag_message() -> None:
    e = ValueError("warm_timestep=1000 must be between 0 and 999")
    assert flag_message(e, "warm_timestep") == "--temporal-t 1000 must be between 0 and 999"
    assert flag_message(ValueError("no such thing"), "steps") == "--steps: no such thing"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--data", "d", "--steps", "0"], "--steps 0 must be between 1 and 1000"),
        (["evaluate", "--data", "d", "--eta", "2"], "--eta 2.0 must be between 0 and 1"),
        (["bench", "--steps", "2,0"], "--steps '2,0': 0 must be between 1 and 1000"),
        (["bench", "--hypotheses", "300"], "--hypotheses '300': 300 must be between 1 and 256"),
    ],
)
def test_commands_check_the_flags_first(capsys, tmp_path, argv, message) -> None:
    argv = [*argv, "--json" if argv[0] == "bench" else "--project", str(tmp_path / "out")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_device_option_names_the_flag(monkeypatch) -> None:
    import torch

    from lsdseg.cli.options import device_option

    assert device_option("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match=r"^--device 'gpu0' is not a device; use cpu, cuda"):
        device_option("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError) as info:
        device_option("cuda:1")
    message = str(info.value)
    assert message.startswith("--device 'cuda:1' asked for CUDA, but this torch")
    assert "--" not in message[2:]  # the core's own words after the flag
    assert device_option("auto") == torch.device("cpu")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cpu:1", "--device 'cpu:1': there is one CPU device; use cpu"),
        ("meta", "--device 'meta': lsdseg runs on cpu or cuda"),
        ("mps", "--device 'mps': lsdseg runs on cpu or cuda"),
    ],
)
def test_a_device_lsdseg_cannot_use_is_named_not_the_weights(capsys, tiny, tmp_path, text, message):
    import cv2
    import numpy as np

    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.full((32, 32, 3), 80, np.uint8))
    argv = ["segment", str(image), "--weights", tiny, "--device", text]
    assert main([*argv, "--project", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert message in err and "safetensors" not in err, err


def test_cpu_0_is_the_cpu() -> None:
    import torch

    from lsdseg.cli.options import device_option

    assert device_option("cpu:0") == torch.device("cpu")
