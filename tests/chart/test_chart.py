"""chart/berth: strict lint, render, schema validation of every manifest against Kubernetes'
own schemas (kubernetes-validate), and assertions on the rendered objects."""

from __future__ import annotations

import base64
import copy
import unittest
from typing import Any

import kubernetes_validate

from chartlib import (
    DELETE, DEVICES, KUBE_VERSIONS, NAMESPACE, RELEASE, cirros, container, env_of, find,
    kinds, lint, load_values, render, with_vm,
)
import helm_python as helm


def device_values(kvm: str, tun: str) -> dict[str, Any]:
    v = cirros()
    v["devices"] = {"kvm": {"mode": kvm}, "tun": {"mode": tun}}
    return v


def scenarios() -> dict[str, dict[str, Any]]:
    """Every values set the suite lints, renders and validates."""
    s: dict[str, dict[str, Any]] = {
        "defaults (no VM)": {},
        "cirros (contract example, unchanged)": cirros(),
        "two VMs + disabled": load_values("two-vms.yaml"),
        "every optional value": load_values("full.yaml"),
    }
    for kvm in ("plugin", "hostPath", "none"):
        for tun in ("plugin", "hostPath", "none"):
            s[f"devices kvm={kvm} tun={tun}"] = device_values(kvm, tun)
    for mode in ("netlink", "sysctl", "procMount"):
        v = cirros()
        v["ipForward"] = {"mode": mode}
        s[f"ipForward {mode}"] = v
    v = cirros()
    v["ipForward"] = {"mode": "sysctl", "ipv6": True}
    s["ipForward sysctl + ipv6"] = v
    for typ in ("ClusterIP", "NodePort", "LoadBalancer"):
        v = cirros()
        v["service"] = {"enabled": True, "type": typ}
        s[f"service on {typ}"] = v
    v = cirros()
    v["vmlist"]["cirros-test"]["enabled"] = False
    s["cirros disabled"] = v
    return s


SWITCH_CAPS = ["CHOWN", "SETGID", "SETUID"]


def assert_secure_pod(tc: unittest.TestCase, sts: dict[str, Any], no_dhcp: bool = False) -> None:
    """The security model of chart/berth/README.md, for one VM's pod."""
    spec = sts["spec"]["template"]["spec"]
    name = sts["metadata"]["name"]
    for k in ("hostNetwork", "hostPID", "hostIPC"):
        tc.assertFalse(spec.get(k, False), f"{name}: {k}")
    tc.assertIs(spec["automountServiceAccountToken"], False)
    tc.assertEqual(spec["securityContext"]["seccompProfile"], {"type": "RuntimeDefault"})
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        tc.assertIs(sc["privileged"], False, name)
        tc.assertIs(sc["allowPrivilegeEscalation"], False, name)
        tc.assertIs(sc["readOnlyRootFilesystem"], True, name)
        tc.assertEqual(sc["seccompProfile"], {"type": "RuntimeDefault"}, name)
        tc.assertEqual(sc["capabilities"]["drop"], ["ALL"], name)
        want = ["NET_ADMIN"] if no_dhcp else ["NET_ADMIN", "NET_RAW"]
        # CHOWN, SETGID, SETUID: the switch to sandbox.uid after set-up (docs/security.md).
        tc.assertEqual(sc["capabilities"]["add"], want + SWITCH_CAPS, name)
        tc.assertEqual(sc["runAsUser"], 0, name)
    # hostPath volumes: only the two device nodes, as character devices; nothing of /dev or /sys.
    for vol in spec.get("volumes", []):
        hp = vol.get("hostPath")
        if hp is None:
            continue
        tc.assertIn(hp["path"], DEVICES, f"{name}: hostPath {hp}")
        tc.assertEqual(hp["type"], "CharDevice", f"{name}: hostPath {hp}")
    for c in spec["containers"]:
        for m in c.get("volumeMounts", []):
            tc.assertNotIn(m["mountPath"].rstrip("/"), ("/dev", "/sys", "/proc", "/dev/net"), name)


