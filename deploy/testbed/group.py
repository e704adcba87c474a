"""A replica group on the test bed: each replica process runs inside its own host's network
namespace (`ip netns exec`), listening on that host's address, and the group config names those
addresses, so replicas reach each other only across the emulated LAN and WAN links.

Keys, models, the group config and the per-replica TOML files come from marketplace.local's
LocalGroup (one host for all); `prepare()` then moves each replica to its namespace address.
Ports stay distinct per replica although every namespace has its own port space, so Triton's
and pytriton's per-port names (shared memory, sockets under /tmp) never collide.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from certs.config import GroupConfig, save_group_config
from deploy.bundle import with_member_addresses
from deploy.testbed.network import Testbed, TestbedError
from marketplace.local import LocalGroup
from replica.config import render_replica_config


@dataclass
class TestbedGroup(LocalGroup):
    """A LocalGroup whose replica i runs on test bed host i (the test bed must be started)."""

    __test__ = False  # not a pytest test class despite the name
    testbed: Testbed | None = None

    def started_testbed(self) -> Testbed:
        if self.testbed is None:
            raise TestbedError("TestbedGroup needs a started Testbed")
        return self.testbed

    def prepare(self) -> GroupConfig:
        testbed = self.started_testbed()
        config = super().prepare()
        addresses: dict[int, str] = {}
        for replica in self.replicas:
            port = replica.config.listen_port
            listen = f"{testbed.replica_address(replica.replica_id)}:{port}"
            replica.config = replace(replica.config, listen=listen)
            replica.config_path.write_text(render_replica_config(replica.config))
            addresses[replica.replica_id] = listen
        self.config = with_member_addresses(config, addresses)
        save_group_config(self.config, self.group_config_path)
        return self.config

    def command_prefix(self, replica_id: int) -> list[str]:
        return self.started_testbed().exec_prefix(replica_id)  # on the replica's own host
