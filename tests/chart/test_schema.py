"""values.schema.json: the contract's known bad inputs are rejected at install time (Helm
validates values against the schema before rendering) with a message naming the value, where
it is, and the rule it breaks; good inputs pass."""

from __future__ import annotations

import copy
import unittest
from typing import Any

import helm_python as helm

from chartlib import CHART, DELETE, cirros, lint, render, with_vm

VM = "cirros-test"
AT = "/vmlist/cirros-test"


def bad_inputs() -> list[tuple[str, dict[str, Any], list[str]]]:
    """(label, values, substrings the error message must contain)."""
    c = cirros()
    renamed = copy.deepcopy(c)
    renamed["vmlist"]["Cirros_Test"] = renamed["vmlist"].pop(VM)
    too_long = copy.deepcopy(c)
    too_long["vmlist"]["v" * 53] = too_long["vmlist"].pop(VM)
    return [
        ("vcpu 0", with_vm(c, VM, **{"vmconfig.cpu.vcpu": 0}),
         [f"at '{AT}/vmconfig/cpu/vcpu'", "minimum: got 0, want 1"]),
        ("vcpu not a number", with_vm(c, VM, **{"vmconfig.cpu.vcpu": "two"}),
         [f"at '{AT}/vmconfig/cpu/vcpu'", "got string, want integer"]),
        ("ram_mb 32", with_vm(c, VM, **{"vmconfig.cpu.ram_mb": 32}),
         [f"at '{AT}/vmconfig/cpu/ram_mb'", "minimum: got 32, want 64"]),
        ("ram_mb missing", with_vm(c, VM, **{"vmconfig.cpu.ram_mb": DELETE}),
         [f"at '{AT}/vmconfig/cpu'", "missing property 'ram_mb'"]),
        ("sourceurl missing", with_vm(c, VM, **{"vmconfig.rootfs.sourceurl": DELETE}),
         [f"at '{AT}/vmconfig/rootfs'", "missing property 'sourceurl'"]),
        ("localtarget missing", with_vm(c, VM, **{"vmconfig.rootfs.localtarget": DELETE}),
         [f"at '{AT}/vmconfig/rootfs'", "missing property 'localtarget'"]),
        ("pvc_size missing", with_vm(c, VM, **{"vmconfig.rootfs.pvc_size": DELETE}),
         [f"at '{AT}/vmconfig/rootfs'", "missing property 'pvc_size'"]),
        ("vmconfig missing", with_vm(c, VM, vmconfig=DELETE),
         [f"at '{AT}'", "missing property 'vmconfig'"]),
        ("sourceurl ftp", with_vm(c, VM, **{"vmconfig.rootfs.sourceurl": "ftp://example/x.img"}),
         [f"at '{AT}/vmconfig/rootfs/sourceurl'", "'ftp://example/x.img' does not match",
          "http_or_https_url", "absolute_path_in_the_container_image"]),
        ("localtarget with a slash", with_vm(c, VM, **{"vmconfig.rootfs.localtarget": "images/cirros.qcow2"}),
         [f"at '{AT}/vmconfig/rootfs/localtarget'", "'images/cirros.qcow2' does not match",
          "file_name_without_slash", "absolute_path_in_the_container_image"]),
        ("localtarget ..", with_vm(c, VM, **{"vmconfig.rootfs.localtarget": ".."}),
         [f"at '{AT}/vmconfig/rootfs/localtarget'", "'..' does not match", "file_name_without_slash"]),
        ("pvc_size not a quantity", with_vm(c, VM, **{"vmconfig.rootfs.pvc_size": "128 megs"}),
         [f"at '{AT}/vmconfig/rootfs/pvc_size'", "'128 megs' does not match", "quantity_such_as_128Mi_or_10Gi"]),
        ("pvc_size negative", with_vm(c, VM, **{"vmconfig.rootfs.pvc_size": "-1Gi"}),
         [f"at '{AT}/vmconfig/rootfs/pvc_size'", "'-1Gi' does not match", "quantity_such_as_128Mi_or_10Gi"]),
        ("port 0", with_vm(c, VM, **{"netconfig.ports": {"ssh": 0}}),
         [f"at '{AT}/netconfig/ports/ssh'", "minimum: got 0, want 1"]),
        ("port 70000", with_vm(c, VM, **{"netconfig.ports": {"ssh": 70000}}),
         [f"at '{AT}/netconfig/ports/ssh'", "maximum: got 70,000, want 65,535"]),
        ("port as text", with_vm(c, VM, **{"netconfig.ports": {"ssh": "22/tcp"}}),
         [f"at '{AT}/netconfig/ports/ssh'", "got string, want integer"]),
        ("metrics port 5900", {**c, "metrics": {"enabled": True, "port": 5900}},
         ["at '/metrics/port'"]),
        ("metrics port 0", {**c, "metrics": {"enabled": True, "port": 0}},
         ["at '/metrics/port'", "minimum: got 0, want 1"]),
        ("balloon stats interval negative", {**c, "balloon": {"statsIntervalSeconds": -1}},
         ["at '/balloon/statsIntervalSeconds'", "minimum: got -1, want 0"]),
        ("balloon unknown key", {**c, "balloon": {"reporting": True}},
         ["at '/balloon'", "additional properties 'reporting' not allowed"]),
        ("port name invalid", with_vm(c, VM, **{"netconfig.ports": {"SSH_port": 22}}),
         ["invalid propertyName 'SSH_port'", "port_name_lowercase_alnum_and_dashes"]),
        ("port name too long", with_vm(c, VM, **{"netconfig.ports": {"a-very-long-port-name": 22}}),
         ["invalid propertyName 'a-very-long-port-name'", "maxLength: got 21, want 15"]),
        ("readiness probe port 0", with_vm(c, VM, **{"netconfig.readinessTcpProbe": 0}),
         [f"at '{AT}/netconfig/readinessTcpProbe'", "minimum: got 0, want 1"]),
        ("vm name not DNS-1123", renamed,
         ["invalid propertyName 'Cirros_Test'", "vm_name_must_be_a_dns_1123_label"]),
        ("vm name too long", too_long,
         ["invalid propertyName '" + "v" * 53 + "'", "maxLength: got 53, want 52"]),
        ("vm_ip not an address", with_vm(c, VM, **{"netconfig.vm_ip": "192.168.254.300"}),
         [f"at '{AT}/netconfig/vm_ip'", "'192.168.254.300' does not match", "ipv4_address"]),
        ("vm_ip6 not an address", with_vm(c, VM, **{"netconfig.vm_ip6": "192.168.254.2"}),
         [f"at '{AT}/netconfig/vm_ip6'", "'192.168.254.2' does not match"]),
        ("sha256 short", with_vm(c, VM, **{"vmconfig.rootfs.sha256": "abc"}),
         [f"at '{AT}/vmconfig/rootfs/sha256'", "sha256_64_hex_digits"]),
        ("seed_format unknown", with_vm(c, VM, **{"cloudconfig.seed_format": "iso"}),
         [f"at '{AT}/cloudconfig/seed_format'", "value must be one of 'config-2', 'nocloud'"]),
        ("device mode unknown", {**c, "devices": {"kvm": {"mode": "privileged"}}},
         ["at '/devices/kvm/mode'", "value must be one of 'plugin', 'hostPath', 'none'"]),
        ("ipForward mode unknown", {**c, "ipForward": {"mode": "proc"}},
         ["at '/ipForward/mode'", "value must be one of 'netlink', 'sysctl', 'procMount'"]),
        ("service type unknown", {**c, "service": {"enabled": True, "type": "External"}},
         ["at '/service/type'", "value must be one of 'ClusterIP', 'NodePort', 'LoadBalancer'"]),
        ("shutdownTimeout 0", {**c, "berth": {"shutdownTimeout": 0}},
         ["at '/berth/shutdownTimeout'", "minimum: got 0, want 1"]),
        ("vnc.insecure as text", {**c, "vnc": {"insecure": "yes"}},
         ["at '/vnc/insecure'", "got string, want boolean"]),
        ("vnc.secretKey empty", {**c, "vnc": {"secretKey": ""}},
         ["at '/vnc/secretKey'", "minLength: got 0, want 1"]),
        ("vnc unknown key", {**c, "vnc": {"password": "hunter2"}},
         ["at '/vnc'", "additional properties 'password' not allowed"]),
    ]


