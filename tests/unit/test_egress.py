"""Where webhooks may go: internal addresses refused in every spelling, unless allow-listed."""

from __future__ import annotations

import ipaddress
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from core import egress
from core.egress import EgressRefused, parse_allow_entry, resolve
from core.settings import Settings, SettingsError

INTERNAL = [
    "http://127.0.0.1/hook", "http://2130706433/hook", "http://127.1/hook", "http://0x7f.1/hook",
    "http://017700000001/hook", "http://localhost:8000/hook", "http://LocalHost/hook", "http://0.0.0.0/hook",
    "http://[::1]/hook", "http://[::ffff:127.0.0.1]/hook", "http://[::]/hook", "http://10.1.2.3/hook",
    "http://172.16.0.1/hook", "http://192.168.1.1/hook", "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/hook", "http://224.0.0.1/hook", "http://240.0.0.1/hook", "http://255.255.255.255/",
    "http://[fd00::1]/hook", "http://[fe80::1]/hook", "http://[ff02::1]/hook", "http://[fec0::1]/hook",
    "http://[2002:7f00:1::1]/hook", "http://[64:ff9b::a9fe:a9fe]/hook", "https://[::ffff:10.0.0.1]:8443/",
]


@pytest.mark.parametrize("url", INTERNAL)
def test_internal_addresses_are_refused_in_every_spelling(url):
    with pytest.raises(EgressRefused, match="SHIFTSCORE_WEBHOOK_ALLOW_HOSTS"):
        resolve(url, ())


@pytest.mark.parametrize("url", ["http://93.184.215.14/hook", "https://[2606:4700::6810:85e5]:8443/a?b=1"])
def test_public_addresses_pass_and_are_the_address_connected_to(url):
    target = resolve(url, ())
    assert target.address in url and target.scheme in url


def test_the_target_keeps_host_port_and_path_for_the_request():
    target = resolve("https://[2606:4700::6810:85e5]/in/hook?x=1#frag", ())
    assert (target.host, target.port, target.path) == ("2606:4700::6810:85e5", 443, "/in/hook?x=1")


@pytest.mark.parametrize("url, message", [
    ("ftp://1.1.1.1/", "http:// or https://"), ("http://1.1.1.1:99999/", "port"),
    ("http://user:pw@1.1.1.1/", "user name or password"), ("http:///nohost", "no host"),
    ("http://1.1.1.1:0/", "port"), ("http://[::1/", "not a valid URL"), ("http://a..b/", "does not resolve"),
    ("http://no-such-host.invalid/", "does not resolve"),
])
def test_malformed_or_unresolvable_urls_say_what_to_do(url, message):
    with pytest.raises(EgressRefused, match=message):
        resolve(url, ())


def test_the_allow_list_admits_exactly_its_networks_and_hosts():
    allow = tuple(parse_allow_entry(e) for e in ["127.0.0.2/32", "10.0.0.0/8", "LocalHost"])
    assert resolve("http://127.0.0.2:9/", allow).address == "127.0.0.2"
    assert resolve("http://10.200.0.1/", allow).address == "10.200.0.1"
    assert ipaddress.ip_address(resolve("http://[::ffff:10.0.0.1]/", allow).address).ipv4_mapped == ipaddress.ip_address("10.0.0.1")
    assert resolve("http://localhost/", allow).address in ("127.0.0.1", "::1")
    for url in ("http://127.0.0.1/", "http://2130706433/", "http://192.168.0.1/", "http://[::1]/"):
        with pytest.raises(EgressRefused):
            resolve(url, allow)


def test_a_slow_name_server_is_given_up_on_within_the_lookup_timeout(monkeypatch):
    real = socket.getaddrinfo

    def slow(host, *args, **kwargs):
        if host.endswith(".slow.test"):
            time.sleep(3)  # glibc's resolver waits 5 s per unanswered query, and retries
        return real(host, *args, **kwargs)

    def timed(name: str) -> float:
        started = time.monotonic()
        with pytest.raises(EgressRefused, match="did not resolve within 2 s"):
            resolve(f"http://{name}.slow.test/", ())
        return time.monotonic() - started

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    # More requests at once than lookup threads: the queued ones are given up on in time too.
    with ThreadPoolExecutor(6) as requests:
        took = list(requests.map(timed, "abcdef"))
    assert max(took) <= egress.RESOLVE_TIMEOUT_S + 0.5, took
    time.sleep(1.5)  # the slow lookups end before another test needs the threads


def test_the_allow_list_setting_is_parsed_once_and_fails_fast():
    settings = Settings.from_env({"SHIFTSCORE_WEBHOOK_ALLOW_HOSTS": " 127.0.0.1 , 10.0.0.0/8,hooks.internal "})
    assert settings.webhook_allow_hosts == ("127.0.0.1/32", "10.0.0.0/8", "hooks.internal")
    assert Settings.from_env({}).webhook_allow_hosts == ()
    with pytest.raises(SettingsError, match="SHIFTSCORE_WEBHOOK_ALLOW_HOSTS"):
        Settings.from_env({"SHIFTSCORE_WEBHOOK_ALLOW_HOSTS": "10.0.0.0/33"})
    with pytest.raises(SettingsError, match="SHIFTSCORE_WEBHOOK_DEADLINE"):
        Settings.from_env({"SHIFTSCORE_WEBHOOK_DEADLINE": "0"})