class LintRenderValidate(unittest.TestCase):
    def test_lint_strict_render_and_kubernetes_schema(self) -> None:
        known = kubernetes_validate.utils.all_versions()
        for version in KUBE_VERSIONS:
            self.assertIn(version, known, f"kubernetes-validate does not know {version}")
        for label, values in scenarios().items():
            with self.subTest(label):
                report = lint(values)
                bad = [m for m in report["messages"] if m["severity"] >= 2]
                self.assertEqual(bad, [], f"lint --strict: {report}")
                self.assertEqual(report["errors"], [], f"lint --strict: {report}")
                objs, _ = render(values)
                for o in objs:
                    for version in KUBE_VERSIONS:
                        try:
                            kubernetes_validate.validate(o, version, strict=True)
                        except kubernetes_validate.ValidationError as e:
                            self.fail(f"{o['kind']}/{o['metadata']['name']} invalid for "
                                      f"Kubernetes {version}: {e.message} at {list(e.path)}")
                for sts in kinds(objs, "StatefulSet"):
                    net = values["vmlist"][sts["metadata"]["name"]].get("netconfig", {})
                    assert_secure_pod(self, sts, no_dhcp=bool(net.get("no_dhcp")))

    def test_every_object_has_the_recommended_labels(self) -> None:
        objs, _ = render(load_values("two-vms.yaml"))
        for o in objs:
            labels = o["metadata"]["labels"]
            self.assertEqual(labels["app.kubernetes.io/name"], "berth")
            self.assertEqual(labels["app.kubernetes.io/instance"], RELEASE)
            self.assertEqual(labels["app.kubernetes.io/managed-by"], "Helm")
            self.assertEqual(labels["app.kubernetes.io/part-of"], "berth")
            want = "vnc-password" if o["kind"] == "Secret" else "vm"
            self.assertEqual(labels["app.kubernetes.io/component"], want)
            self.assertEqual(labels["app.kubernetes.io/version"], "0.1.0")
            self.assertEqual(o["metadata"]["namespace"], NAMESPACE)


