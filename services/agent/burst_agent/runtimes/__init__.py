"""Container runtimes: the interface (:mod:`.base`), the process runtime with its sandbox,
zygote and virtual environments, the Docker runtime, images, and the one factory
(:mod:`.factory`) that knows them all.

Dependencies point one way: base ← images ← sandbox ← zygote ← process ← venvs ← factory,
and docker (base, images, sandbox's limits) ← factory.
"""
