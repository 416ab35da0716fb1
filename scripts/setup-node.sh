#!/usr/bin/env bash
# Install NimsForest on this machine as systemd services and check that it joined its forest.
# Run `setup-node.sh --help` for the options; `--dry-run` prints every step without doing it.
set -euo pipefail

PROG=setup-node.sh
MODE=embedded
PREFIX=/opt/nimsforest
PACKAGE=nimsforest
PYTHON=python3
NODE_NAME=""
REGISTRY_URL="${REGISTRY_URL:-}"
CLUSTER_SECRET="${NATS_CLUSTER_SECRET:-}"
REGISTRY_TOKEN="${REGISTRY_TOKEN:-}"
CLUSTER_PEERS=""
ADVERTISE=""
RUN_USER=nimsforest
NATS_USER=nats
ENV_FILE=/etc/nimsforest/nimsforest.env
NATS_CONF=/etc/nats/nats.conf
UNIT_DIR=/etc/systemd/system
VERIFY_TIMEOUT=5m
MIN_SIZE=""
DRY_RUN=0
START=1

usage() {
  cat <<'EOF'
Usage: setup-node.sh [OPTIONS]

Install NimsForest into a virtualenv, write /etc/nimsforest/nimsforest.env (0600),
install and start its systemd units, then wait until the node is a cluster member.
Run it as root. Running it again upgrades the package and rewrites the files.

Modes:
  embedded (default)  nimsforest.service: the daemon runs its own nats-server and finds
                      its peers through the registry.
  sidecar             nats.service (config from `nimsforest nats-config`, routes to
                      --cluster-peers) and nimsforest-sidecar.service bound to it. A
                      sidecar cluster needs at least two machines (three for quorum
                      after a loss): a lone clustered JetStream server cannot serve.

Options:
  --registry-url URL     Registry of the forest [env REGISTRY_URL]; required in embedded mode.
  --node-name NAME       Unique node name [default: short host name].
  --cluster-secret S     Forest-wide secret, the same on every node, 16 characters or more
                         [env NATS_CLUSTER_SECRET, preferred: flags show up in ps]; required.
  --mode MODE            embedded or sidecar [embedded].
  --cluster-peers LIST   Sidecar mode: other machines' cluster addresses, host:port,...
  --advertise ADDR       Address other machines dial for this node [detected].
  --package SPEC         What pip installs: a name, a version spec, a wheel or a source path
                         [nimsforest].
  --prefix DIR           Virtualenv to install into [/opt/nimsforest].
  --python EXE           Python 3.11+ that creates the virtualenv [python3].
  --user NAME            System user of the daemon [nimsforest].
  --min-size N           Members the cluster must reach before the setup counts as done
                         [1 in embedded mode, 2 in sidecar mode].
  --verify-timeout D     How long to wait for membership [5m].
  --no-start             Install and enable the units, start nothing, verify nothing.
  --dry-run              Print what would be done; change nothing (no root needed).
  -h, --help             Show this help.

Environment: REGISTRY_TOKEN, when set, is written to the environment file too.
Exit codes: 0 done, 1 a step failed, 2 bad options.

Example:
  NATS_CLUSTER_SECRET=... ./setup-node.sh --registry-url http://10.0.0.5:8500 --node-name n1
EOF
}

usage_error() {
  echo "$PROG: $*" >&2
  echo "Try '$PROG --help'." >&2
  exit 2
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

# --- options -----------------------------------------------------------------------------
while [[ $# -gt 0 ]]; do
  opt="$1"
  value=""
  case "$opt" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift; continue ;;
    --no-start) START=0; shift; continue ;;
    --*=*) value="${opt#*=}"; opt="${opt%%=*}"; shift ;;
    --registry-url | --node-name | --cluster-secret | --mode | --cluster-peers | --advertise | --package | \
      --prefix | --python | --user | --min-size | --verify-timeout)
      [[ $# -ge 2 ]] || usage_error "Option $opt needs a value."
      value="$2"; shift 2 ;;
    --*) usage_error "Unknown option $opt." ;;
    *) usage_error "Unexpected argument '$opt'." ;;
  esac
  case "$opt" in
    --registry-url) REGISTRY_URL="$value" ;;
    --node-name) NODE_NAME="$value" ;;
    --cluster-secret) CLUSTER_SECRET="$value" ;;
    --mode) MODE="$value" ;;
    --cluster-peers) CLUSTER_PEERS="$value" ;;
    --advertise) ADVERTISE="$value" ;;
    --package) PACKAGE="$value" ;;
    --prefix) PREFIX="${value%/}" ;;
    --python) PYTHON="$value" ;;
    --user) RUN_USER="$value" ;;
    --min-size) MIN_SIZE="$value" ;;
    --verify-timeout) VERIFY_TIMEOUT="$value" ;;
    *) usage_error "Unknown option $opt." ;;
  esac
