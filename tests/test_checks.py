"""Every documented key checked before anything is created: ranges and relations in config.py,
callback arguments from the class's source without torch, W&B online without a key or network."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides
from zflight.config import MIN_IMAGE_SIZE, SHAPES_CLASSES, ConfigError, load_config
from zflight.run.signatures import class_parameters

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("data.batch_size=200", "data.batch_size=200 is larger than the training set"),
        ("optim.lr=0", "optim.lr=0.0 is out of range: it must be > 0"),
        ("optim.lr=-0.1", "optim.lr=-0.1 is out of range"),
        ("data.image_size=40", "data.image_size=40 is smaller than model.name=zfnet takes (53 px"),
        ("data.num_workers=-2", "data.num_workers=-2 is out of range: it must be >= 0"),
        ("model.width=0.001", "model.width=0.001 is out of range: it must be between 1/96"),
        ("model.dropout=1.5", "model.dropout=1.5 is out of range"),
        ("optim.pct_start=0", "optim.pct_start=0.0 is out of range"),
        ("optim.gamma=2", "optim.gamma=2.0 is out of range"),
        ("trainer.devices=0", "trainer.devices=0 is not valid"),
        ("trainer.limit_train_batches=1.5", "trainer.limit_train_batches=1.5 is out of range"),
        ("data.num_classes=9", "data.num_classes=9 is out of range"),
        ("trainer.stop_signals=[SIGNOPE]", "'SIGNOPE' is not a signal"),
    ],
)
def test_out_of_range_values_are_one_config_error(tmp_path, override, says):
    with pytest.raises(ConfigError) as e:
        load_config([*tiny_overrides(tmp_path / "run"), override])
    assert says in str(e.value) and "\n" not in str(e.value)


def test_batch_size_is_checked_per_process():
    ok = load_config(["data.train_size=128", "data.batch_size=64"])
    assert ok.data.batch_size == 64
    with pytest.raises(ConfigError, match=r"per process \(2 processes\).*data.batch_size<=64"):
        load_config(["data.train_size=128", "data.batch_size=65", "trainer.devices=2"])


def test_model_minimum_sizes_are_the_models():
    import torch

    from zflight.models import create_model

    for name, smallest in MIN_IMAGE_SIZE.items():
        model = create_model(name, num_classes=8, width=0.125, head_pool=1).eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, smallest, smallest))
            with pytest.raises(RuntimeError):
                model(torch.zeros(1, 3, smallest - 1, smallest - 1))


def test_shapes_class_count_is_the_data_sets():
    from zflight.data.shapes import CLASSES

    assert len(CLASSES) == SHAPES_CLASSES


def test_a_bad_value_creates_nothing(tmp_path, capsys):
    from zflight.train import main

    run = tmp_path / "run"
    assert main([*tiny_overrides(run), "data.batch_size=1000"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not run.exists()


def test_callback_arguments_from_source_match_the_classes():
    """The source reading agrees with the signature that construction checks."""
    from zflight.run.targets import accepted_arguments, import_target

    for target in (
        "zflight.callbacks.occlusion.Occlusion",
        "zflight.callbacks.deconv.DeconvTopK",
        "zflight.callbacks.filter_health.FilterHealth",
        "zflight.callbacks.evolution.FeatureEvolution",
    ):
        from_source = [p.name for p in class_parameters(target)]
        assert from_source == accepted_arguments(import_target(target, "x")), target


@pytest.mark.parametrize(
    ("override", "says"),
    [
        (
            "callbacks.occlusion.every_n_epochs=two",
            "callbacks.occlusion.every_n_epochs='two': expected int, got 'two'",
        ),
        ("callbacks.deconv.layers=conv1", "callbacks.deconv.layers='conv1': expected Sequence"),
        ("callbacks.occlusion.on_last_epoch=3", "expected bool, got 3"),
        ("callbacks.occlusion.sise=4", "(did you mean callbacks.occlusion.size?)"),
    ],
)
def test_callback_argument_errors_without_torch(override, says):
    code = (
        "import sys\n"
        "from zflight.config import load_config, ConfigError\n"
        "from zflight.run.signatures import check_callback_arguments\n"
        "try:\n"
        f"    check_callback_arguments(load_config([{override!r}]))\n"
        "except ConfigError as e:\n"
        "    print(e)\n"
        "print('torch' in sys.modules)\n"
    )
    started = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - started
    message, torch_loaded = p.stdout.strip().splitlines()
    assert says in message and torch_loaded == "False"
    assert elapsed < 20  # well under 1 s on a quiet machine; torch alone takes several


def test_console_script_imports_callbacks_from_the_current_directory(tmp_path):
    (tmp_path / "my_callbacks.py").write_text(
        "from zflight.callbacks import VisualizationCallback\n"
        "class MeanImage(VisualizationCallback):\n"
        "    name = 'mean_image'\n"
    )
    code = (
        "import sys; from zflight.cli import main; "
        "sys.exit(main(['train', 'callbacks=none', "
        "'callbacks.mean._target_=my_callbacks.MeanImage', 'callbacks.mean.every=3']))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert p.returncode == 2
    assert "my_callbacks.MeanImage has no argument 'every'; valid: every_n_epochs" in p.stderr


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def test_wandb_online_without_key_or_network_is_one_line(tmp_path, monkeypatch, server):
    from zflight.run.wandb_check import check_wandb

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    online = load_config(["logger=wandb", "logger.mode=online"])
    with pytest.raises(ConfigError, match="needs a W&B API key.*logger.mode=offline"):
        check_wandb(online)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", server)
    check_wandb(online)  # a key and a server that answers: fine
    _Health.status = 404  # something answers, but not W&B
    try:
        with pytest.raises(ConfigError, match=r"cannot reach 127.0.0.1 within 3 s.*offline"):
            check_wandb(online)
    finally:
        _Health.status = 200
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="cannot reach"):
        check_wandb(online)
    assert time.perf_counter() - started < 10
    check_wandb(load_config(["logger=wandb", "logger.mode=offline"]))


def test_visualize_with_a_malformed_run_config_is_one_line(tmp_path, capsys):
    from zflight.train import train
    from zflight.visualize import main as visualize

    run = tmp_path / "run"
    train(tiny_overrides(run, "trainer.max_epochs=1"))
    (run / "config.yaml").write_text("model: {name: zfnet\n  width: [\n")
    capsys.readouterr()
    out = tmp_path / "out"
    assert visualize([f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.yaml cannot be read (" in err
    assert not out.exists()
