"""The helpers the end-to-end tests lean on say what they claim (no namespaces needed)."""

from __future__ import annotations

from .e2e import VIP, one_holder


class Holders:
    """A lab that reports fixed holders of the VIP."""

    def __init__(self, *hosts: str):
        self.hosts = list(hosts)

    def holders(self, vip: str) -> list[str]:
        assert vip == VIP
        return self.hosts


def test_one_holder_names_the_single_holder_and_nothing_else():
    assert one_holder(Holders("a")) == "a"
    assert one_holder(Holders()) == ""
    # Two holders is a split brain: it must equal neither "no holder" nor either host.
    two = one_holder(Holders("a", "b"))
    assert two not in ("", "a", "b")
