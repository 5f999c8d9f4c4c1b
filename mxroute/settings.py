"""Settings: the one place configuration is read (pydantic-settings).

Sources, strongest first: command-line overrides, ``MXROUTE_<NAME>`` environment
variables (lists and tables as JSON; plain lists also comma-separated: mxroute/settingsenv.py),
the TOML file (``--config``, else ``MXROUTE_CONFIG``,
else ``/etc/mxroute/mxroute.toml`` when present), then the defaults below.
A bad value becomes one ``ConfigError`` line naming the setting.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from mxroute.address import (
    Listener,
    normalize_domain,
    parse_address,
    parse_dns_server,
    parse_hostport,
    parse_listener,
)
from mxroute.errors import AddressError, ConfigError
from mxroute.hostdefaults import (
    AUTO_FLOOR_MESSAGES,
    auto_budget,
    host_name,
    machine_memory,
    spool_default,
)
from mxroute.settingsenv import PLAIN_LISTS, TypedEnv, env_name, split_list, unknown_variables
from mxroute.settingsrules import (
    Level,
    ReplyPatternRule,
    RouteRule,
    ShapingRule,
    check_level,
    normalize_key,
)
from mxroute.sharedstate import parse_shared_state

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("/etc/mxroute/mxroute.toml")
# seconds a DKIM signature must outlive the queue (dkim_expire_seconds): receivers' own queues
# and verification after delivery (the rotation advice in docs/dkim.md)
DKIM_EXPIRE_MARGIN = 86400
# what a reload (SIGHUP, mxroute/service/daemon.py) cannot change: kept until a restart
RESTART_ONLY = ("listen", "spool_dir", "metrics_listen", "delivery_processes", "shared_state",
                "shared_state_password_file", "max_inflight_bytes")


def normalize_table(table: Mapping[str, object]) -> dict[str, Level]:
    """Validate ``tls_policy_domains``: domain keys, known levels (ValueError names the culprit)."""
    out: dict[str, Level] = {}
    for key, value in table.items():
        out[normalize_key(str(key))] = check_level(value, f"TLS policy level for {key}:")
    return out


def check_ca_file(path: Path) -> Path:
    """ValueError unless ``path`` is a readable PEM bundle with at least one certificate."""
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    import ssl  # only when a bundle is configured: start-up stays lean

    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{path} is not a PEM CA bundle: {exc}") from None
    if not context.get_ca_certs():
        raise ValueError(f"{path} holds no CA certificate")
    return path


class DkimKey(BaseModel):
    """One ``[[dkim_keys]]`` entry: the key in ``key_file`` for ``domain`` under ``selector``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    domain: str
    selector: str
    key_file: Path
    # client networks and/or AUTH user names allowed to have this domain signed (None: every
    # client allowed to relay)
    senders: tuple[str, ...] | None = None

    @field_validator("senders")
    @classmethod
    def _senders(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        out = []
        for item in value:
            text = item.strip()
            if not text:
                raise ValueError("an empty entry in senders")
            network = _network(text)
            if network is None and "/" in text:
                raise ValueError(f"senders: {item!r} is not a network")
            out.append(text if network is None else str(network))
        return tuple(out)

    def sender_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The networks among ``senders``."""
        return [net for net in map(_network, self.senders or ()) if net is not None]

    def sender_users(self) -> frozenset[str]:
        """The AUTH user names among ``senders``."""
        return frozenset(s for s in self.senders or () if _network(s) is None)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if value.strip() == "*":
            return "*"
        key = normalize_key(value)
        if key.startswith((".", "[")):
            raise ValueError(f"{value!r} is not a domain (or \"*\")")
        return key

    @field_validator("selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        text = value.strip().lower()
        if not _SELECTOR.fullmatch(text) or len(text) > 253:
            raise ValueError(f"{value!r} is not a DKIM selector (DNS labels: letters, digits, "
                             "hyphens, separated by dots)")
        return text


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


_SELECTOR = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


class Settings(BaseSettings):
    """Every setting of mxroute, with its default (see config/mxroute.toml)."""

    model_config = SettingsConfigDict(env_prefix="MXROUTE_", extra="forbid", validate_default=True)

    # --- intake ---
    listen: list[str] = ["127.0.0.1:2525"]
    relay_networks: list[str] = ["127.0.0.0/8", "::1/128"]
    # SEC-4: needed to start with 0.0.0.0/0 or ::/0 in relay_networks
    allow_open_relay: bool = False
    max_message_size: int = Field(36700160, ge=1024)
    # issue 22: bytes of mail in memory at once (DATA received, messages held); 0: sized from
    # the machine's memory (inflight_budget())
    max_inflight_bytes: int = Field(0, ge=0)
    max_recipients: int = Field(100, ge=1)
    max_received_headers: int = Field(100, ge=1)
    bare_newline: Literal["normalize", "reject"] = "normalize"
    allow_address_literals: bool = False
    # SPF-13: a MAIL FROM domain with a null MX → 550 5.7.27; "strict" also refuses on DNS trouble
    # (451 4.4.3) and NXDOMAIN (550 5.1.8); "off" asks nothing
    # (see mxroute/relay/intake/sendercheck.py)
    null_mx_sender: Literal["off", "reject", "strict"] = "reject"
    max_clients: int = Field(200, ge=1)
    # SEC-10; relay_networks exempt (Postfix smtpd_client_connection_count_limit)
    max_clients_per_ip: int = Field(50, ge=1)
    command_timeout: float = Field(300.0, gt=0)  # server side, RFC 5321 §4.5.3.2.7
    # the whole DATA phase; 300 s as Postfix's smtpd_timeout (§4.5.3.2.6's 10 min is the CLIENT's)
    data_timeout: float = Field(300.0, gt=0)
    # issue 21: a session's whole life, checked at each command (421 4.7.0 past it)
    max_session_seconds: float = Field(3600.0, gt=0)
    # NOOP/RSET/VRFY/EXPN/HELP/HELO/EHLO without a completed transaction (Postfix 100)
    junk_command_limit: int = Field(100, ge=1)
    # SEC-8: failed AUTH per client address within auth_failure_window seconds, then 421
    max_auth_failures_per_ip: int = Field(10, ge=1)
    auth_failure_window: float = Field(600.0, gt=0)
    tls_min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"  # inbound STARTTLS and smtps
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    auth_credentials_file: Path | None = None
    banner: str = "ESMTP"

    # --- spool and queue ---
    spool_dir: Path = Field(default_factory=spool_default)
    retry_min_seconds: int = Field(300, ge=1)
    retry_max_seconds: int = Field(3600, ge=1)
    queue_lifetime_seconds: int = Field(432000, ge=0)
    bounce_lifetime_seconds: int = Field(432000, ge=0)
    delay_warning_seconds: int = Field(0, ge=0)  # 0 = no delay warnings (DSN-10)
    # a copy of each bounce that cannot be delivered (Postfix's double bounce); unset: none
    postmaster_address: str | None = None
    delivery_concurrency: int = Field(100, ge=1)
    destination_concurrency: int = Field(20, ge=1)
    # 1: delivery (queue manager, courier) runs in a second process, intake in the first (2 cores);
    # 0: both on one event loop in one process (debugging, tests). Read at start only.
    delivery_processes: int = Field(1, ge=0, le=1)

    # --- DNS ---
    dns_servers: list[str] = []
    dns_timeout: float = Field(5.0, gt=0)
    dns_attempts: int = Field(2, ge=1)
    dns_cache_size: int = Field(10000, ge=0)
    # TLS-7: believe the AD bit of dns_servers' answers (they are a DNSSEC-validating resolver on a
    # trusted path, e.g. unbound on 127.0.0.1); queries then carry AD (RFC 6840 §5.7). Postfix
    # smtp_dns_support_level = dnssec. Needed by the TLS level "dane".
    dns_trust_ad: bool = False
    # answer every query from these RFC 1035 zone files instead of any server (offline routing,
    # labs, tests); `--zone FILE` sets it, and so it reaches the delivery process too
    dns_zone_files: list[Path] = []
    # bulk `explain --json -` / `--file` (issue 16 §4): addresses resolved at once, one resolver
    explain_concurrency: int = Field(100, ge=1)

    # --- routing and delivery ---
    smtp_port: int = Field(25, ge=1, le=65535)
    helo_name: str = Field(default_factory=host_name)
    egress_ips: list[str] = []
    sender_domain: str | None = None  # default sender domain for the SPF self-check
    allow_private_destinations: bool = False
    address_family: Literal["ipv6-first", "ipv4-first", "ipv4-only", "ipv6-only"] = "ipv6-first"
    mx_address_limit: int = Field(5, ge=1)
    mx_session_limit: int = Field(2, ge=1)
    connect_timeout: float = Field(30.0, gt=0)
    greeting_timeout: float = Field(300.0, gt=0)  # RFC 5321 §4.5.3.2.1: 5 min
    mail_timeout: float = Field(300.0, gt=0)  # §4.5.3.2.2: 5 min
    rcpt_timeout: float = Field(300.0, gt=0)  # §4.5.3.2.3: 5 min
    data_init_timeout: float = Field(120.0, gt=0)  # §4.5.3.2.4: 2 min
    data_block_timeout: float = Field(180.0, gt=0)  # §4.5.3.2.5: 3 min
    data_done_timeout: float = Field(600.0, gt=0)  # §4.5.3.2.6: 10 min
    # TLS-3: Postfix smtp_tls_security_level / smtp_tls_policy_maps (see mxroute/tls/policy.py)
    tls_policy: str = "may"  # none | may | encrypt | verify | dane (TLS-7, needs dns_trust_ad)
    tls_policy_domains: dict[str, str] = {}  # "example.com" or ".example.com" (subdomains) -> level
    tls_ca_file: Path | None = None  # CA bundle for "verify" and MTA-STS; unset = the system store
    # TLS-5/6: MTA-STS (RFC 8461, mxroute/tls/mtasts.py); a tls_policy_domains entry wins over it
    mta_sts: bool = True
    # HTTPS port of mta-sts.<domain>: for testing only
    mta_sts_port: int = Field(443, ge=1, le=65535)

    # --- DKIM (docs/dkim.md): `mxroute dkim keygen` makes keys, `mxroute dkim check` checks them
    # against DNS; serve signs relayed mail whose From: domain has a key
    dkim_keys: list[DkimKey] = []
    # refuse (550 5.7.1) what cannot be signed: no or several From:, a client not in senders
    dkim_required: bool = False
    # x= (signature expiry) this many seconds after signing; None: no x=. At least
    # queue_lifetime_seconds + DKIM_EXPIRE_MARGIN
    dkim_expire_seconds: int | None = Field(None, ge=1)

    # --- next-hop rules (docs/routes.md): the first [[routes]] entry matching a recipient's
    # domain (and the sender, when it names one) sends its mail to next_hop instead of the MX
    routes: list[RouteRule] = []

    # --- traffic shaping (docs/shaping.md): the first [[shaping]] rule matching a destination
    # sets its limits; then the shipped provider rules; then destination_concurrency per site
    shaping: list[ShapingRule] = []

    # --- learning (docs/shaping.md): replies that slow a site down, dead sites, address families
    # reply patterns tried before the shipped ones (Gmail 421 4.7.28, Yahoo [TSS04], ...)
    reply_patterns: list[ReplyPatternRule] = []
    # a site is suspended for retry_min_seconds after this many deliveries in a row found every
    # address of it failing at connect or greeting (Postfix's dead-destination cohort)
    dead_site_cohort: int = Field(1, ge=1)
    # how long a site prefers the other address family after one family failed it
    family_hold_seconds: int = Field(3600, ge=1)

    # --- a fleet (docs/shaping.md, "Limits across nodes"): limits shared by serve nodes via Redis
    # "redis://host:port/db", "rediss://user@host:port/db" (TLS); unset: one node, nothing shared
    shared_state: str | None = None
    # the Redis password (its one line), never in the URL; with an ACL user in the URL, its own
    shared_state_password_file: Path | None = None

    # --- operations ---
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "host:port" of the Prometheus endpoint (needs the metrics extra)
    metrics_listen: str | None = None

    @field_validator(*sorted(PLAIN_LISTS), mode="before")
    @classmethod
    def _typed_list(cls, value: object) -> object:
        return split_list(value)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: list[str]) -> list[str]:
        for item in value:  # addresses, not names: no DNS decides where the relay listens
            host = parse_listener(item).host
            if host != "localhost" and _network(host) is None:
                raise ValueError(f"{item!r} is not an IP address with a port (e.g. "
                                 "127.0.0.1:2525, [::1]:2525, 0.0.0.0:25, smtps://0.0.0.0:465)")
        return value

    @field_validator("metrics_listen")
    @classmethod
    def _metrics(cls, value: str | None) -> str | None:
        if not value:
            return None
        host, _ = parse_hostport(value, 9125)
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            labels = host.split(".")
            if not all(part.isalnum() or part.replace("-", "").isalnum() for part in labels):
                raise ValueError(f"{value!r} is not host:port") from None
        import importlib.util

        if importlib.util.find_spec("prometheus_client") is None:
            raise ValueError("needs the prometheus-client package: pip install 'mxroute[metrics]'")
        return value

    @field_validator("shared_state")
    @classmethod
    def _shared_state(cls, value: str | None) -> str | None:
        if not value:
            return None
        parse_shared_state(value)
        return value.strip()

    @field_validator("shared_state_password_file")
    @classmethod
    def _shared_state_password(cls, value: Path | None) -> Path | None:
        if value is not None and not (value.is_file() and os.access(value, os.R_OK)):
            raise ValueError(f"{value} is not a readable file (its one line is the password)")
        return value

    @field_validator("relay_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("dns_servers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_dns_server(item)
        return value

    @field_validator("dns_zone_files")
    @classmethod
    def _zone_files(cls, value: list[Path]) -> list[Path]:
        for path in value:
            if not path.is_file():
                raise ValueError(f"zone file {path} does not exist")
        return value

    @field_validator("tls_policy")
    @classmethod
    def _tls_policy(cls, value: str) -> str:
        return check_level(value)

    @field_validator("tls_policy_domains")
    @classmethod
    def _tls_policy_domains(cls, value: dict[str, str]) -> dict[str, str]:
        return dict(normalize_table(value))

    @field_validator("tls_ca_file")
    @classmethod
    def _tls_ca_file(cls, value: Path | None) -> Path | None:
        return None if value is None else check_ca_file(value)

    @field_validator("egress_ips")
    @classmethod
    def _egress(cls, value: list[str]) -> list[str]:
        return [str(ipaddress.ip_address(item)) for item in value]

    @field_validator("postmaster_address")
    @classmethod
    def _postmaster(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(parse_address(value.strip()))
        except AddressError as exc:
            raise ValueError(f"{value!r} is not an address: {exc.message}") from None

    @field_validator("helo_name")
    @classmethod
    def _helo(cls, value: str) -> str:
        if value.startswith("["):
            return value
        try:
            return normalize_domain(value.rstrip("."))
        except AddressError as exc:
            raise ValueError(f"{value!r} is not a host name: {exc.message}") from None

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.retry_min_seconds > self.retry_max_seconds:
            raise ValueError("retry_min_seconds must not exceed retry_max_seconds")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.shared_state_password_file is not None and self.shared_state is None:
            raise ValueError("shared_state_password_file is set but shared_state is not")
        smtps = [str(item) for item in self.listeners() if item.implicit_tls]
        if smtps and self.tls_cert_file is None:
            raise ValueError(f"listen {smtps[0]} (implicit TLS) needs tls_cert_file and "
                             "tls_key_file")
        if not self.dns_trust_ad and "dane" in (self.tls_policy, *self.tls_policy_domains.values()):
            raise ValueError("the TLS level dane needs dns_trust_ad = true (dns_servers must be a "
                             "DNSSEC-validating resolver; TLS-7)")
        if self.dkim_expire_seconds is not None and (
                self.dkim_expire_seconds < self.queue_lifetime_seconds + DKIM_EXPIRE_MARGIN):
            raise ValueError(
                f"dkim_expire_seconds ({self.dkim_expire_seconds}) must be at least "
                f"queue_lifetime_seconds ({self.queue_lifetime_seconds}) plus "
                f"{DKIM_EXPIRE_MARGIN} s: a signature must outlive the message's time in the "
                "queue and the receivers' delivery")
        if 0 < self.max_inflight_bytes < AUTO_FLOOR_MESSAGES * self.max_message_size:
            raise ValueError(
                f"max_inflight_bytes ({self.max_inflight_bytes}) must be at least twice "
                f"max_message_size ({self.max_message_size}): one message being received and "
                "one being delivered")
        if not self.allow_open_relay:
            for item in self.relay_networks:
                if ipaddress.ip_network(item, strict=False).prefixlen == 0:
                    raise ValueError(
                        f"relay_networks contains {item}: that is an open relay "
                        "(set allow_open_relay = true to insist)"
                    )
        return self

    # where the values came from (load_settings sets them)
    _file: Path | None = PrivateAttr(None)
    _given: frozenset[str] = PrivateAttr(frozenset())

    def inflight_budget(self) -> int:
        """``max_inflight_bytes``, or (0) the default sized from this host's memory."""
        if self.max_inflight_bytes:
            return self.max_inflight_bytes
        return auto_budget(machine_memory(), self.max_message_size)

    def origin(self, name: str) -> str:
        """Where setting ``name`` came from: ``"the command line"``, its ``MXROUTE_*`` variable,
        the file's path, or ``"default"``."""
        env = env_name(name)
        if name in self._given:
            return "the command line"
        if any(key.upper() == env for key in os.environ):
            return env
        if name in self.model_fields_set and self._file is not None:
            return str(self._file)
        return "default"

    # --- derived values ---
    def listeners(self) -> list[Listener]:
        """The ``listen`` items: address, port, implicit TLS or not (``smtps://``)."""
        return [parse_listener(item) for item in self.listen]

    def listen_addresses(self) -> list[tuple[str, int]]:
        return [(item.host, item.port) for item in self.listeners()]

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(item, strict=False) for item in self.relay_networks]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, TypedEnv(settings_cls)]
        if _CONFIG_FILE is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=_CONFIG_FILE))
        return tuple(sources)


