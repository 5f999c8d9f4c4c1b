"""The resolver as the settings configure it: one recipe for the daemon, delivery and the CLI."""

from __future__ import annotations

from mxroute.dns.resolver import NetworkTransport, Resolver, Server, Transport
from mxroute.errors import ConfigError
from mxroute.settings import Settings

# The settings a resolver is built from: a reload that changes one of them builds a new resolver.
RESOLVER_SETTINGS = ("dns_servers", "dns_timeout", "dns_attempts", "dns_cache_size", "dns_trust_ad",
                     "dns_zone_files")


def resolver_from_settings(settings: Settings, trace_size: int | None = 0) -> Resolver:
    """The shared resolver as the settings configure it: ``dns_zone_files`` (``--zone``) if any,
    else ``dns_servers`` (``--dns``), else the system's.

    ``trace_size`` 0 keeps no trace (the daemon); None keeps every query (``explain``).
    ``ConfigError`` when a zone file does not load.
    """
    transport: Transport
    ad = settings.dns_trust_ad
    zones = [str(path) for path in settings.dns_zone_files]
    if zones:
        # dns.zonefile and friends only when asked for: explain's start-up stays short
        from mxroute.dns.zonefile import ZoneData, ZoneTransport

        try:
            data = ZoneData.from_files(zones)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"cannot load zone file: {exc}") from None
        transport = ZoneTransport(data, zones, authenticated_data=ad)
    elif settings.dns_servers:
        servers = [Server.parse(item) for item in settings.dns_servers]
        transport = NetworkTransport(servers, settings.dns_timeout, settings.dns_attempts,
                                     authenticated_data=ad)
    else:
        transport = NetworkTransport.system(settings.dns_timeout, settings.dns_attempts, ad)
    return Resolver(transport, cache_size=settings.dns_cache_size, trace_size=trace_size,
                    trust_ad=ad)
