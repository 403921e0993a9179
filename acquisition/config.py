"""The lab configuration: one TOML file, overridable by ``ASSAY_`` environment variables.

``load_config(path)`` returns a validated :class:`LabConfig` or raises
:class:`~acquisition.errors.ConfigError` whose message is the one line a user sees:
``<file>: <field>: <what was expected>``. Environment variables override the file with
``__`` for nesting (``ASSAY_MQTT__PORT=1884``) and are deep-merged into it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from acquisition.errors import ConfigError
from acquisition.instrument_config import (
    AmplifierConfig,
    CounterConfig,
    DigitizerConfig,
    HarvesterConfig,
    IncubatorConfig,
    InstrumentConfig,
    InstrumentSettings,
    PerfusionConfig,
    accept_kind,
    accepted_kinds,
    checked_address,
    forget_kind,
)
from drivers.addresses import (
    check_host,
)
from drivers.toml_file import TomlFileError, read_toml

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AmplifierConfig",
    "CounterConfig",
    "DigitizerConfig",
    "HarvesterConfig",
    "IncubatorConfig",
    "InstrumentConfig",
    "InstrumentSettings",
    "JournalConfig",
    "LabConfig",
    "LoggingConfig",
    "MqttConfig",
    "PerfusionConfig",
    "SimulationConfig",
    "accept_kind",
    "config_path",
    "forget_kind",
    "load_config",
    "short_repr",
]

DEFAULT_CONFIG_PATH = Path("config/lab.toml")
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttConfig(_Strict):
    """How the daemon and the terminal reach the broker."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls_ca: Path | None = Field(
        None, description="CA certificate (PEM); TLS is on when this or tls_cert is set"
    )
    tls_cert: Path | None = Field(None, description="client certificate (PEM), optional")
    tls_key: Path | None = Field(None, description="client private key (PEM), optional")
    tls_insecure: bool = Field(False, description="skip host-name verification (tests only)")
    topic_prefix: str = "assay"
    keepalive_s: int = Field(15, ge=2, le=3600)
    publish_window: int = Field(32, ge=1, le=1000, description="QoS1 publishes in flight")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return checked_address(check_host, v)

    @field_validator("tls_key")
    @classmethod
    def _key_needs_cert(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        # tls_cert is declared before tls_key, so it is validated (or missing) by now.
        if v is not None and info.data.get("tls_cert") is None:
            raise ValueError("tls_key only together with tls_cert (the client certificate)")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_plain(cls, v: str) -> str:
        if not v or any(c in v for c in "#+") or v.startswith("/") or v.endswith("/"):
            raise ValueError("a topic prefix without wildcards or leading/trailing '/'")
        return v


class JournalConfig(_Strict):
    """The local SQLite journal: the source of truth for every run document."""

    path: Path = Path("var/journal.sqlite3")
    data_dir: Path | None = Field(
        None, description="where runs write their files (artifacts); default: a 'data' "
        "folder beside the journal",
    )
    synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="SQLite synchronous mode in WAL: 'normal' survives a daemon crash, "
        "'full' also a power cut, at the cost of an fsync per document",
    )

    @property
    def data_directory(self) -> Path:
        """``data_dir``, else ``data`` beside the journal file."""
        return self.data_dir if self.data_dir is not None else self.path.parent / "data"


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"



class SimulationConfig(_Strict):
    """Present when the instruments are simulators (``assay-sim bench``)."""

    enabled: bool = False
    time_scale: float = Field(1.0, gt=0, le=1_000_000)
    control_host: str = "127.0.0.1"
    control_port: int | None = Field(None, ge=1, le=65535)
    virtual_operator: bool = Field(
        True, description="the daemon answers prompts by doing the physical step on the bench"
    )
    counter: dict[str, Any] = Field(default_factory=dict)
    incubator: dict[str, Any] = Field(default_factory=dict)
    harvester: dict[str, Any] = Field(default_factory=dict)
    perfusion: dict[str, Any] = Field(default_factory=dict)
    rig: dict[str, Any] = Field(default_factory=dict, description="the patch rig's cell")
    world: dict[str, Any] = Field(default_factory=dict)

    @field_validator("control_host")
    @classmethod
    def _host(cls, v: str) -> str:
        return checked_address(check_host, v)


