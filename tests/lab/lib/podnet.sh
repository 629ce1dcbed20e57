# Sourced by scenarios (". "$LAB_LIB/podnet.sh""): a "pod" network namespace and a client
# namespace on the pod's network, joined by a veth pair, as a Kubernetes node gives a pod.
#
# pod_network NET [MTU]   NET is the first three octets of a /24: the pod is NET.2 on eth0
#                         with its default route via the client at NET.1.
# After it: POD and CLIENT hold the sleepers that keep the namespaces open, inpod and incl run
# a command in them, and IP is iproute2's ip (busybox ip cannot move links between namespaces).

IP=${IP:-/usr/local/bin/ip2}
[ -x "$IP" ] || IP=ip

inpod() { nsenter -t "$POD" -n "$@"; }
incl() { nsenter -t "$CLIENT" -n "$@"; }

pod_network() {
    net=$1 mtu=${2:-1500}
    unshare -n sleep 100000 & POD=$!
    unshare -n sleep 100000 & CLIENT=$!
    sleep 0.5
    $IP link add veth-pod type veth peer name veth-cl
    $IP link set veth-pod netns "$POD"
    $IP link set veth-cl netns "$CLIENT"
    inpod $IP link set veth-pod name eth0
    inpod $IP link set lo up
    inpod $IP link set eth0 mtu "$mtu" up
    inpod $IP addr add "$net.2/24" dev eth0
    inpod $IP route add default via "$net.1"
    incl $IP link set lo up
    incl $IP link set veth-cl mtu "$mtu" up
    incl $IP addr add "$net.1/24" dev veth-cl
}

# pod_ipv6 PREFIX         after pod_network: PREFIX::2/64 on the pod's eth0 (no DAD, as CNIs
#                         configure it), PREFIX::1/64 on the client, the pod's IPv6 default
#                         route via the client. pod_network_v6only PREFIX [MTU] is the same
#                         without the IPv4 side.
pod_ipv6() {
    incl $IP addr add "$1::1/64" dev veth-cl nodad
    inpod $IP addr add "$1::2/64" dev eth0 nodad
    inpod $IP -6 route add default via "$1::1"
}

pod_network_v6only() {
    unshare -n sleep 100000 & POD=$!
    unshare -n sleep 100000 & CLIENT=$!
    sleep 0.5
    $IP link add veth-pod type veth peer name veth-cl
    $IP link set veth-pod netns "$POD"
    $IP link set veth-cl netns "$CLIENT"
    inpod $IP link set veth-pod name eth0
    inpod $IP link set lo up
    inpod $IP link set eth0 mtu "${2:-1500}" up
    incl $IP link set lo up
    incl $IP link set veth-cl mtu "${2:-1500}" up
    pod_ipv6 "$1"
}