class Cirros(unittest.TestCase):
    """The contract's example values, unchanged."""

    def setUp(self) -> None:
        self.objs, self.notes = render(cirros())
        self.sts = find(self.objs, "StatefulSet", "cirros-test")
        self.c = container(self.sts)

    def test_objects(self) -> None:
        got = sorted((o["kind"], o["metadata"]["name"]) for o in self.objs)
        self.assertEqual(got, [("ConfigMap", "cirros-test-cloudconfig"),
                               ("Secret", f"{RELEASE}-berth-vnc"),
                               ("Service", "cirros-test-headless"),
                               ("StatefulSet", "cirros-test")])

    def test_statefulset_of_one_with_headless_service(self) -> None:
        spec = self.sts["spec"]
        self.assertEqual(spec["replicas"], 1)
        self.assertEqual(spec["serviceName"], "cirros-test-headless")
        svc = find(self.objs, "Service", "cirros-test-headless")
        self.assertEqual(svc["spec"]["clusterIP"], "None")
        self.assertEqual(svc["spec"]["selector"], spec["selector"]["matchLabels"])
        tmpl_labels = spec["template"]["metadata"]["labels"]
        for k, v in spec["selector"]["matchLabels"].items():
            self.assertEqual(tmpl_labels[k], v)

    def test_pvc_template_for_image(self) -> None:
        vct = self.sts["spec"]["volumeClaimTemplates"]
        self.assertEqual(len(vct), 1)
        self.assertEqual(vct[0]["metadata"]["name"], "image")
        self.assertEqual(vct[0]["spec"]["accessModes"], ["ReadWriteOnce"])
        self.assertEqual(vct[0]["spec"]["resources"]["requests"]["storage"], "128Mi")
        self.assertEqual(vct[0]["spec"]["storageClassName"], "optional")
        mounts = {m["mountPath"]: m for m in self.c["volumeMounts"]}
        self.assertEqual(mounts["/image"]["name"], "image")

    def test_cloudconfig_files(self) -> None:
        cm = find(self.objs, "ConfigMap", "cirros-test-cloudconfig")
        vm = cirros()["vmlist"]["cirros-test"]["cloudconfig"]
        self.assertEqual(cm["data"], {"metadata": vm["metadata"], "userdata": vm["userdata"]})
        mounts = {m["mountPath"]: m for m in self.c["volumeMounts"]}
        for key in ("userdata", "metadata"):
            m = mounts["/" + key]
            self.assertEqual((m["name"], m["subPath"], m["readOnly"]), ("cloudconfig", key, True))
        vols = {v["name"]: v for v in self.sts["spec"]["template"]["spec"]["volumes"]}
        self.assertEqual(vols["cloudconfig"]["configMap"]["name"], "cirros-test-cloudconfig")

    def test_env(self) -> None:
        self.assertEqual(env_of(self.c), {
            "HOSTNAME": {"fieldRef": {"fieldPath": "metadata.name"}},
            "IMG_SOURCE": "http://example/cirros.img",
            "IMG_TARGET": "cirros-vm.qcow2",
            "IMG_VCPU": "1",
            "IMG_RAM_MB": "256",
            "BERTH_SHUTDOWN_TIMEOUT": "60",
            "BERTH_VHOST": "auto",
            "VNC_PASSWORD": {"secretKeyRef": {"name": f"{RELEASE}-berth-vnc", "key": "password"}},
            # The confinement after set-up (docs/security.md), from sandbox.*.
            "BERTH_UID": "65534",
            "BERTH_GID": "65534",
            "BERTH_SECCOMP": "on",
        })

    def test_ports_and_probes(self) -> None:
        self.assertEqual(self.c["ports"], [
            {"name": "ssh", "containerPort": 22, "protocol": "TCP"},
            {"name": "vnc", "containerPort": 5900, "protocol": "TCP"}])
        self.assertEqual(self.c["readinessProbe"]["tcpSocket"], {"port": 22})
        for probe in ("livenessProbe", "startupProbe"):
            self.assertEqual(self.c[probe]["exec"]["command"], ["/berth", "status"])
        start = self.c["startupProbe"]
        self.assertGreaterEqual(start["periodSeconds"] * start["failureThreshold"], 1800)

    def test_grace_period_exceeds_shutdown_timeout(self) -> None:
        grace = self.sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        self.assertEqual(grace, 90)
        self.assertGreater(grace, int(env_of(self.c)["BERTH_SHUTDOWN_TIMEOUT"]))

    def test_resources_formula(self) -> None:
        # vcpu 1, ram_mb 256: cpu 1*1000m + 100m, memory 256 + 64 MiB; memory limit = request.
        r = self.c["resources"]
        self.assertEqual(r["requests"], {"cpu": "1100m", "memory": "320Mi"})
        self.assertEqual(r["limits"], {"memory": "320Mi", "devices.kubevirt.io/kvm": "1",
                                       "devices.kubevirt.io/tun": "1"})

    def test_no_optional_service_by_default(self) -> None:
        self.assertEqual([s["metadata"]["name"] for s in kinds(self.objs, "Service")],
                         ["cirros-test-headless"])

    def test_image_default(self) -> None:
        self.assertEqual(self.c["image"], "localhost/berth:0.1.0")
        self.assertNotIn("args", self.c)

    def test_notes(self) -> None:
        self.assertIn("kubectl get pods -n vms -o wide cirros-test-0", self.notes)
        self.assertIn("ssh USER@$POD_IP", self.notes)
        self.assertIn("$POD_IP:5900", self.notes)
        self.assertIn("/image/cirros-test-0.qcow2", self.notes)
        self.assertNotIn("no password", self.notes)


class VncConsole(unittest.TestCase):
    """The console is secure by default: a password from a Secret, never an open console
    unless vnc.insecure says so."""

    def test_default_creates_a_secret_with_a_random_password(self) -> None:
        objs, notes = render(cirros())
        secret = find(objs, "Secret", f"{RELEASE}-berth-vnc")
        self.assertEqual(secret["type"], "Opaque")
        self.assertEqual(secret["metadata"]["annotations"]["helm.sh/resource-policy"], "keep")
        pw = base64.b64decode(secret["data"]["password"]).decode()
        self.assertRegex(pw, r"^[A-Za-z0-9]{8}$")
        # Random per install (the lookup keeps it across upgrades on a live cluster).
        again = find(render(cirros())[0], "Secret", f"{RELEASE}-berth-vnc")
        self.assertNotEqual(again["data"]["password"], secret["data"]["password"])
        env = env_of(container(find(objs, "StatefulSet", "cirros-test")))
        self.assertEqual(env["VNC_PASSWORD"],
                         {"secretKeyRef": {"name": f"{RELEASE}-berth-vnc", "key": "password"}})
        self.assertNotIn("VNC_INSECURE", env)
        self.assertIn("password-protected", notes)
        self.assertIn(f"kubectl get secret -n {NAMESPACE} {RELEASE}-berth-vnc "
                      "-o jsonpath='{.data.password}' | base64 -d", notes)
        self.assertNotIn("no password", notes.lower())

    def test_existing_secret_is_used_and_none_created(self) -> None:
        v = cirros()
        v["vnc"] = {"existingSecret": "team-vnc", "secretKey": "vnc.pw"}
        objs, notes = render(v)
        self.assertEqual(kinds(objs, "Secret"), [])
        env = env_of(container(find(objs, "StatefulSet", "cirros-test")))
        self.assertEqual(env["VNC_PASSWORD"],
                         {"secretKeyRef": {"name": "team-vnc", "key": "vnc.pw"}})
        self.assertIn("kubectl get secret -n vms team-vnc -o jsonpath='{.data.vnc\\.pw}'", notes)

    def test_insecure_is_explicit_and_loud(self) -> None:
        v = cirros()
        v["vnc"] = {"insecure": True}
        objs, notes = render(v)
        self.assertEqual(kinds(objs, "Secret"), [])
        env = env_of(container(find(objs, "StatefulSet", "cirros-test")))
        self.assertEqual(env["VNC_INSECURE"], "1")
        self.assertNotIn("VNC_PASSWORD", env)
        self.assertIn("NO PASSWORD", notes)

    def test_no_secret_without_a_console(self) -> None:
        v = with_vm(cirros(), "cirros-test", **{"netconfig.no_vnc": True})
        objs, _ = render(v)
        self.assertEqual(kinds(objs, "Secret"), [])
        env = env_of(container(find(objs, "StatefulSet", "cirros-test")))
        self.assertNotIn("VNC_PASSWORD", env)
        self.assertEqual(kinds(render({})[0], "Secret"), [])


