"""Reads an extracted seed drive with cloud-init's own datasource code and prints, as JSON, what
cloud-init sees: metadata, user data (base64), and the network config it derives.

    python3 cloudinit_read.py config-2|nocloud DIR [MAC]

Run with Debian's /usr/bin/python3 and PYTHONPATH pointing at cloud-init's dist-packages
(seed/tests/cloudinit.rs does both). Exits non-zero if cloud-init rejects the drive.
"""
import json
import sys

from cloudinit import util
from cloudinit.net import network_state
from cloudinit.sources import DataSourceConfigDrive, DataSourceNoCloud
from cloudinit.sources.helpers import openstack


def main():
    fmt, root = sys.argv[1], sys.argv[2]
    mac = sys.argv[3] if len(sys.argv) > 3 else None
    if fmt == "config-2":
        # The same call DataSourceConfigDrive makes on the mounted drive.
        res = DataSourceConfigDrive.read_config_drive(root)
        md, ud = res["metadata"], res["userdata"]
        net = None
        if res.get("networkdata"):
            net = openstack.convert_net_json(
                res["networkdata"], known_macs={mac: "ens3"} if mac else None
            )
        extra = {"version": res["version"], "instance-id": md.get("instance-id")}
    else:
        # The same calls DataSourceNoCloud makes on a mounted cidata drive.
        seeded = util.pathprefix2dict(
            root,
            required=["user-data", "meta-data"],
            optional=["vendor-data", "network-config"],
        )
        empty = {"meta-data": {}, "user-data": "", "vendor-data": "", "network-config": None}
        data = DataSourceNoCloud._merge_new_seed(empty, seeded)
        md, ud, net = data["meta-data"], data["user-data"], data["network-config"]
        extra = {"instance-id": md.get("instance-id")}
    if net is not None:
        # Raises if cloud-init cannot use the network description.
        state = network_state.parse_net_config_data(net)
        extra["interfaces"] = []
        for i in state.iter_interfaces():
            subnets = i.get("subnets", [])
            iface = {"mac": i.get("mac_address"), "dhcp4": any(s.get("type") in ("dhcp", "dhcp4") for s in subnets)}
            # Static IPv6 subnets, only when there are any (the IPv4-only shape stays as it was).
            v6 = [s for s in subnets if s.get("type") in ("static", "static6") and ":" in str(s.get("address"))]
            if v6:
                iface["ipv6"] = v6
            extra["interfaces"].append(iface)
        if any("ipv6" in i for i in extra["interfaces"]):
            extra["dns"] = state.dns_nameservers
            extra["search"] = state.dns_searchdomains
    if isinstance(ud, str):
        ud = ud.encode()
    print(json.dumps({"metadata": md, "userdata_hex": (ud or b"").hex(), **extra}, default=str))


if __name__ == "__main__":
    main()
