from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dbs
import pytest

from imgaudit.config import Settings, load_settings
from imgaudit.models.visual import VisualEncoder
from imgaudit.testing.fakes import FakeVisualSession


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's imgaudit.toml or IMGAUDIT_* variables, and none writes into the real
    per-user data directory (the default data_dir): XDG_DATA_HOME points into tmp_path."""
    import os

    for key in list(os.environ):
        if key.startswith("IMGAUDIT_") and key != "IMGAUDIT_TEST_DATABASE_URL":
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection a test opens goes to this machine (127.0.0.0/8 or ::1): a guard that let a
    redirect, a fake DNS answer or a URL's userinfo through would fail the test instead of reaching out."""
    import ipaddress
    import socket

    def check(sock: socket.socket, address: object) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
            return
        host = str(address[0]).split("%", 1)[0]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise ConnectionRefusedError(f"tests connect only to loopback, not {host}")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(sock: socket.socket, address: object) -> None:
        check(sock, address)
        return real_connect(sock, address)  # type: ignore[arg-type]

    def connect_ex(sock: socket.socket, address: object) -> int:
        check(sock, address)
        return real_connect_ex(sock, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return load_settings(data_dir=tmp_path / "data", database_url=database_url)


@pytest.fixture
def cfg(tmp_path: Path) -> Settings:
    """Settings on tmp_path without `database_url`: for tests that never open the store (so they stay off
    the PostgreSQL pass, see STORE_BACKED)."""
    return load_settings(data_dir=tmp_path / "data")


@pytest.fixture
def fake_encoder() -> VisualEncoder:
    return VisualEncoder(FakeVisualSession(), batch_size=8)


@pytest.fixture(scope="session")
def real_encoder() -> Iterator[VisualEncoder]:
    """The real bundled model, exported once into the normal cache directory."""
    from imgaudit.bootstrap import build_encoder

    yield build_encoder(load_settings(data_dir=Path("/nonexistent")))


@pytest.fixture(scope="session")
def cjk_font_path() -> str:
    """A font with Chinese glyphs (CI installs fonts-wqy-microhei); skipped locally when there is none."""
    import os
    import subprocess

    try:
        found = subprocess.run(
            ["fc-list", ":lang=zh", "file"], capture_output=True, text=True, check=False
        ).stdout.split()
    except FileNotFoundError:
        found = []
    paths = sorted(p.rstrip(":") for p in found if p.rstrip(":").endswith((".ttc", ".ttf", ".otf")))
    known = [
        "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
        "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    ]
    paths += [p for p in known if Path(p).is_file()]
    if paths:
        return paths[0]
    if os.environ.get("CI"):
        pytest.fail("no CJK font installed (apt-get install fonts-wqy-microhei)", pytrace=False)
    pytest.skip("no CJK font installed")


# -- databases (see tests/support/dbs.py) --------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    missing = [p for p in STORE_BACKED if not (TESTS / p).exists()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py STORE_BACKED names paths that do not exist: {missing}")
    problem = dbs.check_backend()
    if problem:  # asked for a server-backed run without a server: stop before running anything
        raise pytest.UsageError(problem)


# -- which tests the PostgreSQL pass runs --------------------------------------------------------------------
# `make test-dbs` runs the suite twice: on SQLite, then with IMGAUDIT_TEST_BACKEND=postgresql. The second
# pass runs only the tests that reach a store backend, instead of running pure functions, models, index
# backends and docs checks twice. A test runs on it when
#   - it asks for `database_url` (directly or through `settings`), wherever it lives, or
#   - its file lies under a STORE_BACKED path (relative to tests/): these reach the store some other way
#     (the CLI and worker subprocesses through `dbs.db_env`, the conformance suite's own `store` fixture,
#     `SqlStore` built directly), or are the store-side files whose every test ran on both passes before
#     the tests were arranged by package (tests/models/test_real_visual_encoder.py came from one of them).
# A listed path that does not exist stops the run, so moving a file cannot silently drop it from the pass.
STORE_BACKED = (
    "conformance/test_store_conformance.py",
    "unit/store/",
    "unit/services/",
    "unit/pipeline/",
    "unit/sources/",
    "unit/policy/test_moderation.py",
    "e2e/test_cli.py",
    "e2e/test_cli_moderation.py",
    "e2e/test_cli_output.py",
    "e2e/test_crash_safety.py",
    "e2e/test_worker_daemon.py",
    "models/test_real_visual_encoder.py",
)
TESTS = Path(__file__).resolve().parent


def _store_backed(item: pytest.Item) -> bool:
    if "database_url" in getattr(item, "fixturenames", ()):
        return True
    path = item.path.resolve().relative_to(TESTS).as_posix()
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in STORE_BACKED)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if dbs.BACKEND != "postgresql":
        return
    drop = [i for i in items if not _store_backed(i)]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [i for i in items if _store_backed(i)]


def pytest_report_header(config: pytest.Config) -> str:
    return dbs.describe()


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """The store URL for one test: a SQLite file in tmp_path, or a fresh PostgreSQL database
    (IMGAUDIT_TEST_BACKEND=postgresql) that is dropped afterwards."""
    if dbs.BACKEND == "postgresql":
        with dbs.postgres().database() as url:
            yield url
    else:
        yield dbs.sqlite_url(tmp_path)


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh MariaDB database for one test (dropped afterwards). Skips when no server is configured,
    except in CI, where the MariaDB tests must run."""
    try:
        server = dbs.mysql()
        server.check()
    except dbs.ServerUnavailable as exc:
        if dbs.MYSQL_URL or dbs.IN_CI:
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    with server.database() as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def _drop_test_databases() -> Iterator[None]:
    yield
    dbs.cleanup()
