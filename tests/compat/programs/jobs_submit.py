"""Submit a job to the deployed `compat-jobs` app and print its call id."""

import sys

import modal

slow_add = modal.Function.from_name("compat-jobs", "slow_add")
call = slow_add.spawn(int(sys.argv[1]), int(sys.argv[2]))
print(call.object_id)
