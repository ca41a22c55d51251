#!/usr/bin/env bash
# One GPU session in one command that ends inside nine minutes; scripts/gpu_session.py says what
# runs, in which order, with which time limits, and where the results land.
#
#   bash scripts/gpu_session.sh                    # the default plan (on the device tool: results packed into $OUT)
#   bash scripts/gpu_session.sh bench:400 profile  # chosen stages, STAGE[:SECONDS], in that order
#   bash scripts/gpu_session.sh --dry-run          # on a CPU: every stage at its smallest settings
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_session.py" "$@"
