#!/bin/sh
# Pulumi's Python language host, as installed into .venv/bin by scripts/setup.sh.
#
# The host binary (built from tools/engine/langhost, see README.md there) takes its virtual environment and its
# executor from flags; newer CLIs no longer pass runtime options as flags, so this launcher names them: the
# virtual environment this launcher lives in, and the pinned release's pulumi-language-python-exec beside it.
bin=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
venv=$(dirname -- "$bin")
exec "$venv/libexec/pulumi-language-python" -virtualenv="$venv" -use-executor="$bin/pulumi-language-python-exec" "$@"