class LabConfig(BaseSettings):
    """Everything one daemon needs to know about its lab."""

    model_config = SettingsConfigDict(
        env_prefix="ASSAY_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    node: str = Field("lab1", description="daemon id, the {node} of every topic")
    mqtt: MqttConfig = MqttConfig()
    journal: JournalConfig = JournalConfig()
    logging: LoggingConfig = LoggingConfig()
    instruments: list[InstrumentConfig] = Field(default_factory=list)
    protocols_dir: Path = Field(Path("config/protocols"), description="run.start PROTOCOL")
    plates_dir: Path = Field(Path("config/plates"), description="run.start --plate-map NAME")
    simulation: SimulationConfig = SimulationConfig()
    plugins: list[str] = Field(
        default_factory=list,
        description="Python modules imported at start; each registers step types "
        "(acquisition.steps) of its own",
    )

    # The parsed config file, set on the subclass :func:`_with_file` makes.
    _file_data: ClassVar[dict[str, Any] | None] = None

    @field_validator("node")
    @classmethod
    def _node_is_plain(cls, v: str) -> str:
        if not _NODE_ID.match(v):
            raise ValueError("1-64 letters, digits, '-' or '_'")
        return v

    @field_validator("plugins")
    @classmethod
    def _module_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _MODULE.match(name):
                raise ValueError(f"Python module names like 'lab_steps.soak' (got {name!r})")
        return v

    @field_validator("instruments")
    @classmethod
    def _unique_ids(cls, v: list[InstrumentConfig]) -> list[InstrumentConfig]:
        seen: set[str] = set()
        for inst in v:
            if inst.id in seen:
                raise ValueError(f"unique instrument ids (duplicate '{inst.id}')")
            seen.add(inst.id)
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Init values first, then the environment, then the file's settings (load_config).
        if cls._file_data is None:
            return init_settings, env_settings
        return init_settings, env_settings, InitSettingsSource(settings_cls, cls._file_data)

    def topic(self, *parts: str) -> str:
        """``assay/{node}/...``"""
        return "/".join((self.mqtt.topic_prefix, self.node, *parts))

    def redacted(self) -> dict[str, Any]:
        """The config as JSON-able data with secrets masked (for run snapshots)."""
        return self.model_dump(mode="json")  # SecretStr dumps as '**********'


def config_path(path: Path | str | None = None) -> Path:
    """The config file meant: ``path``, else ``$ASSAY_CONFIG``, else config/lab.toml."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get("ASSAY_CONFIG", str(DEFAULT_CONFIG_PATH)))


def load_config(path: Path | str | None = None) -> LabConfig:
    """Load and validate the lab config; raise ConfigError with a one-line message.

    Besides the settings themselves this checks the files the terminal and the daemon need
    before they connect (the TLS certificates); the daemon checks its journal path itself
    (:func:`acquisition.config_checks.check_journal_path`).
    """
    cfg_path = config_path(path)
    source = str(cfg_path)
    try:
        data = read_toml(cfg_path)
    except TomlFileError as exc:
        raise ConfigError(source, exc.field, exc.expected) from exc
    _load_plugins(source, _plugins_named(data))  # first: they may register instrument kinds
    try:
        config = _with_file(data)()
    except ValidationError as exc:
        raise _one_line(source, exc) from exc
    except ValueError as exc:  # pydantic-settings: env var that is not valid JSON
        raise ConfigError(source, "(environment)", str(exc)) from exc
    from acquisition.config_checks import check_tls_files

    problem = check_tls_files(config.mqtt)
    if problem is not None:
        raise ConfigError(source, *problem)
    _load_plugins(source, config.plugins)  # from the environment too (imported once)
    return config


def _plugins_named(data: dict[str, Any]) -> list[str]:
    """The plug-in modules the file and ``ASSAY_PLUGINS`` name (what is not a list of module
    names is left to the validation to refuse)."""
    named: list[str] = []
    for given in (data.get("plugins"), os.environ.get("ASSAY_PLUGINS")):
        value = given
        if isinstance(given, str):
            try:
                value = json.loads(given)
            except ValueError:
                continue
        if isinstance(value, list):
            named += [p for p in value if isinstance(p, str) and _MODULE.match(p)]
    return list(dict.fromkeys(named))


def _load_plugins(source: str, modules: list[str]) -> None:
    """Import each plug-in module (it registers its step types); ConfigError naming the one
    that cannot be imported."""
    import importlib

    for i, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except Exception as exc:  # a plug-in's own error, whatever it is, is the config's
            first = (str(exc).splitlines() or [""])[0]
            why = f"an importable module ({type(exc).__name__}: {first})"
            raise ConfigError(source, f"plugins[{i}]", why) from exc


def _with_file(data: dict[str, Any]) -> type[LabConfig]:
    """LabConfig reading ``data`` (the parsed file) below the environment and init values,
    its instruments of every kind accepted now (plug-ins included)."""
    kinds: Any = Annotated[Union[tuple(accepted_kinds().values())], Field(discriminator="kind")]  # noqa: UP007
    cls = create_model("LabConfig", __base__=LabConfig, __module__=__name__,
                       instruments=(list[kinds], Field(default_factory=list)))  # fmt: skip
    cls._file_data = data
    return cls


def _one_line(source: str, exc: ValidationError) -> ConfigError:
    err = exc.errors(include_url=False)[0]
    loc = _format_loc(err.get("loc", ()))
    msg = str(err.get("msg", "a valid value"))
    msg = msg.removeprefix("Value error, ")
    if err.get("type") == "union_tag_invalid":
        ctx = err.get("ctx", {})
        loc = f"{loc}.{str(ctx.get('discriminator', 'kind')).strip(chr(39))}"
        msg = f"one of {ctx.get('expected_tags')} (got {short_repr(ctx.get('tag'))})"
    elif err.get("type") == "extra_forbidden":
        msg = "no such setting (check the spelling)"
    elif err.get("type") == "missing":
        msg = "a value (this setting is required)"
    elif _is_secret(loc):
        pass  # never echo what was given for a secret
    elif "(got " in msg:
        pass  # the validator quoted the part of the input that is wrong
    elif "input" in err and err.get("type") not in {"missing", "union_tag_invalid"}:
        msg = f"{msg} (got {short_repr(err['input'])})"
    return ConfigError(source, loc or "(top level)", msg)


def _is_secret(loc: str) -> bool:
    return any(word in loc.lower() for word in ("password", "secret", "token"))


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in accepted_kinds() and out.startswith(
            "instruments["
        ):
            continue  # the discriminated-union tag adds noise to the path
        else:
            out += f".{part}" if out else str(part)
    return out


def short_repr(value: object) -> str:
    """A value as an error message quotes it: its repr, at most 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