done

if [[ -z "$NODE_NAME" ]]; then
  NODE_NAME="$(hostname -s 2>/dev/null || hostname)"
fi

# Values end up in an environment file and unit files: keep them plain.
plain() { # name value
  [[ "$2" != *$'\n'* && "$2" != *"'"* && "$2" != *"\\"* ]] ||
    usage_error "$1 must not contain newlines, quotes or backslashes."
}

case "$MODE" in
  embedded | sidecar) ;;
  *) usage_error "--mode must be embedded or sidecar, not '$MODE'." ;;
esac
[[ -n "$CLUSTER_SECRET" ]] || usage_error "A cluster secret is required: set NATS_CLUSTER_SECRET or --cluster-secret."
[[ ${#CLUSTER_SECRET} -ge 16 ]] || usage_error "The cluster secret must be at least 16 characters long."
if [[ "$MODE" == embedded ]]; then
  [[ -n "$REGISTRY_URL" ]] || usage_error "Embedded mode needs --registry-url (or REGISTRY_URL)."
  [[ -z "$CLUSTER_PEERS" ]] || usage_error "--cluster-peers is for sidecar mode; embedded nodes find peers in the registry."
else
  [[ -n "$CLUSTER_PEERS" ]] || usage_error "Sidecar mode needs --cluster-peers host:port,... (the other machines)."
fi
if [[ -n "$REGISTRY_URL" && ! "$REGISTRY_URL" =~ ^(https?|file)://[^[:space:]]+$ ]]; then
  usage_error "--registry-url must be an http://, https:// or file:// URL."
fi
[[ "$NODE_NAME" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ ]] ||
  usage_error "--node-name '$NODE_NAME' must be letters, digits, '.', '_' or '-' (at most 63)."
[[ "$PREFIX" == /* && "$PREFIX" != *[[:space:]]* ]] || usage_error "--prefix must be an absolute path without spaces."
[[ "$RUN_USER" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || usage_error "--user '$RUN_USER' is not a valid user name."
[[ -z "$MIN_SIZE" || "$MIN_SIZE" =~ ^[1-9][0-9]*$ ]] || usage_error "--min-size must be a positive whole number."
for pair in "cluster secret:$CLUSTER_SECRET" "--registry-url:$REGISTRY_URL" "REGISTRY_TOKEN:$REGISTRY_TOKEN" \
  "--advertise:$ADVERTISE" "--cluster-peers:$CLUSTER_PEERS"; do
  plain "${pair%%:*}" "${pair#*:}"
done
if [[ -z "$MIN_SIZE" ]]; then
  if [[ "$MODE" == sidecar ]]; then MIN_SIZE=2; else MIN_SIZE=1; fi
fi
if [[ $DRY_RUN -eq 0 && $EUID -ne 0 ]]; then
  die "Run it as root (or try --dry-run)."
fi

# --- doing, or saying what would be done ---------------------------------------------------
mask() { # hide secrets in what is printed
  local text="$1"
  text="${text//"$CLUSTER_SECRET"/REDACTED}"
  if [[ -n "$REGISTRY_TOKEN" ]]; then text="${text//"$REGISTRY_TOKEN"/REDACTED}"; fi
  printf '%s' "$text"
}

run() {
  if [[ $DRY_RUN -eq 1 ]]; then
    local line arg masked=()
    for arg in "$@"; do masked+=("$(mask "$arg")"); done
    printf -v line '%q ' "${masked[@]}"
    echo "+ ${line% }"
  else
    "$@"
  fi
}

step() { echo "==> $*"; }

write_file() { # path mode owner:group content
  local path="$1" mode="$2" owner="$3" content="$4"
  if [[ $DRY_RUN -eq 1 ]]; then
    echo "+ write $path (mode $mode, owner $owner):"
    mask "$content" | sed 's/^/|   /'
    return
  fi
  local tmp
  tmp="$(mktemp "$(dirname "$path")/.setup-node.XXXXXX")"
  printf '%s' "$content" >"$tmp"
  chmod "$mode" "$tmp"
  chown "$owner" "$tmp"
  mv -f "$tmp" "$path"
}

ensure_user() { # name home
  if id -u "$1" >/dev/null 2>&1; then
    echo "user $1 exists"
  else
    run useradd --system --home-dir "$2" --no-create-home --shell /usr/sbin/nologin "$1"
  fi
}

NF="$PREFIX/bin/nimsforest"
if [[ "$MODE" == sidecar ]]; then
  UNITS=(nats.service nimsforest-sidecar.service)
else
  UNITS=(nimsforest.service)
fi

step "Checking $PYTHON"
run "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
  die "NimsForest needs Python 3.11 or newer: '$PYTHON' is missing or older (install python3 and python3-venv, or pass --python)."

step "Users"
ensure_user "$RUN_USER" /var/lib/nimsforest
if [[ "$MODE" == sidecar ]]; then
  ensure_user "$NATS_USER" /var/lib/nats
fi

step "Installing $PACKAGE into $PREFIX"
if [[ ! -x "$PREFIX/bin/python" || $DRY_RUN -eq 1 ]]; then
  run "$PYTHON" -m venv "$PREFIX"
fi
run "$PREFIX/bin/python" -m pip install --quiet --upgrade pip
run "$PREFIX/bin/python" -m pip install --quiet --upgrade "$PACKAGE"

step "Writing $ENV_FILE"
ENV_TEXT="# Written by setup-node.sh. Every variable is described in NimsForest's env.template.
NATS_NODE_NAME='$NODE_NAME'
NATS_CLUSTER_SECRET='$CLUSTER_SECRET'
"
if [[ -n "$REGISTRY_URL" ]]; then ENV_TEXT+="REGISTRY_URL='$REGISTRY_URL'
"; fi
if [[ -n "$REGISTRY_TOKEN" ]]; then ENV_TEXT+="REGISTRY_TOKEN='$REGISTRY_TOKEN'
"; fi
if [[ -n "$ADVERTISE" ]]; then ENV_TEXT+="NATS_ADVERTISE_ADDRESS='$ADVERTISE'
"; fi
run install -d -m 0755 "$(dirname "$ENV_FILE")"
write_file "$ENV_FILE" 0600 root:root "$ENV_TEXT"

if [[ "$MODE" == sidecar ]]; then
  step "Rendering $NATS_CONF (checked by nats-server -t)"
  run install -d -m 0755 "$(dirname "$NATS_CONF")"
  NATS_CONFIG_ARGS=(--node-name "$NODE_NAME" --cluster-peers "$CLUSTER_PEERS" --store-dir /var/lib/nats/jetstream
    --output "$NATS_CONF")
  if [[ -n "$ADVERTISE" ]]; then NATS_CONFIG_ARGS+=(--advertise "$ADVERTISE"); fi
  # The secret travels in the environment, not on the command line.
  run env "NATS_CLUSTER_SECRET=$CLUSTER_SECRET" "$NF" nats-config "${NATS_CONFIG_ARGS[@]}"
  run chown "root:$NATS_USER" "$NATS_CONF"
  run chmod 0640 "$NATS_CONF"
fi

step "Installing systemd units: ${UNITS[*]}"
for unit in "${UNITS[@]}"; do
  run "$NF" systemd-unit "$unit" --prefix "$PREFIX" --user "$RUN_USER" --env-file "$ENV_FILE" \
    --nats-config "$NATS_CONF" --output "$UNIT_DIR/$unit"
done
run systemctl daemon-reload
run systemctl enable "${UNITS[@]}"

if [[ $START -eq 0 ]]; then
  step "Not starting (--no-start): systemctl start ${UNITS[*]} when ready"
  exit 0
fi

step "Starting ${UNITS[*]}"
for unit in "${UNITS[@]}"; do
  run systemctl restart "$unit"
done

step "Waiting until $NODE_NAME is a member of a cluster of at least $MIN_SIZE"
if ! run "$PREFIX/bin/python" -m nimsforest.cli.verify --mode "$MODE" --min-size "$MIN_SIZE" \
  --timeout "$VERIFY_TIMEOUT"; then
  die "The node did not join its cluster; see journalctl -u ${UNITS[-1]}."
fi
step "Done"
