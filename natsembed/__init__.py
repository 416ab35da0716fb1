"""natsembed: render nats.conf and supervise nats-server as a managed child.

Public API:

    EmbeddedNats(EmbeddedConfig)   a node's clustered nats-server plus its local witness
    ServerProcess                  one supervised nats-server child
    ServerConfig, render_config, check_config, write_config
    server_name(), node_of(), superseded(), label()   a node's server name and back
    MonitorClient (+ Varz, Jsz, Routez models)
    SystemClient                   $JS.API system requests (server remove, stepdown, rescue)
    hand_over_leaderships(), held(), leaderships(), step_down()   drain: step down every leadership
    find_nats_server()
    die_with_parent()              a preexec_fn: the child is SIGKILLed when we die
    errors: NatsEmbedError and its subclasses
"""

from typing import TYPE_CHECKING

from natsembed._binary import find_nats_server
from natsembed._config import (
    ClusterConfig,
    JetStreamConfig,
    ServerConfig,
    TLSConfig,
    check_config,
    hostport,
    render_config,
    write_config,
)
from natsembed._credentials import Credentials, load_or_create, write_private
from natsembed._drain import (
    Leaderships,
    Led,
    hand_over_leaderships,
    held,
    leaderships,
    step_down,
)
from natsembed._election import MetaElection, PairObservation, Prompt, plan_prompt
from natsembed._monitor import Jsz, MetaCluster, MonitorClient, Routez, StreamDetail, Varz
from natsembed._names import (
    GENERATION_MARK,
    WITNESS_MARK,
    generation_of,
    label,
    node_of,
    server_name,
    superseded,
)
from natsembed._net import advertise_host, detect_address, free_port
from natsembed._process import (
    ProcessSnapshot,
    ProcessState,
    RestartPolicy,
    ServerProcess,
    Timeouts,
    die_with_parent,
)
from natsembed._store import KEEP_REMOVED, REMOVED_PREFIX, set_aside, stored_streams
from natsembed._supervisor import (
    NODE_TAG,
    WITNESS_TAG,
    EmbeddedConfig,
    EmbeddedNats,
    EmbeddedSnapshot,
    has_meta_state,
    is_witness,
)
from natsembed.errors import (
    ConfigInvalid,
    MonitorUnavailable,
    NatsBinaryNotFound,
    NatsEmbedError,
    NotReady,
    ReloadRejected,
    StartFailed,
    SystemRequestFailed,
    SystemRequestUnanswered,
)

if TYPE_CHECKING:
    from natsembed._system import SystemClient


def __getattr__(name: str) -> object:
    # SystemClient needs nats-py; it is imported only by those who use it.
    if name == "SystemClient":
        from natsembed._system import SystemClient

        return SystemClient
    raise AttributeError(f"module 'natsembed' has no attribute {name!r}")


__all__ = [
    "GENERATION_MARK",
    "KEEP_REMOVED",
    "NODE_TAG",
    "REMOVED_PREFIX",
    "WITNESS_TAG",
    "ClusterConfig",
    "ConfigInvalid",
    "Credentials",
    "EmbeddedConfig",
    "EmbeddedNats",
    "EmbeddedSnapshot",
    "JetStreamConfig",
    "Jsz",
    "Leaderships",
    "Led",
    "MetaCluster",
    "MetaElection",
    "PairObservation",
    "Prompt",
    "plan_prompt",
    "MonitorClient",
    "NatsBinaryNotFound",
    "NatsEmbedError",
    "NotReady",
    "ProcessSnapshot",
    "ProcessState",
    "ReloadRejected",
    "RestartPolicy",
    "Routez",
    "ServerConfig",
    "ServerProcess",
    "StartFailed",
    "StreamDetail",
    "SystemClient",
    "MonitorUnavailable",
    "SystemRequestFailed",
    "SystemRequestUnanswered",
    "TLSConfig",
    "Timeouts",
    "Varz",
    "WITNESS_MARK",
    "WITNESS_TAG",
    "advertise_host",
    "check_config",
    "has_meta_state",
    "is_witness",
    "write_private",
    "detect_address",
    "die_with_parent",
    "find_nats_server",
    "free_port",
    "generation_of",
    "label",
    "node_of",
    "server_name",
    "superseded",
    "hand_over_leaderships",
    "has_meta_state",
    "held",
    "hostport",
    "leaderships",
    "load_or_create",
    "render_config",
    "set_aside",
    "step_down",
    "stored_streams",
    "write_config",
]
