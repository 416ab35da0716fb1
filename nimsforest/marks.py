"""Marks NimsForest puts on what it owns, shared by the node, the health views and the
cluster manager. (Witness names and server tags are natsembed's: `natsembed.is_witness`,
`NODE_TAG`.)

Dependency-free on purpose: it is imported before nats-server is spawned.
"""

OWNER_KEY = "nimsforest.owner"  # stream metadata key on every stream NimsForest owns
OWNER_VALUE = "nimsforest"
