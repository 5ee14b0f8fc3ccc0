"""Fast unit tests: config validation, the CIFAR reader, models, the energy meter, packaging pins."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from greenstudy.config import RunConfig, parse_variants
from greenstudy.errors import ConfigError, DataError
from greenstudy.training.data import load_cifar, write_synthetic_cifar
from greenstudy.training.models import build_model, count_macs_params
from greenstudy.variants.catalog import execution_order
from greenstudy.variants.pruned import prune_channels
from tests.conftest import ROOT


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'"):
        RunConfig(dataset="mnist")
    with pytest.raises(ConfigError, match="lr must be positive"):
        RunConfig(lr=0)
    with pytest.raises(ConfigError, match="prune_ratio"):
        RunConfig(prune_ratio=1.0)
    assert RunConfig(epochs=8).effective_finetune_epochs == 2
    assert RunConfig(epochs=2).effective_finetune_epochs == 1


def test_variants_parse_and_order() -> None:
    assert parse_variants("quantized, amp") == ("quantized", "amp")
    assert execution_order(("quantized", "amp")) == ["baseline", "quantized", "amp"]
    assert execution_order(("amp",)) == ["amp"]
    with pytest.raises(ConfigError, match="twice"):
        parse_variants("amp,amp")


def _write_official_style(root: Path, key_type: type) -> None:
    """CIFAR-100 pickles keyed the way the official (Python 2) files load: str or bytes keys."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)

    def key(name: str) -> str | bytes:
        return name if key_type is str else name.encode()

    for name, count in (("train", 40), ("test", 10)):
        entry = {key("data"): rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 key("fine_labels"): list(rng.integers(0, 100, count)), key("coarse_labels"): [0] * count}
        with (folder / name).open("wb") as handle:
            pickle.dump(entry, handle, protocol=2)
    with (folder / "meta").open("wb") as handle:
        pickle.dump({key("fine_label_names"): [f"c{i}" for i in range(100)]}, handle, protocol=2)


@pytest.mark.parametrize("key_type", [str, bytes])
def test_reader_accepts_str_and_bytes_keys(tmp_path: Path, key_type: type) -> None:
    _write_official_style(tmp_path, key_type)
    data = load_cifar("cifar100", tmp_path, download=False, val_size=8, seed=3)
    assert data.train.images.shape == (32, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert len(data.val) == 8 and len(data.test) == 10
    assert data.class_names[:2] == ["c0", "c1"]
    assert data.source.startswith("real:")
    # the split is deterministic for a seed and different for another
    again = load_cifar("cifar100", tmp_path, download=False, val_size=8, seed=3)
    assert torch.equal(again.val.labels, data.val.labels)


def test_reader_extracts_an_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tarfile

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "src"
    write_synthetic_cifar(source, "cifar10", n_train=50, n_test=10)
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    data = load_cifar("cifar10", archive_dir, download=False, val_size=5)
    assert data.num_classes == 10 and len(data.train) == 45 and data.source.startswith("synthetic:")


def test_reader_rejects_corrupt_files(tmp_path: Path) -> None:
    write_synthetic_cifar(tmp_path, "cifar100", n_train=20, n_test=5)
    (tmp_path / "cifar-100-python" / "test").write_bytes(pickle.dumps({b"data": np.zeros((3, 10), np.uint8)}))
    with pytest.raises(DataError, match="corrupt data file .*test"):
        load_cifar("cifar100", tmp_path, download=False, val_size=2)


def test_missing_data_fails_within_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    started = time.perf_counter()
    with pytest.raises(DataError, match="put cifar-100-python/ or cifar-100-python.tar.gz in"):
        load_cifar("cifar100", tmp_path / "empty", download=False)
    assert time.perf_counter() - started < 5


def test_greenstudy_data_env_overrides_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENSTUDY_DATA", "/somewhere")
    assert RunConfig().resolved_data_dir() == "/somewhere"
    assert RunConfig(data_dir="/explicit").resolved_data_dir() == "/explicit"


@pytest.mark.parametrize(("name", "macs_millions"), [("resnet18", 557), ("efficientnet_b0", 33)])
def test_cifar_models_have_the_expected_cost(name: str, macs_millions: int) -> None:
    model = build_model(name, 100)
    macs, params = count_macs_params(model)
    assert round(macs / 1e6) == pytest.approx(macs_millions, abs=2)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    assert build_model(name, 10, resolution=64)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="unknown model 'alexnet': choose one of resnet18, efficientnet_b0"):
        build_model("alexnet", 100)


