//! Pod network plumbing (bridge, tap, nftables NAT over netlink) and the DHCP responder. Not yet built: see the network issue.
