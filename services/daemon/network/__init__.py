"""Container networking for the daemon: namespaces, bridges and veths, IPAM, firewall, port proxy, DNS files.

Every blocking call here (netlink, iptables, file writes) is synchronous on purpose: the daemon runs it
with ``asyncio.to_thread``. Namespace switching never happens on a pool thread (see ``netns.run_in_netns``).
"""
