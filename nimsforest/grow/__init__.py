"""`nimsforest grow`: read the forest's load, decide, and add a node through a provisioner.

Modules, each with one job:
    collect       node list (registry or --nodes) and /varz, /jsz, /healthz of each, concurrently
    model         frozen snapshots, the decision, and the JSON report (schema nimsforest.grow/v1)
    decide        the pure rule: CPU or memory above the threshold -> 1 node, within the limits
    render        the text output
    state         limits and expansions remembered per forest, under a lock
    provisioners  local, command, and plugins (entry points group nimsforest.provisioners)
    run           one run put together (the CLI asks the operator in the middle)

docs/GROW.md describes the command, its output, its JSON schema and how to write a provisioner.
"""
