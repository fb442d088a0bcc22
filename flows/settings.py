"""All configuration in one place: ``RR_*`` environment variables over an optional TOML file.

Precedence: environment variable > TOML file (``RR_CONFIG``, else ``./rerefine.toml``) >
embedded default. Library code never reads settings; the CLI and flows pass the values
they need as arguments.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from rerefine.common.errors import InputError

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_test_data() -> Path:
    # In a source checkout (editable install) this is <repo>/../shared/data; otherwise
    # relative to the working directory.
    if (_REPO_ROOT / "pyproject.toml").is_file():
        return (_REPO_ROOT.parent / "shared" / "data").resolve()
    return (Path.cwd().parent / "shared" / "data").resolve()


@dataclass(frozen=True)
class Settings:
    """Settings of a rerefine installation. Every field maps to ``RR_<FIELD>``."""

    data_dir: Path = Path("rerefine-data")
    database_url: str = ""
    work_dir: Path | None = None
    monomer_lib: Path | None = None
    top8000: Path | None = None
    test_data: Path | None = None
    rcsb_search_url: str = "https://search.rcsb.org/rcsbsearch/v2/query"
    rcsb_data_url: str = "https://data.rcsb.org/rest/v1/core/entry"
    rcsb_files_url: str = "https://files.rcsb.org/download"
    emdb_api_url: str = "https://www.ebi.ac.uk/emdb/api/entry"
    emdb_files_url: str = "https://ftp.ebi.ac.uk/pub/databases/emdb/structures"
    mirror: str = ""
    max_resolution: float = 5.0
    douse_max_resolution: float = 3.0
    max_map_mb: float = 2048.0
    concurrency: int = 2
    entry_memory_mb: float = 8192.0  # MiB one entry's computation may use (0: no limit)
    entry_seconds: float = 7200.0  # s one entry's computation may take (0: no limit)
    schedule_cron: str = "0 2 * * *"
    http_timeout: float = 60.0  # s: connection and each read (idle time)
    http_total_timeout: float = 3600.0  # s: one whole request or download, all attempts
    user_agent: str = "rerefine (automated cryo-EM re-refinement; https://github.com/rerefine)"

    @property
    def database(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'rerefine.sqlite').resolve()}"

    @property
    def downloads(self) -> Path:
        return (self.work_dir or self.data_dir / "work").resolve()

    @property
    def site_dir(self) -> Path:
        return (self.data_dir / "site").resolve()

    @property
    def monomer_library(self) -> Path | None:
        """Monomer library: RR_MONOMER_LIB, then CLIBD_MON (CCP4's own variable), else None.

        Never the test data's subset unless RR_MONOMER_LIB names it: with that subset residues
        outside it (most ligands) would silently stay fixed."""
        if self.monomer_lib:
            return Path(self.monomer_lib)
        if os.environ.get("CLIBD_MON"):
            return Path(os.environ["CLIBD_MON"])
        return None

    @property
    def top8000_dir(self) -> Path:
        """Top8000 validation data (Ramachandran/rotamer tables): RR_TOP8000, else the test data's copy."""
        if self.top8000:
            return Path(self.top8000)
        return self.test_data_dir / "validation" / "top8000"

    @property
    def test_data_dir(self) -> Path:
        return Path(self.test_data) if self.test_data else _default_test_data()


def _convert(name: str, typ, raw):
    typ = str(typ)
    try:
        if "Path" in typ:
            return Path(raw) if raw not in ("", None) else None
        if typ == "float":
            return float(raw)
        if typ == "int":
            return int(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise InputError(f"setting {name}: cannot use {raw!r}") from None


def load_settings(env: dict | None = None, config: Path | None = None) -> Settings:
    """Build :class:`Settings` from a TOML file and ``RR_*`` environment variables."""
    env = os.environ if env is None else env
    cfg_path = config or (Path(env["RR_CONFIG"]) if env.get("RR_CONFIG") else Path("rerefine.toml"))
    values: dict = {}
    if cfg_path.is_file():
        try:
            values.update(tomllib.loads(cfg_path.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{cfg_path}: invalid TOML ({exc})") from None
    known = {f.name: f for f in fields(Settings)}
    unknown = set(values) - set(known)
    if unknown:
        raise InputError(f"{cfg_path}: unknown settings {sorted(unknown)}")
    for name in known:
        key = "RR_" + name.upper()
        if key in env:
            values[name] = env[key]
    kwargs = {}
    for name, raw in values.items():
        v = _convert(name, known[name].type, raw)
        if v is not None:
            kwargs[name] = v
    return Settings(**kwargs)
