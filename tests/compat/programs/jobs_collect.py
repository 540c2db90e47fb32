"""Collect a job's result by its call id, in another process than the one that spawned it."""

import sys

import modal

call = modal.FunctionCall.from_id(sys.argv[1])
print("result", call.get(timeout=60))
