"""Names and marks shared by the node, the health views and the cluster manager.

Dependency-free on purpose: it is imported before nats-server is spawned.
"""

OWNER_KEY = "nimsforest.owner"  # stream metadata key on every stream NimsForest owns
OWNER_VALUE = "nimsforest"
WITNESS_MARK = "-witness-"  # in every witness server's name, never in a node's name


def is_witness(server_name: str) -> bool:
    """True for witness servers (see natsembed), which never hold streams."""
    return WITNESS_MARK in server_name