class TwoVms(unittest.TestCase):
    def setUp(self) -> None:
        self.values = load_values("two-vms.yaml")
        self.objs, self.notes = render(self.values)

    def test_two_statefulsets_and_nothing_for_the_disabled_vm(self) -> None:
        self.assertEqual(sorted(s["metadata"]["name"] for s in kinds(self.objs, "StatefulSet")),
                         ["alpha", "beta"])
        for o in self.objs:
            self.assertFalse(o["metadata"]["name"].startswith("gamma"), o["metadata"]["name"])
            self.assertNotEqual(o["metadata"]["labels"].get("berth/vm"), "gamma")
        self.assertNotIn("gamma", self.notes)

    def test_resources_per_vm(self) -> None:
        for name, cpu, mem in (("alpha", "2100m", "1088Mi"), ("beta", "4100m", "4160Mi")):
            c = container(find(self.objs, "StatefulSet", name))
            self.assertEqual(c["resources"]["requests"], {"cpu": cpu, "memory": mem}, name)
            self.assertEqual(c["resources"]["limits"]["memory"], mem, name)
            self.assertNotIn("cpu", c["resources"]["limits"], name)

    def test_legacy_image_and_node_selector(self) -> None:
        for name in ("alpha", "beta"):
            sts = find(self.objs, "StatefulSet", name)
            self.assertEqual(container(sts)["image"], "registry.example/berth/vmrunner:1.2.3")
            self.assertEqual(sts["spec"]["template"]["spec"]["nodeSelector"],
                             {"openstack-control-plane": "enabled"})

    def test_only_vms_with_cloudconfig_get_a_configmap(self) -> None:
        self.assertEqual([c["metadata"]["name"] for c in kinds(self.objs, "ConfigMap")],
                         ["alpha-cloudconfig"])
        cm = find(self.objs, "ConfigMap", "alpha-cloudconfig")
        self.assertEqual(set(cm["data"]), {"userdata"})
        mounts = [m["mountPath"] for m in container(find(self.objs, "StatefulSet", "alpha"))["volumeMounts"]]
        self.assertIn("/userdata", mounts)
        self.assertNotIn("/metadata", mounts)
        beta = container(find(self.objs, "StatefulSet", "beta"))
        self.assertNotIn("/userdata", [m["mountPath"] for m in beta["volumeMounts"]])

    def test_baked_image_and_class(self) -> None:
        sts = find(self.objs, "StatefulSet", "beta")
        env = env_of(container(sts))
        self.assertEqual(env["IMG_TARGET"], "/images/baked.qcow2")
        self.assertEqual(env["IMG_SOURCE"], "/images/baked.qcow2")
        self.assertEqual(sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"], "fast")
        self.assertNotIn("storageClassName",
                         find(self.objs, "StatefulSet", "alpha")["spec"]["volumeClaimTemplates"][0]["spec"])
        self.assertNotIn("readinessProbe", container(find(self.objs, "StatefulSet", "alpha")))


class FullValues(unittest.TestCase):
    def setUp(self) -> None:
        self.objs, self.notes = render(load_values("full.yaml"))
        self.web = find(self.objs, "StatefulSet", "web")
        self.c = container(self.web)
        self.pod = self.web["spec"]["template"]["spec"]

    def test_env_matches_values(self) -> None:
        self.assertEqual(env_of(self.c), {
            "HOSTNAME": {"fieldRef": {"fieldPath": "metadata.name"}},
            "IMG_SOURCE": "https://images.example/web.qcow2",
            "IMG_TARGET": "web.qcow2",
            "IMG_VCPU": "2",
            "IMG_RAM_MB": "2048",
            "BERTH_SHUTDOWN_TIMEOUT": "120",
            "BERTH_VHOST": "auto",
            "BERTH_UID": "65534",
            "BERTH_GID": "65534",
            "BERTH_SECCOMP": "on",
            "IMG_SHA256": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "VM_IP": "10.254.0.2",
            "VM_GW": "10.254.0.1",
            "VM_IP6": "fd00:1:2:3::9",
            "VM_GW6": "fd00:1:2:3::1",
            "NO_IPV6": "1",
            "NO_VNC": "1",
            "NO_DHCP": "1",
            "SEED_FORMAT": "nocloud",
            "RUST_LOG": "debug",
            "VM_MAC": "52:54:00:12:34:56",
        })
        # the chart's own variables come first, global extra env, then the VM's.
        names = [e["name"] for e in self.c["env"]]
        self.assertEqual(names[-2:], ["RUST_LOG", "VM_MAC"])

    def test_grace_follows_shutdown_timeout(self) -> None:
        self.assertEqual(self.pod["terminationGracePeriodSeconds"], 150)

    def test_sandbox_uid_zero_adds_no_switch_capabilities(self) -> None:
        objs, _ = render({**cirros(), "sandbox": {"uid": 0, "gid": 0, "seccomp": "log"}})
        c = container(find(objs, "StatefulSet", "cirros-test"))
        self.assertEqual(c["securityContext"]["capabilities"]["add"], ["NET_ADMIN", "NET_RAW"])
        env = env_of(c)
        self.assertEqual((env["BERTH_UID"], env["BERTH_SECCOMP"]), ("0", "log"))

    def test_host_users_false_gives_a_user_namespace(self) -> None:
        objs, _ = render({**cirros(), "hostUsers": False})
        pod = find(objs, "StatefulSet", "cirros-test")["spec"]["template"]["spec"]
        self.assertIs(pod["hostUsers"], False)
        objs, _ = render(cirros())
        pod = find(objs, "StatefulSet", "cirros-test")["spec"]["template"]["spec"]
        self.assertNotIn("hostUsers", pod)

    def test_no_dhcp_drops_net_raw(self) -> None:
        self.assertEqual(self.c["securityContext"]["capabilities"]["add"],
                         ["NET_ADMIN"] + SWITCH_CAPS)
        legacy = container(find(self.objs, "StatefulSet", "legacy"))
        self.assertEqual(legacy["securityContext"]["capabilities"]["add"],
                         ["NET_ADMIN", "NET_RAW"] + SWITCH_CAPS)

    def test_resources_with_custom_overhead_and_cpu_limit(self) -> None:
        self.assertEqual(self.c["resources"], {
            "requests": {"cpu": "2250m", "memory": "2176Mi"},
            "limits": {"cpu": "2250m", "memory": "2176Mi", "example.com/tun": "1"}})

    def test_devices_mixed(self) -> None:
        vols = [v for v in self.pod["volumes"] if "hostPath" in v]
        self.assertEqual(vols, [{"name": "dev-kvm", "hostPath": {"path": "/dev/kvm", "type": "CharDevice"}}])
        self.assertIn({"name": "dev-kvm", "mountPath": "/dev/kvm"}, self.c["volumeMounts"])

    def test_sysctl_ip_forward(self) -> None:
        self.assertEqual(self.pod["securityContext"]["sysctls"],
                         [{"name": "net.ipv4.ip_forward", "value": "1"}])
        self.assertEqual(self.pod["securityContext"]["fsGroup"], 107)

    def test_image_pull_and_scheduling(self) -> None:
        self.assertEqual(self.c["image"], "registry.example/berth:9.9.9")
        self.assertEqual(self.c["imagePullPolicy"], "Always")
        self.assertEqual(self.c["args"], ["pod", "--verbose"])
        self.assertEqual(self.pod["imagePullSecrets"], [{"name": "regcred"}])
        self.assertEqual(self.pod["nodeSelector"], {"kubernetes.io/arch": "amd64"})
        self.assertEqual(self.pod["tolerations"][0]["key"], "dedicated")
        self.assertIn("nodeAffinity", self.pod["affinity"])
        self.assertEqual(self.pod["priorityClassName"], "vm-critical")
        meta = self.web["spec"]["template"]["metadata"]
        self.assertEqual(meta["annotations"], {"example.com/team": "vms", "example.com/vm": "web"})
        self.assertEqual(meta["labels"]["team"], "vms")
        self.assertEqual(self.web["metadata"]["labels"]["app.kubernetes.io/version"], "9.9.9")

    def test_services(self) -> None:
        svc = find(self.objs, "Service", "web")
        self.assertEqual(svc["spec"]["type"], "NodePort")
        self.assertEqual(svc["metadata"]["annotations"], {"example.com/lb": "internal"})
        self.assertEqual([(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]],
                         [("https", 443, 443), ("ssh", 22, 22)])
        names = [s["metadata"]["name"] for s in kinds(self.objs, "Service")]
        self.assertNotIn("legacy", names)  # per-VM service.enabled: false wins
        self.assertIn("legacy-headless", names)
        self.assertIn("Service web exposes", self.notes)
        self.assertIn("VNC: off", self.notes)

    def test_existing_claim(self) -> None:
        legacy = find(self.objs, "StatefulSet", "legacy")
        self.assertNotIn("volumeClaimTemplates", legacy["spec"])
        vols = {v["name"]: v for v in legacy["spec"]["template"]["spec"]["volumes"]}
        self.assertEqual(vols["image"], {"name": "image", "persistentVolumeClaim": {"claimName": "legacy"}})


class Variants(unittest.TestCase):
    def test_device_modes(self) -> None:
        for kvm in ("plugin", "hostPath", "none"):
            for tun in ("plugin", "hostPath", "none"):
                with self.subTest(kvm=kvm, tun=tun):
                    objs, _ = render(device_values(kvm, tun))
                    sts = find(objs, "StatefulSet", "cirros-test")
                    c = container(sts)
                    limits = c["resources"]["limits"]
                    hostpaths = sorted(v["hostPath"]["path"] for v in sts["spec"]["template"]["spec"]["volumes"]
                                       if "hostPath" in v)
                    mounts = sorted(m["mountPath"] for m in c["volumeMounts"] if m["mountPath"].startswith("/dev"))
                    want_hp = sorted(p for p, m in (("/dev/kvm", kvm), ("/dev/net/tun", tun)) if m == "hostPath")
                    self.assertEqual(hostpaths, want_hp)
                    self.assertEqual(mounts, want_hp)
                    self.assertEqual("devices.kubevirt.io/kvm" in limits, kvm == "plugin")
                    self.assertEqual("devices.kubevirt.io/tun" in limits, tun == "plugin")

    def test_vhost_net_device_and_datapath(self) -> None:
        # Off by default: no limit, no hostPath; berth.vhost goes to BERTH_VHOST.
        objs, _ = render(cirros())
        c = container(find(objs, "StatefulSet", "cirros-test"))
        self.assertNotIn("devices.kubevirt.io/vhost-net", c["resources"]["limits"])
        for mode in ("plugin", "hostPath"):
            with self.subTest(mode=mode):
                v = cirros()
                v.setdefault("devices", {})["vhostNet"] = {"mode": mode}
                v.setdefault("berth", {})["vhost"] = "on"
                objs, _ = render(v)
                sts = find(objs, "StatefulSet", "cirros-test")
                c = container(sts)
                self.assertEqual("devices.kubevirt.io/vhost-net" in c["resources"]["limits"], mode == "plugin")
                hostpaths = [v["hostPath"]["path"] for v in sts["spec"]["template"]["spec"]["volumes"]
                             if "hostPath" in v]
                self.assertEqual("/dev/vhost-net" in hostpaths, mode == "hostPath")
                self.assertEqual(
                    "/dev/vhost-net" in [m["mountPath"] for m in c["volumeMounts"]], mode == "hostPath")
                self.assertEqual(env_of(c)["BERTH_VHOST"], "on")
        v = cirros()
        v.setdefault("berth", {})["vhost"] = "yes"
        with self.assertRaises(Exception):
            render(v)

    def test_ip_forward_modes(self) -> None:
        for mode in ("netlink", "sysctl", "procMount"):
            with self.subTest(mode):
                v = cirros()
                v["ipForward"] = {"mode": mode}
                objs, _ = render(v)
                pod = find(objs, "StatefulSet", "cirros-test")["spec"]["template"]["spec"]
                sc = pod["containers"][0]["securityContext"]
                self.assertEqual("sysctls" in pod["securityContext"], mode == "sysctl")
                self.assertEqual(pod.get("hostUsers", True), mode != "procMount")
                self.assertEqual(sc.get("procMount", "Default"), "Unmasked" if mode == "procMount" else "Default")

    def test_ipv6_forwarding_sysctl(self) -> None:
        for mode, ipv6, want in [
            ("netlink", True, [{"name": "net.ipv6.conf.all.forwarding", "value": "1"}]),
            ("sysctl", True, [{"name": "net.ipv4.ip_forward", "value": "1"},
                              {"name": "net.ipv6.conf.all.forwarding", "value": "1"}]),
            ("netlink", False, None),
        ]:
            with self.subTest(mode=mode, ipv6=ipv6):
                v = cirros()
                v["ipForward"] = {"mode": mode, "ipv6": ipv6}
                objs, _ = render(v)
                pod = find(objs, "StatefulSet", "cirros-test")["spec"]["template"]["spec"]
                self.assertEqual(pod["securityContext"].get("sysctls"), want)

    def test_service_switch(self) -> None:
        on = cirros()
        on["service"] = {"enabled": True, "type": "LoadBalancer"}
        objs, notes = render(on)
        svc = find(objs, "Service", "cirros-test")
        self.assertEqual(svc["spec"]["type"], "LoadBalancer")
        self.assertEqual([p["port"] for p in svc["spec"]["ports"]], [22, 5900])
        self.assertIn("kubectl get svc -n vms cirros-test", notes)
        off = with_vm(on, "cirros-test", **{"netconfig.service": {"enabled": False}})
        objs, _ = render(off)
        self.assertEqual([s["metadata"]["name"] for s in kinds(objs, "Service")], ["cirros-test-headless"])
        per_vm = with_vm(cirros(), "cirros-test", **{"netconfig.service": {"enabled": True}})
        objs, _ = render(per_vm)
        self.assertEqual(find(objs, "Service", "cirros-test")["spec"]["type"], "ClusterIP")

    def test_service_without_ports_fails_readably(self) -> None:
        v = with_vm(cirros(), "cirros-test", **{"netconfig.ports": DELETE, "netconfig.readinessTcpProbe": DELETE,
                                              "netconfig.service": {"enabled": True}})
        with self.assertRaises(helm.HelmError) as e:
            render(v)
        self.assertIn("vmlist.cirros-test: a Service is enabled but netconfig.ports is empty", str(e.exception))

    def test_disabled_or_unset_enabled_renders_nothing(self) -> None:
        for label, v in (("enabled false", with_vm(cirros(), "cirros-test", enabled=False)),
                         ("enabled unset", with_vm(cirros(), "cirros-test", enabled=DELETE))):
            with self.subTest(label):
                objs, notes = render(v)
                self.assertEqual(objs, [])
                self.assertIn("No VM is enabled", notes)

    def test_disabled_vm_may_be_incomplete(self) -> None:
        v = cirros()
        v["vmlist"]["draft"] = {"enabled": False, "vmconfig": {"cpu": {"vcpu": 2}}}
        objs, _ = render(v)
        self.assertEqual(len(kinds(objs, "StatefulSet")), 1)

    def test_grace_period(self) -> None:
        v = cirros()
        v["berth"] = {"shutdownTimeout": 300}
        objs, _ = render(v)
        sts = find(objs, "StatefulSet", "cirros-test")
        self.assertEqual(sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 330)
        self.assertEqual(env_of(container(sts))["BERTH_SHUTDOWN_TIMEOUT"], "300")
        v["berth"] = {"shutdownTimeout": 300, "terminationGracePeriodSeconds": 400}
        objs, _ = render(v)
        self.assertEqual(find(objs, "StatefulSet", "cirros-test")["spec"]["template"]["spec"]
                         ["terminationGracePeriodSeconds"], 400)
        v["berth"] = {"shutdownTimeout": 300, "terminationGracePeriodSeconds": 300}
        with self.assertRaises(helm.HelmError) as e:
            render(v)
        self.assertIn("berth.terminationGracePeriodSeconds (300) must be greater than "
                      "berth.shutdownTimeout (300)", str(e.exception))

    def test_image_forms(self) -> None:
        cases = (
            ({"images": {"vmrunner": "r.example/vmrunner:old"}, "image": {"repository": "r.example/new", "tag": "2"}},
             "r.example/vmrunner:old"),
            ({"image": {"repository": "r.example/new", "tag": "2"}}, "r.example/new:2"),
            ({"image": {"repository": "r.example/new", "digest": "sha256:" + "a" * 64}},
             "r.example/new@sha256:" + "a" * 64),
            ({"images": {"vmrunner": ""}}, "localhost/berth:0.1.0"),
        )
        for extra, want in cases:
            with self.subTest(want):
                v = copy.deepcopy(cirros())
                v.update(extra)
                objs, _ = render(v)
                self.assertEqual(container(find(objs, "StatefulSet", "cirros-test"))["image"], want)

    def test_node_selector_merge(self) -> None:
        v = cirros()
        v["labels"] = {"node_selector_key": "berth", "node_selector_value": True}
        v["nodeSelector"] = {"zone": "a"}
        v["vmlist"]["cirros-test"]["nodeSelector"] = {"zone": "b"}
        objs, _ = render(v)
        self.assertEqual(find(objs, "StatefulSet", "cirros-test")["spec"]["template"]["spec"]["nodeSelector"],
                         {"berth": "true", "zone": "b"})

    def test_metrics_port_env_and_scrape_annotations(self) -> None:
        objs, _ = render({**cirros(), "metrics": {"enabled": True, "port": 9200}})
        sts = find(objs, "StatefulSet", "cirros-test")
        c = container(sts)
        self.assertEqual(env_of(c)["BERTH_METRICS"], "9200")
        self.assertIn({"name": "metrics", "containerPort": 9200, "protocol": "TCP"}, c["ports"])
        self.assertEqual(sts["spec"]["template"]["metadata"]["annotations"], {
            "prometheus.io/scrape": "true", "prometheus.io/port": "9200",
            "prometheus.io/path": "/metrics"})
        for o in objs:
            kubernetes_validate.validate(o, KUBE_VERSIONS[0], strict=True)
        # Without annotations, and off by default.
        objs, _ = render({**cirros(), "metrics": {"enabled": True, "scrapeAnnotations": False}})
        sts = find(objs, "StatefulSet", "cirros-test")
        self.assertNotIn("annotations", sts["spec"]["template"]["metadata"])
        self.assertEqual(env_of(container(sts))["BERTH_METRICS"], "9100")
        objs, _ = render(cirros())
        c = container(find(objs, "StatefulSet", "cirros-test"))
        self.assertNotIn("BERTH_METRICS", env_of(c))
        self.assertNotIn("metrics", [p["name"] for p in c["ports"]])

    def test_balloon_settings_become_env(self) -> None:
        objs, _ = render(cirros())
        env = env_of(container(find(objs, "StatefulSet", "cirros-test")))
        self.assertFalse([k for k in env if k.startswith("BALLOON")], "defaults: berth's own")
        objs, _ = render({**cirros(), "balloon": {"freePageReporting": False,
                                                  "statsIntervalSeconds": 30}})
        env = env_of(container(find(objs, "StatefulSet", "cirros-test")))
        self.assertEqual((env["BALLOON_REPORTING"], env["BALLOON_STATS_INTERVAL"]), ("off", "30"))
        objs, _ = render({**cirros(), "balloon": {"enabled": False}})
        env = env_of(container(find(objs, "StatefulSet", "cirros-test")))
        self.assertEqual(env["BALLOON"], "off")
        self.assertNotIn("BALLOON_REPORTING", env)

    def test_longest_vm_name_fits(self) -> None:
        name = "v" * 52
        v = {"vmlist": {name: copy.deepcopy(cirros()["vmlist"]["cirros-test"])}}
        objs, _ = render(v)
        self.assertEqual(len(objs), 4)
        for o in objs:
            # Services are DNS-1123 labels (63); the pod <vm>-0 names the VM's host (63).
            limit = 63 if o["kind"] == "Service" else 253
            self.assertLessEqual(len(o["metadata"]["name"]), limit, o["metadata"]["name"])
            kubernetes_validate.validate(o, KUBE_VERSIONS[0], strict=True)
        self.assertLessEqual(len(name + "-0"), 63)


if __name__ == "__main__":
    unittest.main()
