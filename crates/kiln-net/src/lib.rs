//! Network namespaces pool, veth/NAT, egress firewall.
