"""Suite-wide settings: offline, headless, opt-in markers, and shared tiny-data fixtures.

``--run-slow`` enables tests marked ``slow`` (real-size or real-data runs); ``--run-gpu`` enables
tests marked ``gpu`` (they also skip when CUDA is absent).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="run tests marked slow (real-size models, real data)",
    )
    parser.addoption(
        "--run-gpu", action="store_true", default=False, help="run tests marked gpu (need CUDA)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: pass --run-slow to run")
    skip_gpu = pytest.mark.skip(reason="gpu: pass --run-gpu to run")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not config.getoption("--run-gpu"):
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _own_token_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each test gets its own token cache (data.cache_tokens), never the user's ~/.cache."""
    monkeypatch.setenv("SCTUNE_CACHE_DIR", str(tmp_path_factory.mktemp("token-cache")))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the checkout; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder '{SHARED_DATA}' is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 cells x 200 genes of pbmc68k_reduced with raw counts (every class present)."""
    from sctune import testing

    return testing.write_tiny_h5ad(tmp_path_factory.mktemp("data") / "tiny.h5ad", 120, n_genes=200)


@pytest.fixture(scope="session")
def registry():
    """The built-in plugins only (entry points are not loaded)."""
    from sctune import testing

    return testing.registry_with()


class CliResult:
    """Exit code and output of one ``sctune`` invocation through ``sctune.cli.main.main``."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def text(self) -> str:
        return self.out + self.err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run the real entry point (exit codes, error rendering) in-process: ``cli("validate", ...)``.

    The CLI's cached registry is reset before each call, so plugins installed by the test count;
    ``registry=`` hands it a prebuilt one instead (faster, for many calls).
    """
    import sctune.cli.main as cli_main

    def run(*args: str, registry: object = None) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr("sys.argv", ["sctune", *map(str, args)])
        cli_main._STATE.update(registry=registry, plugins=[], debug=False)
        code = 0
        try:
            cli_main.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            cli_main._STATE.update(registry=None, plugins=[])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def tiny_lora_run(tiny_h5ad: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 1-epoch scGPT + LoRA run on the tiny data, shared by tests that only read it
    (``sctune predict`` and friends write their outputs elsewhere)."""
    from sctune import api, testing

    registry = api.get_registry()
    tmp = tmp_path_factory.mktemp("tiny-lora-run")
    rec = testing.example_recipe(registry, "scgpt", "lora", tmp, tiny_h5ad, epochs=1)
    rec["output"]["dir"] = str(tmp / "run")
    rec["trainer"]["num_threads"] = 1
    return api.run(rec, registry=registry, progress=False, log=lambda m: None).run_dir
