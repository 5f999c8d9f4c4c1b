"""The client IP address as SPF and iprev see it (RFC 7208 §5, RFC 8601 §3)."""

from __future__ import annotations

import ipaddress

from mxroute.address import IPAddress


def normalize_ip(ip: str | IPAddress) -> IPAddress:
    """Parse the client IP; an IPv4-mapped IPv6 address is its IPv4 address.

    RFC 7208 §5 and the OpenSPF test ip4-mapped-ip6.
    """
    address = ip if not isinstance(ip, str) else ipaddress.ip_address(ip.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def reverse_name(ip: IPAddress) -> str:
    """The in-addr.arpa / ip6.arpa name of ``ip`` (RFC 1035 §3.5, RFC 3596 §2.5)."""
    return ip.reverse_pointer
