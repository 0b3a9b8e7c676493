"""Stage 5: the runtime, where the stages are composed into a container.

- `spec`: the plain values a container is made of.
- `channel`: the small named messages between the controller and the child under construction.
- `steps`: the ordered recipe, one kernel change per step, each run in the child or the parent.
- `child`: the child's side: wait for a step's name, do it, answer, wait again.
- `containers`: container records on disk (names, status, exit codes) and their directories.
- `run`: `minictl run` — every step without pauses, stdio or a terminal passed through, the exit code.
"""
