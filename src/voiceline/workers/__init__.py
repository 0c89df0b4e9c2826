"""Engine worker processes (``workers`` > 1, audiosocket mode): one ``voiceline serve``
supervises N engine processes that share the AudioSocket port (SO_REUSEPORT).

Modules, one job each: ``ports`` (the port every worker binds), ``policy`` (when a
worker that exited is started again), ``control`` (the JSON-line channel between the
supervisor and a worker), ``health`` (one /health and /ready out of the workers'
reports), ``supervisor`` (the parent: starts, watches and drains the workers, serves
HTTP), ``child`` (a worker process: ``python -m voiceline.workers.child``).
docs/deployment.md ("Worker processes") says what an operator sees.
"""