def good_inputs() -> list[tuple[str, dict[str, Any]]]:
    c = cirros()
    return [
        ("cirros", c),
        ("baked absolute localtarget", with_vm(c, VM, **{"vmconfig.rootfs.localtarget": "/images/cirros.qcow2",
                                                         "vmconfig.rootfs.sourceurl": "/images/cirros.qcow2"})),
        ("https source", with_vm(c, VM, **{"vmconfig.rootfs.sourceurl": "https://example/x.qcow2?sig=1"})),
        ("pvc_size 1.5Gi", with_vm(c, VM, **{"vmconfig.rootfs.pvc_size": "1.5Gi"})),
        ("pvc_size as bytes", with_vm(c, VM, **{"vmconfig.rootfs.pvc_size": 1073741824})),
        ("existingClaim without pvc_size", with_vm(c, VM, **{"vmconfig.rootfs.pvc_size": DELETE,
                                                              "vmconfig.rootfs.existingClaim": "old-pvc"})),
        ("ram_mb 64, vcpu 254", with_vm(c, VM, **{"vmconfig.cpu.ram_mb": 64, "vmconfig.cpu.vcpu": 254})),
        ("disabled and incomplete", with_vm(c, VM, enabled=False, vmconfig={"cpu": {"vcpu": 1}})),
        ("no ports", with_vm(c, VM, **{"netconfig.ports": DELETE, "netconfig.readinessTcpProbe": DELETE})),
        ("empty vmlist", {"vmlist": {}}),
        ("vnc existing Secret", {**c, "vnc": {"existingSecret": "my-vnc", "secretKey": "pw.txt"}}),
        ("vnc insecure", {**c, "vnc": {"insecure": True}}),
        ("metrics on", {**c, "metrics": {"enabled": True, "port": 9100, "scrapeAnnotations": False}}),
        ("balloon off", {**c, "balloon": {"enabled": False}}),
        ("balloon stats", {**c, "balloon": {"freePageReporting": False, "statsIntervalSeconds": 3600}}),
    ]


class Schema(unittest.TestCase):
    def test_bad_inputs_fail_with_readable_messages(self) -> None:
        with helm.Chart.load(str(CHART)) as chart:
            for label, values, wants in bad_inputs():
                with self.subTest(label):
                    # The install path: values are checked before any template runs.
                    with self.assertRaises(helm.HelmValuesError) as e:
                        render(values)
                    msg = str(e.exception)
                    self.assertIn("values don't meet the specifications of the schema", msg)
                    for want in wants:
                        self.assertIn(want, msg, f"{label}: message lacks {want!r}:\n{msg}")
                    with self.assertRaises(helm.HelmValuesError):
                        chart.validate_schema(values)
                    report = lint(values)
                    self.assertTrue(any(m["severity"] == 3 and wants[0] in m["error"]
                                        for m in report["messages"]), f"{label}: lint: {report}")

    def test_good_inputs_pass(self) -> None:
        with helm.Chart.load(str(CHART)) as chart:
            for label, values in good_inputs():
                with self.subTest(label):
                    chart.validate_schema(values)
                    render(values)


if __name__ == "__main__":
    unittest.main()
