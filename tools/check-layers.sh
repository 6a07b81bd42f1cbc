#!/usr/bin/env bash
# The engine's layers, bottom up; a module may use only the ones before it
# (error and the leaf modules table and testing stand apart). Prints each
# module's uses and fails on one that reaches up. Also fails on the daemon's
# files importing each other in a cycle (a simple check: the dispatcher,
# handle.rs, may use devices.rs and list.rs; they may not use it).
set -euo pipefail
cd "$(dirname "$0")/../engine/src"
order=(io format btree space versions exceptions store volume stream)
bad=0
for i in "${!order[@]}"; do
    m=${order[$i]}
    allowed=" error ${order[*]:0:$i} "
    uses=$(grep -rhoE "crate::[a-z_]+" "$m" --include=*.rs --exclude=tests.rs | sed 's/crate:://' | sort -u | grep -vx "$m" || true)
    echo "$m -> $(echo $uses)"
    for u in $uses; do
        if [[ "$allowed" != *" $u "* ]]; then
            echo "  $m uses $u, a layer above it" >&2
            bad=1
        fi
    done
done
cd ../../dms-cli/src/daemon
for f in devices.rs list.rs fail.rs; do
    if grep -q "super::handle" "$f"; then
        echo "  daemon/$f uses handle.rs (the dispatcher above it)" >&2
        bad=1
    fi
done
exit $bad
