"""IP rules (``fastgw.security.ipset``): CIDR sets, allow/deny, X-Forwarded-For resolution.

Edges of ranges, merging, /0 /32 /128, IPv4-mapped addresses, bad rules and bad lookups by
example; then hypothesis compares ``IpSet.contains`` and ``IpRules.allowed`` with a brute-force
check through the ``ipaddress`` module, and ``IpSet`` acceptance with the config's own ``cidr``
kind. ``ClientAddress``: the peer unless it is trusted, then X-Forwarded-For from the right.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastgw.config.fields import convert_kind
from fastgw.security.ipset import ClientAddress, IpRules, IpSet, parse_address

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# -- IpSet by example ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidr", "inside", "outside"),
    [
        ("10.0.0.0/8", ["10.0.0.0", "10.255.255.255", "10.1.2.3"], ["9.255.255.255", "11.0.0.0"]),
        ("192.168.1.0/24", ["192.168.1.0", "192.168.1.255"], ["192.168.0.255", "192.168.2.0"]),
        ("1.2.3.4/32", ["1.2.3.4"], ["1.2.3.3", "1.2.3.5"]),
        ("1.2.3.4", ["1.2.3.4"], ["1.2.3.3", "1.2.3.5"]),
        ("0.0.0.0/0", ["0.0.0.0", "255.255.255.255", "::ffff:8.8.8.8"], ["::1", "2001:db8::"]),
        ("255.255.255.255/32", ["255.255.255.255"], ["255.255.255.254", "::ffff:ffff:fffe"]),
        (
            "2001:db8::/32",
            ["2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "2001:DB8::1"],
            ["2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::", "32.1.13.184"],
        ),
        (
            "2001:db8::1/128",
            ["2001:db8::1", "2001:0db8:0:0:0:0:0:1"],
            ["2001:db8::", "2001:db8::2"],
        ),
        ("::/0", ["::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::1"], ["1.2.3.4"]),
        ("10.1.2.3/8", ["10.0.0.0", "10.255.255.255"], ["11.0.0.0"]),  # host bits: not strict
        ("10.0.0.0/255.0.0.0", ["10.9.9.9"], ["11.0.0.0"]),  # netmask form, as the config takes
        ("fe80::1%eth0/64", ["fe80::abcd", "fe80::1%eth1"], ["fe81::"]),  # zone id ignored
    ],
)
def test_membership_at_the_edges(cidr: str, inside: list[str], outside: list[str]) -> None:
    ips = IpSet([cidr])
    for address in inside:
        assert ips.contains(address), (cidr, address)
        assert ips.contains(address.encode()), (cidr, address)
        assert address in ips
    for address in outside:
        assert not ips.contains(address), (cidr, address)
        assert not ips.contains(address.encode()), (cidr, address)


def test_overlapping_and_adjacent_ranges_merge() -> None:
    ips = IpSet(
        [
            "10.0.0.0/24",
            "10.0.1.0/24",  # adjacent: one interval 10.0.0.0 - 10.0.1.255
            "10.0.0.128/25",  # inside
            "10.0.2.0/23",  # adjacent again: 10.0.0.0 - 10.0.3.255
            "10.0.5.0/24",  # a gap at 10.0.4.x
            "2001:db8::/33",
            "2001:db8:8000::/33",  # together 2001:db8::/32
            "2001:db8::/48",
        ]
    )
    v4 = int(ipaddress.IPv4Address("10.0.0.0"))
    assert ips.intervals(4) == [(v4, v4 + 4 * 256 - 1), (v4 + 5 * 256, v4 + 6 * 256 - 1)]
    v6 = ipaddress.IPv6Network("2001:db8::/32")
    assert ips.intervals(6) == [(int(v6.network_address), int(v6.broadcast_address))]
    assert len(ips) == 3
    assert ips.contains("10.0.3.255") and not ips.contains("10.0.4.0")
    assert not ips.contains("10.0.4.255") and ips.contains("10.0.5.0")


def test_empty_set_and_len() -> None:
    assert not IpSet([])
    assert len(IpSet([])) == 0
    assert not IpSet([]).contains("1.2.3.4")
    assert IpSet(["1.2.3.4"]) and len(IpSet(["1.2.3.4", "1.2.3.4/32", "::1"])) == 2


def test_ipv4_mapped_addresses_are_ipv4() -> None:
    ips = IpSet(["192.168.0.0/16"])
    assert ips.contains("::ffff:192.168.3.4")
    assert ips.contains(b"::FFFF:c0a8:0304")
    assert not ips.contains("::ffff:192.169.0.0")
    # A rule written in the mapped form is the IPv4 range it maps...
    mapped_rule = IpSet(["::ffff:10.0.0.0/104"])
    assert mapped_rule.intervals(6) == []
    assert mapped_rule.contains("10.1.2.3") and mapped_rule.contains("::ffff:10.1.2.3")
    assert not mapped_rule.contains("11.0.0.0")
    # ... while a wider IPv6 rule is about IPv6 clients only.
    everything_v6 = IpSet(["::/0"])
    assert not everything_v6.contains("::ffff:1.2.3.4")
    assert not everything_v6.contains("1.2.3.4")
    assert everything_v6.contains("::1.2.3.4")  # IPv4-compatible is plain IPv6


def test_parse_address() -> None:
    assert parse_address("1.2.3.4") == (4, 0x01020304)
    assert parse_address(b"1.2.3.4") == (4, 0x01020304)
    assert parse_address("::ffff:1.2.3.4") == (4, 0x01020304)
    assert parse_address("::1") == (6, 1)
    assert parse_address("fe80::1%eth0") == (6, (0xFE80 << 112) | 1)
    assert parse_address(b"fe80::1%25") == (6, (0xFE80 << 112) | 1)
    for bad in [
        "",
        "1.2.3",
        "01.2.3.4",  # leading zeros are refused (octal ambiguity), as ipaddress does
        "1.2.3.4 ",
        " 1.2.3.4",
        "1.2.3.256",
        "1.2.3.4/32",
        "1::2::3",
        "example.com",
        "unknown",
        "1.2.3.4:80",
        "[::1]",
        b"\xff1.2.3.4",
        "1.2.3.\u0664",  # a non-ASCII digit
        "1.2.3.4\x00",
        None,
        12345,
    ]:
        assert parse_address(bad) is None, bad  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        "10.0.0.0/33",
        "2001:db8::/129",
        "10.0.0",
        "10",
        "not-an-ip",
        "",
        " 10.0.0.0/8",
        "10.0.0.0/8 ",
        "10.0.0.0/ 8",
        "10.0.0.0/8\n",
        "01.0.0.0/8",
        "10.0.0.0/-1",
        "10.0.0.0/8/8",
        "::ffff:1.2.3.4/129",
    ],
)
def test_bad_rules_are_value_errors_naming_the_entry(bad: str) -> None:
    with pytest.raises(ValueError, match="not an IP network or address") as info:
        IpSet(["10.0.0.0/8", bad, "::1"])
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError, match="not an IP network or address"):
        IpRules([], [bad])
    with pytest.raises(ValueError, match="not an IP network or address"):
        IpRules([bad], [])


def test_non_string_rules_are_value_errors() -> None:
    with pytest.raises(ValueError, match="single value"):
        IpSet("10.0.0.0/8")
    for bad in [b"\x01\x02\x03\x04", 16909060, None]:
        with pytest.raises(ValueError, match="not an IP network or address"):
            IpSet([bad])  # type: ignore[list-item]


def test_unparseable_lookups_are_false_and_never_raise() -> None:
    ips = IpSet(["0.0.0.0/0", "::/0"])
    for bad in ["", "garbage", "1.2.3.4:80", "[::1]", b"\xff\xfe", "1.2.3.4\x00", None, 7, 1.5]:
        assert ips.contains(bad) is False  # type: ignore[arg-type]


# -- IpSet and IpRules against ipaddress (hypothesis) -------------------------------------------


def _reference_network(text: str) -> Network:
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(MAPPED):
        start = int(net.network_address) - int(MAPPED.network_address)
        return ipaddress.IPv4Network((start, net.prefixlen - 96))
    return net


def _reference_address(text: str) -> Address:
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _reference_contains(rules: list[str], address: str) -> bool:
    found = _reference_address(address)
    return any(
        found.version == net.version and found in net for net in map(_reference_network, rules)
    )


@st.composite
def network_texts(draw: st.DrawFn) -> str:
    """A rule as text: IPv4, IPv6 or IPv4-mapped IPv6; host bits often set; clustered bases so
    that rules overlap and touch."""
    kind = draw(st.sampled_from(["v4", "v6", "mapped"]))
    if kind == "v4":
        base = draw(st.integers(0, 2**32 - 1) | st.integers(0x0A000000, 0x0A0000FF))
        prefix = draw(st.integers(0, 32) | st.integers(24, 32))
        return f"{ipaddress.IPv4Address(base)}/{prefix}"
    if kind == "v6":
        base = draw(
            st.integers(0, 2**128 - 1) | st.integers(0x20010DB8 << 96, (0x20010DB8 << 96) + 512)
        )
        prefix = draw(st.integers(0, 128) | st.integers(116, 128))
        return f"{ipaddress.IPv6Address(base)}/{prefix}"
    base = int(MAPPED.network_address) + draw(
        st.integers(0, 2**32 - 1) | st.integers(0x0A000000, 0x0A0000FF)
    )
    return f"{ipaddress.IPv6Address(base)}/{draw(st.integers(96, 128))}"


def _edge_addresses(rules: list[str]) -> list[str]:
    """First, last, one below and one above every rule, in its own family and, for IPv4, also
    written as IPv4-mapped IPv6."""
    out = []
    for text in rules:
        net = ipaddress.ip_network(text, strict=False)
        top = 2**net.max_prefixlen - 1
        for n in (int(net.network_address) - 1, int(net.network_address)):
            if 0 <= n <= top:
                out.append(
                    str(ipaddress.IPv6Address(n) if net.version == 6 else ipaddress.IPv4Address(n))
                )
        for n in (int(net.broadcast_address), int(net.broadcast_address) + 1):
            if 0 <= n <= top:
                out.append(
                    str(ipaddress.IPv6Address(n) if net.version == 6 else ipaddress.IPv4Address(n))
                )
    out.extend(f"::ffff:{a}" for a in list(out) if "." in a and ":" not in a)
    return out


addresses = (
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
    | st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
    | st.integers(0, 2**32 - 1).map(lambda n: f"::ffff:{ipaddress.IPv4Address(n)}")
    | st.integers(0x0A000000, 0x0A0001FF).map(lambda n: str(ipaddress.IPv4Address(n)))
)


@FUZZ
@given(st.lists(network_texts(), max_size=12), st.lists(addresses, max_size=12))
@example(["::/0", "0.0.0.0/0"], ["::ffff:1.2.3.4", "::1"])
@example(["::ffff:0.0.0.0/96"], ["0.0.0.0", "255.255.255.255", "::fffe:ffff:ffff"])
def test_contains_matches_brute_force(rules: list[str], extra: list[str]) -> None:
    ips = IpSet(rules)
    for address in _edge_addresses(rules) + extra:
        expected = _reference_contains(rules, address)
        assert ips.contains(address) is expected, (rules, address)
        assert ips.contains(address.encode()) is expected, (rules, address)


@FUZZ
@given(
    st.lists(network_texts(), max_size=6),
    st.lists(network_texts(), max_size=6),
    st.lists(addresses, max_size=12),
)
def test_allowed_matches_brute_force(allow: list[str], deny: list[str], extra: list[str]) -> None:
    rules = IpRules(allow, deny)
    assert rules.active is bool(allow or deny)
    for address in _edge_addresses(allow + deny) + extra:
        expected = not _reference_contains(deny, address) and (
            not allow or _reference_contains(allow, address)
        )
        assert rules.allowed(address.encode()) is expected, (allow, deny, address)


@FUZZ
@given(
    st.text(alphabet="0123456789abcdefABCDEF:./%x- \t\n", max_size=24)
    | network_texts()
    | st.text(max_size=10)
)
@example("10.0.0.0/255.0.0.0")
@example("10.0.0.0/0.255.255.255")
@example("fe80::1%eth0/64")
def test_accepts_exactly_what_the_config_accepts(text: str) -> None:
    stored = convert_kind("cidr", text, Path("."))
    try:
        IpSet([text])
    except ValueError:
        assert stored is None, text
    else:
        assert stored is not None, text
        assert IpSet([text]).intervals(4) == IpSet([stored]).intervals(4)
        assert IpSet([text]).intervals(6) == IpSet([stored]).intervals(6)


# -- IpRules ------------------------------------------------------------------------------------


def test_rules_deny_wins_and_empty_allow_is_everyone() -> None:
    none = IpRules([], [])
    assert not none.active
    assert none.allowed("1.2.3.4") and none.allowed("::1") and none.allowed("garbage")

    deny_only = IpRules([], ["10.0.0.0/8", "2001:db8::/32"])
    assert deny_only.active
    assert deny_only.allowed("11.0.0.0") and deny_only.allowed("::1")
    assert not deny_only.allowed("10.1.2.3") and not deny_only.allowed(b"::ffff:10.1.2.3")
    assert not deny_only.allowed("2001:db8::5")

    both = IpRules(["10.0.0.0/8", "2001:db8::/32"], ["10.1.0.0/16", "10.2.3.4"])
    assert both.allowed("10.0.0.1") and both.allowed("10.2.3.3") and both.allowed("10.2.3.5")
    assert not both.allowed("10.1.255.255")  # deny wins inside allow
    assert not both.allowed("10.2.3.4")
    assert not both.allowed("11.0.0.0")  # allow is set: the rest is refused
    assert both.allowed("2001:db8::1") and not both.allowed("2001:db9::1")

    v4_only = IpRules(["10.0.0.0/8"], [])
    assert not v4_only.allowed("::1")  # a non-empty allow list refuses the other family too

    same = IpRules(["10.0.0.0/8"], ["10.0.0.0/8"])
    assert not same.allowed("10.0.0.1")


def test_rules_refuse_unparseable_addresses_when_active() -> None:
    rules = IpRules([], ["10.0.0.0/8"])
    bad: list[bytes | str] = ["", "garbage", b"\xff", "1.2.3.4:80"]
    for address in bad:
        assert rules.allowed(address) is False


# -- ClientAddress ------------------------------------------------------------------------------

TRUSTED = IpSet(["10.0.0.0/8", "fd00::/8"])


def resolve(peer: bytes, *fields: bytes) -> bytes:
    return ClientAddress(TRUSTED).resolve(peer, list(fields))


def test_untrusted_peer_is_the_client_and_xff_is_ignored() -> None:
    assert resolve(b"203.0.113.9", b"1.2.3.4") == b"203.0.113.9"
    assert resolve(b"203.0.113.9", b"10.0.0.1") == b"203.0.113.9"
    assert resolve(b"2001:db8::9", b"1.2.3.4") == b"2001:db8::9"
    assert ClientAddress(IpSet([])).resolve(b"10.0.0.1", [b"1.2.3.4"]) == b"10.0.0.1"


def test_trusted_peer_walks_from_the_right() -> None:
    assert resolve(b"10.0.0.1", b"1.1.1.1, 2.2.2.2, 10.3.3.3") == b"2.2.2.2"
    assert resolve(b"10.0.0.1", b"1.1.1.1, 2.2.2.2") == b"2.2.2.2"
    assert resolve(b"10.0.0.1", b"1.1.1.1") == b"1.1.1.1"


def test_all_trusted_gives_the_left_most() -> None:
    assert resolve(b"10.0.0.1", b"10.1.1.1, 10.2.2.2, 10.3.3.3") == b"10.1.1.1"
    assert resolve(b"fd00::1", b"fd00::2, 10.2.2.2") == b"fd00::2"


def test_several_fields_are_one_list_in_order() -> None:
    assert resolve(b"10.0.0.1", b"1.1.1.1, 2.2.2.2", b"10.3.3.3") == b"2.2.2.2"
    assert resolve(b"10.0.0.1", b"1.1.1.1", b"10.2.2.2, 10.3.3.3") == b"1.1.1.1"
    assert resolve(b"10.0.0.1", b"10.1.1.1", b"3.3.3.3") == b"3.3.3.3"


def test_spaces_tabs_and_empty_elements() -> None:
    assert resolve(b"10.0.0.1", b"  1.1.1.1 ,\t2.2.2.2\t,   10.3.3.3  ") == b"2.2.2.2"
    assert resolve(b"10.0.0.1", b"1.1.1.1,,10.3.3.3, ") == b"1.1.1.1"
    assert resolve(b"10.0.0.1", b"", b" ") == b"10.0.0.1"


def test_empty_xff_is_the_peer() -> None:
    assert resolve(b"10.0.0.1") == b"10.0.0.1"
    assert resolve(b"10.0.0.1", b"") == b"10.0.0.1"


def test_garbage_stops_the_walk_at_the_last_good_hop() -> None:
    # 10.3.3.3 wrote "junk": it is the client; nothing to the left of the junk is believed.
    assert resolve(b"10.0.0.1", b"1.1.1.1, junk, 10.3.3.3") == b"10.3.3.3"
    # The peer itself wrote the junk.
    assert resolve(b"10.0.0.1", b"1.1.1.1, unknown") == b"10.0.0.1"
    for junk in [
        b"example.com",
        b"1.2.3",
        b"01.2.3.4",
        b"1.2.3.4:99999",
        b"1.2.3.4:",
        b"[1.2.3.4]",
        b"[::1",
        b"[::1]x",
        b"::1:80:",
        b"_hidden",
        b"\xff\xfe",
    ]:
        assert resolve(b"10.0.0.1", b"1.1.1.1, " + junk) == b"10.0.0.1", junk
    # Junk to the left of the client is never reached.
    assert resolve(b"10.0.0.1", b"junk, 2.2.2.2, 10.3.3.3") == b"2.2.2.2"


def test_ipv6_entries_are_normalized() -> None:
    assert resolve(b"fd00::1", b"2001:DB8:0:0::1, fd00::2") == b"2001:db8::1"
    assert resolve(b"10.0.0.1", b"2001:db8::1") == b"2001:db8::1"
    assert resolve(b"10.0.0.1", b"::ffff:1.2.3.4") == b"1.2.3.4"  # mapped: as IPv4
    assert resolve(b"10.0.0.1", b"::ffff:10.1.1.1") == b"10.1.1.1"  # trusted when mapped too
    assert resolve(b"::ffff:10.0.0.1", b"1.2.3.4") == b"1.2.3.4"  # a mapped peer is trusted
    assert resolve(b"::ffff:203.0.113.9") == b"203.0.113.9"
    assert resolve(b"10.0.0.1", b"fe80::1%eth0") == b"fe80::1"  # zone dropped


def test_ports_and_brackets_are_accepted_and_dropped() -> None:
    assert resolve(b"10.0.0.1", b"1.2.3.4:5678") == b"1.2.3.4"
    assert resolve(b"10.0.0.1", b"[2001:db8::1]:443") == b"2001:db8::1"
    assert resolve(b"10.0.0.1", b"[2001:db8::1]") == b"2001:db8::1"
    assert resolve(b"10.0.0.1", b"1.1.1.1, 10.2.2.2:80, [fd00::3]:8443") == b"1.1.1.1"
    assert resolve(b"10.0.0.1", b"9.9.9.9, 1.2.3.4:65535") == b"1.2.3.4"
    assert resolve(b"10.0.0.1", b"9.9.9.9, 1.2.3.4:65536") == b"10.0.0.1"  # bad port: garbage


def test_unparseable_peer_comes_back_unchanged() -> None:
    assert resolve(b"", b"1.2.3.4") == b""
    assert resolve(b"/run/fastgw.sock", b"1.2.3.4") == b"/run/fastgw.sock"