_CONFIG_FILE: Path | None = None


def config_path(explicit: str | None) -> Path | None:
    """Which TOML file to read: ``--config``, else $MXROUTE_CONFIG, else the system file if any."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("MXROUTE_CONFIG")
    if env:
        return Path(env)
    try:
        return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None
    except OSError as exc:  # e.g. /etc/mxroute not readable by this user
        raise ConfigError(f"cannot read {DEFAULT_CONFIG}: {exc.strerror}") from None


def load_settings(config: str | None = None, **overrides: Any) -> Settings:
    """Read and validate the settings; raise ConfigError with one readable line."""
    global _CONFIG_FILE
    path = config_path(config)
    if path is not None:
        try:
            if not path.is_file():
                raise ConfigError(f"configuration file {path} does not exist")
        except OSError as exc:  # a directory on the way that this user may not enter
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        try:
            import tomllib

            tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for line in unknown_variables(os.environ, Settings.model_fields):
        log.warning("%s", line)
    _CONFIG_FILE = path
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, path)) from None
    except ValueError as exc:  # a JSON list in the environment that is not JSON
        raise ConfigError(f"invalid setting: {exc}") from None
    finally:
        _CONFIG_FILE = None
    settings._file, settings._given = path, frozenset(given)
    return settings


def _one_line(exc: ValidationError, path: Path | None) -> str:
    error = exc.errors()[0]
    name = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        where = f" in {path}" if path else ""
        return f"unknown setting {name!r}{where}"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    if not name:  # a rule across settings (the model validator): no one setting to name
        return f"invalid settings{f' (from {path})' if path else ''}: {message}{more}"
    env = env_name(name)
    source = f" (from {env})" if env in os.environ else (f" (from {path})" if path else "")
    return f"setting {name}{source}: {message}{more}"
