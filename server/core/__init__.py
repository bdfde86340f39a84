"""The engine core process (`--engine-core process`, `--frontends N`): schedulers and engines in a child process.

arena.py (shared-memory blocks), protocol.py (the data channel's binary frames), channel.py (framing, status
codes, peer check), control.py (load / unload / statistics calls and the statistics view), engine.py (the core
process), client.py (the front end's side: start, load, submit, restart), proxy.py (the Scheduler stand-in).
"""
