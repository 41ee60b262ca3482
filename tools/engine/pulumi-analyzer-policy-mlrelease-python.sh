#!/bin/sh
# Runs a Python CrossGuard policy pack in the virtual environment this launcher is installed in.
#
# The engine runs a pack whose PulumiPolicy.yaml names runtime "mlrelease-python" through this launcher (found as
# the analyzer plugin "policy-mlrelease-python") with the engine address and the pack directory. Packs with
# runtime "python" would go through the language host's RunPlugin instead, whose request the v3.68.0 host reads
# from fields the v3.260.0 engine no longer sets (see README.md here).
bin=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
exec "$bin/python" -u -m pulumi.policy "$1" "$2"
