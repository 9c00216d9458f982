"""The direct-routing nftables table (hapacs.nftdirect), checked by the real `nft -c`
(the kernel parses and validates the batch, then nothing is committed)."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import re

import pytest

from hapacs import nftcommand, nftdirect
from hapacs.buckets import BUCKETS, assign, fallbacks, split
from hapacs.nftcommand import NftError
from hapacs.nftdirect import ServiceRules

pytestmark = pytest.mark.root

MEMBERS = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]


def need_root():
    assert os.geteuid() == 0, "nft -c talks to the kernel: run these tests as root"


def service(own: str = "192.0.2.11", alive=MEMBERS, device: str = "lo", address: str = "192.0.2.100",
            members=MEMBERS, name: str = "dicom", port: int = 104) -> ServiceRules:
    local, forward = split(assign(members, alive), members, own)
    return ServiceRules(name, ipaddress.ip_address(address), port, device, local, forward)


def hashed_rule(text: str, kind: str) -> str:
    return next(line.strip() for line in text.splitlines() if kind in line)


def test_the_table_accepts_own_buckets_and_forwards_the_others_by_the_pinned_hash():
    text = nftdirect.render([service()])
    assert text.startswith("table netdev hapacs_direct {\n")
    assert 'type filter hook ingress device "lo" priority 0; policy accept;' in text
    local = hashed_rule(text, "} accept")
    assert local.startswith("ip daddr 192.0.2.100 tcp dport 104 jhash ip saddr . tcp sport mod 64 seed 0x7 {")
    forward = hashed_rule(text, " fwd ")
    assert forward.startswith("ip daddr 192.0.2.100 tcp dport 104 fwd ip to jhash ip saddr . tcp sport mod 64 "
                              "seed 0x7 map {")
    assert forward.endswith('} device "lo"')
    served = {int(b) for b in re.findall(r"\d+", local.split("{")[1].split("}")[0])}
    sent = dict(re.findall(r"(\d+) : ([\d.]+)", forward))
    assert served | {int(b) for b in sent} == set(range(BUCKETS)) and not served & {int(b) for b in sent}
    assert set(sent.values()) == {"192.0.2.12", "192.0.2.13"}


def test_the_kernel_takes_the_table_for_ipv4_and_ipv6_and_every_mix_of_local_and_forwarded():
    need_root()
    cases = [
        [service()],                                                   # some here, some sent on
        [service(own="192.0.2.99")],                                   # a pure balancer: all sent on
        [service(alive=["192.0.2.11"])],                               # alone: all here, no fwd rule
        [service(alive=[])],                                           # nobody: no rule at all
        [service(), service(name="dicom-tls", port=2762)],
        [service(address="2001:db8::100", own="2001:db8::11",
                 members=["2001:db8::11", "2001:db8::12"], alive=["2001:db8::11", "2001:db8::12"])],
    ]
    for services in cases:
        asyncio.run(nftdirect.check(services))
    assert " fwd " not in nftdirect.render(cases[2]) and "jhash" not in nftdirect.render(cases[3])
    assert "fwd ip6 to jhash ip6 saddr . tcp sport" in nftdirect.render(cases[5])


def test_the_kernel_takes_a_member_s_pass_on_tables_for_ipv4_and_ipv6_drained_or_not():
    need_root()
    four = ["192.0.2.11", "192.0.2.12"]
    six = ["2001:db8::11", "2001:db8::12"]
    drained = [dataclasses.replace(service(members=four, alive=four), pass_to=fallbacks(four, four, four[0]),
                                   passed_on=(("02:00:00:00:00:12", (1, 3)),), drained=True),
               dataclasses.replace(service(address="2001:db8::100", own=six[0], members=six, alive=six),
                                   pass_to=fallbacks(six, six, six[0]))]
    asyncio.run(nftdirect.check(drained))
    text = nftdirect.render_pass(drained)
    assert "table ip hapacs_direct_pass {" in text and "table ip6 hapacs_direct_pass {" in text
    assert "ip daddr 192.0.2.100 tcp dport 104 socket wildcard 0 accept" in text     # drained: open ones only
    assert "ip6 daddr 2001:db8::100 tcp dport 104 socket transparent 0 accept" in text   # any socket
    assert 'dup to jhash ip saddr . tcp sport mod 64 seed 0x7 map { 0 : 192.0.2.12, 2 : 192.0.2.12' in text
    assert ("ip daddr 192.0.2.100 tcp dport 104 ether saddr 02:00:00:00:00:12 jhash ip saddr . tcp sport mod 64 "
            "seed 0x7 { 1, 3 } accept") in nftdirect.render(drained)
    assert nftdirect.render_pass([service()]) == ""


def test_a_ruleset_the_kernel_refuses_is_an_error_with_nft_s_words():
    need_root()
    with pytest.raises(NftError, match='nft refuses the ruleset: .*Interface does not exist'):
        asyncio.run(nftdirect.check([service(device="ldnosuch0")]))


def test_nft_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(nftcommand, "NFT", "no-nft-here")
    with pytest.raises(NftError, match=r"nft is not installed on this host \(Debian: apt install nftables\)"):
        asyncio.run(nftdirect.check([service()]))


def test_an_nft_that_does_not_answer_is_killed_and_an_error(tmp_path, monkeypatch):
    hung = tmp_path / "nft"
    hung.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nexec sleep 30\n")
    hung.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(NftError, match=r"nft did not answer within 0.3 s"):
        asyncio.run(nftcommand.run(["-f", "-"], "table ip x\n", timeout_s=0.3))
    pid = int((tmp_path / "pid").read_text())
    assert not os.path.exists(f"/proc/{pid}"), "the hung nft is killed and reaped, not left behind"