def test_pruning_efficientnet_keeps_all_classes() -> None:
    model = build_model("efficientnet_b0", 100)
    before, _ = count_macs_params(model)
    prune_channels(model, 0.5, "l2")
    after, _ = count_macs_params(model)
    assert after < 0.5 * before
    model.train()
    out = model(torch.randn(4, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (4, 100)


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        name, _, version = line.partition("==")
        pins[name.strip().lower()] = version.strip()
    return pins


def test_conda_pins_agree_with_pyproject() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip_section = next(item["pip"] for item in conda["dependencies"] if isinstance(item, dict))
    assert _pins(project) == _pins(pip_section)
    assert all(version for version in _pins(project).values()), "every dependency is pinned"


def _as_parsed(value: object) -> object:
    """An MLproject default as the entry script's parser would see it."""
    text = str(value).strip().lower()
    if text in ("none", ""):
        return None if text == "none" else ""
    if text in ("true", "false"):
        return text == "true"
    try:
        number = float(text)
    except ValueError:
        return str(value)
    return int(number) if number.is_integer() else number


def test_mlproject_main_defaults_are_runconfig_defaults() -> None:
    """One definition of each default: MLproject's `main` parameters are exactly the parser's options
    (defaults from RunConfig), with the same defaults, and each reaches the command."""
    from greenstudy.runs.params import main_parser

    spec = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["main"]
    parser_defaults = {a.dest: a.default for a in main_parser()._actions if a.dest not in ("help", "experiment")}
    assert set(spec["parameters"]) == set(parser_defaults)
    for name, declared in spec["parameters"].items():
        expected = parser_defaults[name]
        assert _as_parsed(declared["default"]) == (_as_parsed(expected) if expected not in (None, "") else expected), name
        assert "{" + name + "}" in spec["command"], name


def test_an_epoch_says_its_progress_between_steps(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A labelled epoch prints `step k/N ... img/s ... left in this epoch` lines (GREENSTUDY_PROGRESS_S apart);
    an unlabelled one (a probe, a follower rank) prints none; a bad interval is one ConfigError."""
    from greenstudy.measure.precision import Precision
    from greenstudy.training.data import Normalizer, Split
    from greenstudy.training.steps import TrainSetup, make_optimizer, make_scheduler, train_one_epoch

    torch.manual_seed(0)
    model = build_model("resnet18", 10)
    optimizer = make_optimizer(model, 0.01, 0.0)
    cpu = torch.device("cpu")
    setup = TrainSetup(model=model, optimizer=optimizer, scheduler=make_scheduler(optimizer, 0.01, 12),
                       normalize=Normalizer((0.5,) * 3, (0.25,) * 3, cpu, False), precision=Precision(),
                       label_smoothing=0.0, batch_size=4, device=cpu, generator=torch.Generator().manual_seed(0))
    split = Split(torch.randint(0, 255, (12, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (12,)))
    monkeypatch.setenv("GREENSTUDY_PROGRESS_S", "1e-9")
    train_one_epoch(setup, split)
    assert "step" not in capsys.readouterr().err  # no label (a probe, a follower rank): no lines
    setup.progress_label = "resnet18/baseline"
    monkeypatch.setenv("GREENSTUDY_PROGRESS_S", "0")
    train_one_epoch(setup, split)
    assert "step" not in capsys.readouterr().err  # 0 turns them off
    monkeypatch.setenv("GREENSTUDY_PROGRESS_S", "1e-9")
    train_one_epoch(setup, split)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[2] for line in lines] == ["1/3", "2/3", "3/3"], lines
    assert all(line.startswith("[resnet18/baseline]") and "img/s" in line and "left in this epoch" in line for line in lines)
    monkeypatch.setenv("GREENSTUDY_PROGRESS_S", "soon")
    with pytest.raises(ConfigError, match="GREENSTUDY_PROGRESS_S"):
        train_one_epoch(setup, split)
