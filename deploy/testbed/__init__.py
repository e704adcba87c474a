"""A multi-site test bed on one machine: replicas in their own network namespaces, three sites
with WAN delays between them, partitions by cutting links. See network.py and topology.py."""
